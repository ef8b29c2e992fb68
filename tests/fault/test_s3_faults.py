"""S3 faults (docs/RELIABILITY.md S3-01, S3-02, S3-04, S3-05) between a node process and
moto's S3 server, injected by the fault proxy the destination's endpoint_url points at.

- S3-01 transient 5xx (and an expired session token) on a seeded schedule: retried
  with backoff until everything lands;
- S3-02 ambiguous PUTs (applied upstream, then the connection is reset — twice in a
  row, since aiohttp resends an idempotent request once): retries overwrite the same
  keys, nothing is duplicated;
- S3-04 a long outage fills the endpoint's `unshipped_bytes_max`: ingest answers 503
  `backlog` with Retry-After, nothing refused is stored, and the backlog drains after;
- S3-05 permanent AccessDenied: the endpoint shows `degraded`, the data stays on the
  node, and once the fault is gone it is delivered and the endpoint is `active` again.
"""

from __future__ import annotations

import asyncio
import collections
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from tests.fault.harness import Harness, failed_statuses
from tests.support.moto_server import MotoServer
from tests.support.stack import wait_for

KIB = 1024


def _any_request(method: str, target: str) -> bool:
    return True


def _put_of(h: Harness, part: str, seq: int) -> Callable[[str, str], bool]:
    """A PUT of segment `seq`'s object of kind `part` (/segments/, /parquet/, /commits/)."""
    put = h.bucket_put(part)
    names = (f"seg-{seq:08d}.", f"-{seq:08d}.parquet")

    def when(method: str, target: str) -> bool:
        return put(method, target) and any(n in target for n in names)

    return when


async def test_s301_seeded_transient_5xx_on_s3_writes_are_retried_until_everything_lands(
    tmp_path: Path, moto: MotoServer, seed: int
) -> None:
    async with Harness(tmp_path, moto, "S3-01", seed=seed, fast_retries=True) as h:
        assert h.s3_proxy is not None
        await h.start_node()
        rates = {
            "error_503": 0.12,
            "error_500": 0.08,
            "error:503:ServiceUnavailable": 0.05,
            "error:400:ExpiredToken": 0.05,  # transient: credentials dropped, role assumed again
        }
        h.s3_proxy.random_schedule(seed, rates, when=h.is_bucket_put)
        async with h.traffic(writers=2) as t:
            await wait_for(
                lambda: h.injected(h.s3_proxy, "error") >= 8,
                timeout_s=120,
                what="eight injected S3 errors",
            )
            await t.more_acked(20)
        drain_s = await h.drain()
        result = await h.reconcile()
        by_action = collections.Counter(e.action for e in h.s3_proxy.log if e.action != "pass")
        assumed = await asyncio.to_thread(h.node_assume_roles)
        h.report(
            result,
            s3_requests=len(h.s3_proxy.log),
            faults_injected=sum(by_action.values()),
            faults_by_kind=dict(by_action),
            role_assumed=assumed,
            **h.retries_seen(),
            drain_s=round(drain_s, 2),
        )
        assert sum(by_action.values()) >= 8, by_action
        assert h.retries_seen()["store_retries"] >= 1, h.logs()
        # Each expired token made the node assume the role again.
        assert assumed >= 1 + by_action["error:400:ExpiredToken"], assumed
        h.assert_clean(result, duplicates=False)


async def test_s302_ambiguous_puts_reset_after_s3_applied_them_land_once_per_key(
    tmp_path: Path, moto: MotoServer, seed: int
) -> None:
    rounds = 3
    async with Harness(tmp_path, moto, "S3-02", seed=seed, fast_retries=True) as h:
        assert h.s3_proxy is not None
        await h.start_node()
        # Segments 1..rounds: their segment object, raw Parquet and manifest are each
        # applied by S3 and answered by a reset, twice in a row.
        for seq in range(1, rounds + 1):
            for part in ("/segments/", "/parquet/", "/commits/"):
                h.s3_proxy.fail_next(2, "reset_after", when=_put_of(h, part, seq))
        async with h.traffic(writers=2) as t:
            await wait_for(
                lambda: h.injected(h.s3_proxy, "reset_after") == 3 * rounds * 2,
                timeout_s=120,
                what="every planned reset",
            )
            await t.more_acked(20)
        drain_s = await h.drain()
        result = await h.reconcile()
        resets = [e for e in h.s3_proxy.log if e.action == "reset_after"]
        puts = await asyncio.to_thread(h.s3_puts)
        reset_keys = {
            urllib.parse.unquote(e.path.split("?")[0])[len(h.lake.bucket) + 2 :] for e in resets
        }
        h.report(
            result,
            resets=len(resets),
            reset_keys=len(reset_keys),
            min_puts_of_a_reset_key=min(puts[k] for k in reset_keys),
            **h.retries_seen(),
            drain_s=round(drain_s, 2),
        )
        assert len(resets) == 3 * rounds * 2
        assert len(reset_keys) == 3 * rounds, reset_keys
        # Applied twice by S3 (the reset attempt and aiohttp's resend), then the retry.
        assert all(puts[k] >= 3 for k in reset_keys), {k: puts[k] for k in reset_keys}
        assert h.retries_seen()["store_retries"] >= 3 * rounds, h.logs()
        h.assert_clean(result, duplicates=False)


async def test_s304_a_long_s3_outage_fills_the_backlog_budget_then_503s_then_drains(
    tmp_path: Path, moto: MotoServer, seed: int
) -> None:
    budget = 256 * KIB
    loop = asyncio.get_running_loop()
    async with Harness(
        tmp_path, moto, "S3-04", seed=seed, fast_retries=True, unshipped_bytes_max=budget
    ) as h:
        assert h.s3_proxy is not None
        await h.start_node()
        async with h.traffic(writers=2) as t:
            await t.more_acked(10)
            h.s3_proxy.set_rule(_any_request, "error_503")  # S3 (and STS) down
            outage_at, acked_at_outage = loop.time(), t.acked
            await t.refusals("backlog", 10)
            held_bytes = await asyncio.to_thread(h.wal_bytes)
            sealed_held = len(await asyncio.to_thread(h.sealed_segments))
            acked_in_outage = t.acked - acked_at_outage
            h.s3_proxy.clear()
            outage_s = loop.time() - outage_at
            ended = loop.time()
            recovery_s = await t.ok_after(ended)
            await t.more_acked(20)
        drain_s = await h.drain()
        result = await h.reconcile()
        backlog = [o for o in t.outcomes if o.status == 503 and o.reason == "backlog"]
        h.report(
            result,
            budget_bytes=budget,
            outage_s=round(outage_s, 2),
            acked_in_outage=acked_in_outage,
            held_bytes_at_refusal=held_bytes,
            sealed_segments_held=sealed_held,
            backlog_503s=len(backlog),
            backlog_503s_without_retry_after=sum(1 for o in backlog if not o.retry_after),
            first_200_after_outage_s=round(recovery_s, 3),
            s3_503s_injected=h.injected(h.s3_proxy, "error_503"),
            refusals=dict(failed_statuses(t.outcomes)),
            **h.retries_seen(),
            drain_s=round(drain_s, 2),
        )
        assert held_bytes > budget, held_bytes
        assert all(o.retry_after == "1" for o in backlog), "every backlog 503 has Retry-After"
        assert set(failed_statuses(t.outcomes)) <= {"503 overloaded"}, t.statuses()
        assert result.refused_but_present == 0
        h.assert_clean(result, duplicates=False)


async def test_s305_permanent_access_denied_degrades_the_endpoint_keeps_data_and_heals(
    tmp_path: Path, moto: MotoServer, seed: int
) -> None:
    async with Harness(tmp_path, moto, "S3-05", seed=seed, fast_retries=True) as h:
        assert h.s3_proxy is not None
        await h.start_node()
        await h.wait_status("active")
        async with h.traffic(writers=2) as t:
            # One delivery first: the node holds role credentials, so the S3 writes
            # themselves meet the refusal (AssumeRole is refused too from now on).
            await wait_for(
                lambda: h.api.commits(h.lake.endpoint_id), what="a first delivered segment"
            )
            h.s3_proxy.set_rule(_any_request, "error:403:AccessDenied")
            degraded_after_s = await h.wait_status("degraded")
            commits_at_degraded = len(await h.api.commits(h.lake.endpoint_id))

            async def kept() -> bool:
                return len(await asyncio.to_thread(h.sealed_segments)) >= 3

            await wait_for(kept, what="three sealed segments kept on the node")
            sealed_kept = len(await asyncio.to_thread(h.sealed_segments))
            commits_during = len(await h.api.commits(h.lake.endpoint_id)) - commits_at_degraded
            denied_attempts = h.node_log_count("AccessDenied")
            h.s3_proxy.clear()
            active_after_s = await h.wait_status("active")
            await t.more_acked(10)
        drain_s = await h.drain()
        result = await h.reconcile()
        h.report(
            result,
            degraded_after_s=round(degraded_after_s, 2),
            sealed_segments_kept=sealed_kept,
            commits_while_denied=commits_during,
            denied_attempts_logged=denied_attempts,
            access_denied_injected=h.injected(h.s3_proxy, "error:403"),
            active_again_after_s=round(active_after_s, 2),
            **h.retries_seen(),
            drain_s=round(drain_s, 2),
        )
        assert denied_attempts >= 1, h.logs()
        assert commits_during == 0, "nothing is committed while S3 denies access"
        assert sealed_kept >= 3
        h.assert_clean(result, duplicates=False)
