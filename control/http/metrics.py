"""The control plane's Prometheus `GET /metrics` (deploy/monitoring uses it).

Not part of the REST API: it is registered next to the route table (not in it), so the
OpenAPI document does not list it. Like the node's `/metrics` it needs no credentials;
keep the port on a private network.

- `edgemq_control_http_requests_total{route,status}`: counted as responses are prepared.
- `edgemq_control_endpoints{region,status}`: endpoints by computed status (the same
  `status_of` the API answers with), every status of a seen region present (0 included).
- `edgemq_control_nodes{region,state}`: registered nodes, `healthy` / `draining` /
  `stale` (no heartbeat within `node_heartbeat_timeout_s`).
- `edgemq_control_config_epoch`: the global config epoch (nodes export theirs).

The store gauges are computed at scrape time from bounded queries (at most
`ENDPOINTS_COUNTED_MAX` endpoints, one grouped query over nodes) and cached for
`CACHE_S`, so several scrapers cost one computation per interval. A failing store
leaves the last values and counts `edgemq_control_scrape_errors_total`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest

from ..services.common import Context, now_ms
from ..services.endpoints import STATUSES, regions_health, status_of

log = logging.getLogger(__name__)
ENDPOINTS_COUNTED_MAX = 100_000
CACHE_S = 5.0
STORE_TIMEOUT_S = 10.0
NODE_STATES = ("healthy", "draining", "stale")


class ControlMetrics:
    def __init__(self, cache_s: float = CACHE_S) -> None:
        r = self.registry = CollectorRegistry()
        self.cache_s = cache_s
        self._refreshed_at: float | None = None
        self._lock = asyncio.Lock()
        self.requests = Counter(
            "edgemq_control_http_requests",
            "Control-plane HTTP responses by route and status",
            ["route", "status"],
            registry=r,
        )
        self.endpoints = Gauge(
            "edgemq_control_endpoints",
            "Endpoints by region and computed status (deploying, active, degraded)",
            ["region", "status"],
            registry=r,
        )
        self.endpoints_truncated = Gauge(
            "edgemq_control_endpoints_truncated",
            f"1 when more than {ENDPOINTS_COUNTED_MAX} endpoints exist (the rest are not counted)",
            registry=r,
        )
        self.nodes = Gauge(
            "edgemq_control_nodes",
            "Registered nodes by region and state (healthy, draining, stale)",
            ["region", "state"],
            registry=r,
        )
        self.config_epoch = Gauge(
            "edgemq_control_config_epoch", "The global config epoch", registry=r
        )
        self.scrape_errors = Counter(
            "edgemq_control_scrape_errors",
            "Scrapes whose store queries failed (the previous values were served)",
            registry=r,
        )

    def count(self, route: str, status: int) -> None:
        self.requests.labels(route, str(status)).inc()

    async def refresh(self, ctx: Context) -> None:
        """Recompute the store gauges unless they are younger than CACHE_S."""
        async with self._lock:
            refreshed = self._refreshed_at
            if refreshed is not None and time.monotonic() - refreshed < self.cache_s:
                return
            try:
                await asyncio.wait_for(self._compute(ctx), STORE_TIMEOUT_S)
            except Exception:  # the scrape still answers, with the previous values
                log.exception("control metrics: store query failed")
                self.scrape_errors.inc()
                return
            self._refreshed_at = time.monotonic()

    async def _compute(self, ctx: Context) -> None:
        rows = await ctx.db.fetchall(
            "SELECT e.id, e.region, e.config_epoch, d.status AS destination_status "
            "FROM endpoints e LEFT JOIN destinations d ON d.id = e.destination_id "
            "WHERE e.deleted_at IS NULL ORDER BY e.id LIMIT ?",
            (ENDPOINTS_COUNTED_MAX + 1,),
        )
        truncated = len(rows) > ENDPOINTS_COUNTED_MAX
        rows = rows[:ENDPOINTS_COUNTED_MAX]
        health = await regions_health(ctx, ctx.db, {str(r["region"]) for r in rows})
        endpoints = Tally((str(r["region"]), status_of(r, health[str(r["region"])])) for r in rows)
        horizon = now_ms() - int(ctx.settings.node_heartbeat_timeout_s * 1000)
        node_rows = await ctx.db.fetchall(
            "SELECT region, draining, "
            "CASE WHEN last_heartbeat_at >= ? THEN 1 ELSE 0 END AS fresh, COUNT(*) AS n "
            "FROM nodes GROUP BY 1, 2, 3",
            (horizon,),
        )
        nodes: Tally[tuple[str, str]] = Tally()
        for r in node_rows:
            state = "stale" if not r["fresh"] else "draining" if r["draining"] else "healthy"
            nodes[(str(r["region"]), state)] += int(r["n"])
        epoch = await ctx.config_epoch()
        # Everything is known: swap the values in without an await in between.
        self.endpoints.clear()
        for region in sorted({region for region, _ in endpoints}):
            for status in STATUSES:
                self.endpoints.labels(region, status).set(endpoints[(region, status)])
        self.endpoints_truncated.set(1 if truncated else 0)
        self.nodes.clear()
        for region in sorted({region for region, _ in nodes}):
            for state in NODE_STATES:
                self.nodes.labels(region, state).set(nodes[(region, state)])
        self.config_epoch.set(epoch)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS: web.AppKey[ControlMetrics] = web.AppKey("control_metrics", ControlMetrics)


def install(app: web.Application, ctx: Context) -> ControlMetrics:
    """Count every response of `app` and serve `GET /metrics` (outside the route table)."""
    metrics = app[METRICS] = ControlMetrics()

    async def count(request: web.Request, response: web.StreamResponse) -> None:
        resource = request.match_info.route.resource
        metrics.count(resource.canonical if resource is not None else "unmatched", response.status)

    async def serve(request: web.Request) -> web.Response:
        await metrics.refresh(ctx)
        return web.Response(body=metrics.render(), content_type="text/plain", charset="utf-8")

    app.on_response_prepare.append(count)
    app.router.add_get("/metrics", serve)
    return metrics
