"""The control plane's `GET /metrics` (control/http/metrics.py), on SQLite and on a real
PostgreSQL server: endpoint counts agree with the statuses the API answers, node states
follow heartbeats, responses are counted, a failing store still answers."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from control.http.metrics import METRICS, ControlMetrics
from control.services.common import now_ms
from tests.integration.control.conftest import SETTINGS, Api


async def _scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    resp = await api.client.get("/metrics")
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _series(samples: dict[Any, float], name: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(v for _, v in labels): value for (n, labels), value in samples.items() if n == name
    }


def _metrics(api: Api) -> ControlMetrics:
    app = api.client.app
    assert app is not None
    metrics: ControlMetrics = app[METRICS]
    return metrics


async def _node(api: Api, region: str, *, age_s: float, draining: bool = False) -> None:
    now = now_ms()
    await api.ctx.db.execute(
        "INSERT INTO nodes (id, region, http_url, mqtt_url, ipv4, ipv6, version, "
        "registered_at, last_heartbeat_at, applied_epoch, draining) "
        "VALUES (?, ?, NULL, NULL, ?, '[]', 'test', ?, ?, ?, ?)",
        (
            str(uuid.uuid4()),
            region,
            json.dumps(["203.0.113.9"]),
            now,
            now - int(age_s * 1000),
            await api.ctx.config_epoch(),
            1 if draining else 0,
        ),
    )


async def test_store_gauges_agree_with_the_api(api: Api) -> None:
    _metrics(api).cache_s = 0.0
    empty = await _scrape(api)
    assert _series(empty, "edgemq_control_endpoints") == {}
    assert _series(empty, "edgemq_control_config_epoch") == {(): await api.ctx.config_epoch()}

    for region in ("iad", "iad", "fra", "sin"):
        status, body = await api.call("POST", "/v1/endpoints", json={"region": region})
        assert status == 201, body
    stale = SETTINGS.node_heartbeat_timeout_s + 5
    await _node(api, "iad", age_s=0)  # healthy, applied the epoch: iad endpoints active
    await _node(api, "iad", age_s=0, draining=True)
    await _node(api, "fra", age_s=stale)  # fra has nodes, none healthy: degraded
    # sin has no node at all: deploying

    samples = await _scrape(api)
    status, listed = await api.call("GET", "/v1/endpoints", params={"limit": 200})
    assert status == 200
    from_api = Counter((e["region"], e["status"]) for e in listed["items"])
    assert from_api == {("iad", "active"): 2, ("fra", "degraded"): 1, ("sin", "deploying"): 1}
    gauges = _series(samples, "edgemq_control_endpoints")
    assert {k: v for k, v in gauges.items() if v} == from_api
    # Every status of a seen region is exported, zeros included (alerts compare to 0).
    assert len(gauges) == 3 * 3
    assert _series(samples, "edgemq_control_nodes") == {
        ("iad", "healthy"): 1,
        ("iad", "draining"): 1,
        ("iad", "stale"): 0,
        ("fra", "healthy"): 0,
        ("fra", "draining"): 0,
        ("fra", "stale"): 1,
    }
    assert _series(samples, "edgemq_control_endpoints_truncated") == {(): 0}
    requests = _series(samples, "edgemq_control_http_requests_total")
    assert requests[("/v1/endpoints", "201")] == 4
    assert requests[("/metrics", "200")] == 1  # the first scrape, counted once answered


async def test_values_are_cached_between_scrapes(api: Api) -> None:
    _metrics(api).cache_s = 3600.0
    await api.call("POST", "/v1/endpoints", json={"region": "iad"})
    first = _series(await _scrape(api), "edgemq_control_endpoints")
    assert first[("iad", "deploying")] == 1
    await api.call("POST", "/v1/endpoints", json={"region": "iad"})
    assert _series(await _scrape(api), "edgemq_control_endpoints") == first
    _metrics(api).cache_s = 0.0
    assert _series(await _scrape(api), "edgemq_control_endpoints")[("iad", "deploying")] == 2


async def test_a_failing_store_still_answers_with_the_last_values(api: Api) -> None:
    _metrics(api).cache_s = 0.0
    await api.call("POST", "/v1/endpoints", json={"region": "iad"})
    before = _series(await _scrape(api), "edgemq_control_endpoints")

    async def broken(sql: str, params: Any = ()) -> Any:
        raise OSError("store unreachable")

    real = api.ctx.db.fetchall
    api.ctx.db.fetchall = broken  # type: ignore[method-assign]
    try:
        samples = await _scrape(api)
    finally:
        api.ctx.db.fetchall = real  # type: ignore[method-assign]
    assert _series(samples, "edgemq_control_scrape_errors_total") == {(): 1}
    assert _series(samples, "edgemq_control_endpoints") == before


async def test_unknown_paths_are_counted_as_unmatched(api: Api) -> None:
    resp = await api.client.get("/no/such/route")
    assert resp.status == 404
    requests = _series(await _scrape(api), "edgemq_control_http_requests_total")
    assert requests[("unmatched", "404")] == 1
