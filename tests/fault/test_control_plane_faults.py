"""Control-plane faults (docs/RELIABILITY.md CP-01, CP-03): the control plane killed,
paused, answering 5xx, and receiving the same commit report twice, while a node ingests.

The node serves ingest from its last applied snapshot and never calls the control plane
on the data path; commit reports wait in its durable outbox and the local segment stays
until the control plane acknowledges (ADR 0007, decision 3); reports are idempotent on
(endpoint, node, epoch, seq), so a replay stores no second row.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from tests.fault.harness import Harness
from tests.support.moto_server import MotoServer
from tests.support.stack import wait_for


async def _queued(h: Harness, n: int) -> set[str]:
    """Wait until at least `n` commit reports wait in the outbox; their names."""

    async def enough() -> set[str] | None:
        reports = await asyncio.to_thread(h.queued_reports)
        return reports if len(reports) >= n else None

    found: set[str] = await wait_for(enough, timeout_s=60, what=f"{n} queued commit reports")
    return found


async def _acknowledged(h: Harness, reports: set[str]) -> None:
    """Wait until none of `reports` is queued any more (acknowledged, segment deleted)."""

    async def gone() -> bool:
        return not (reports & await asyncio.to_thread(h.queued_reports))

    await wait_for(gone, timeout_s=60, what="the queued reports to be acknowledged")


async def _kept_until_acknowledged(h: Harness) -> tuple[int, list[str]]:
    reports, missing = await asyncio.to_thread(h.reports_without_segment)
    return len(reports), missing


async def test_cp01_control_plane_killed_and_paused_mid_ingest_keeps_ingest_and_data_without_dup_rows(
    tmp_path: Path, moto: MotoServer, seed: int
) -> None:
    loop = asyncio.get_running_loop()
    async with Harness(tmp_path, moto, "CP-01", seed=seed, fast_retries=True) as h:
        assert h.control is not None
        assert h.session is not None
        await h.start_node()
        async with h.traffic(writers=2) as t:
            await t.more_acked(20)

            # 1. SIGKILL, then a restart on the same port.
            failures_before = h.node_log_count("commit report failed")
            assert await h.control.kill() == -9
            killed_at, acked_at_kill = loop.time(), t.acked
            await t.more_acked(40)  # ingest goes on from the last snapshot
            queued = await _queued(h, 4)
            queued_while_killed, missing_while_killed = await _kept_until_acknowledged(h)
            await wait_for(
                lambda: h.node_log_count("commit report failed") > failures_before,
                what="a failed commit report while the control plane is dead",
            )
            # The node itself restarts while the control plane is dead: it serves from
            # its persisted snapshot and keeps the reports it could not deliver.
            assert h.node is not None
            assert await h.node.kill() == -9
            restarted = loop.time()
            h.node.start()
            node_recovery_s = await t.ok_after(restarted)
            await t.more_acked(20)
            assert queued <= await asyncio.to_thread(h.queued_reports)
            acked_while_killed = t.acked - acked_at_kill
            h.control.start()
            await h.control.wait_ready(h.session)
            killed_for_s = loop.time() - killed_at
            await _acknowledged(h, queued)
            caught_up_after_kill_s = loop.time() - killed_at - killed_for_s

            # 2. SIGSTOP: connections are accepted, nothing is answered.
            failures_before = h.node_log_count("commit report failed")
            h.control.pause()
            paused_at, acked_at_pause = loop.time(), t.acked
            await t.more_acked(40)
            queued = await _queued(h, 4)
            queued_while_paused, missing_while_paused = await _kept_until_acknowledged(h)
            await wait_for(
                lambda: h.node_log_count("commit report failed") > failures_before,
                what="a commit report timing out against the paused control plane",
            )
            acked_while_paused = t.acked - acked_at_pause
            h.control.resume()
            paused_for_s = loop.time() - paused_at
            await _acknowledged(h, queued)
            await t.more_acked(10)
        drain_s = await h.drain()
        result = await h.reconcile()
        db_dups = await asyncio.to_thread(h.db_commit_dups)
        h.report(
            result,
            killed_for_s=round(killed_for_s, 2),
            acked_while_killed=acked_while_killed,
            queued_while_killed=queued_while_killed,
            node_restart_to_200_while_killed_s=round(node_recovery_s, 3),
            caught_up_after_restart_s=round(caught_up_after_kill_s, 2),
            paused_for_s=round(paused_for_s, 2),
            acked_while_paused=acked_while_paused,
            queued_while_paused=queued_while_paused,
            report_retries=h.node_log_count("commit report failed"),
            commit_report_calls=h.injected(h.cp_proxy, "pass", path="/commits"),
            control_starts=h.control.starts,
            db_commit_dup_rows=db_dups,
            drain_s=round(drain_s, 2),
        )
        assert acked_while_killed >= 40
        assert acked_while_paused >= 40
        # No segment was deleted before the control plane acknowledged its report.
        assert missing_while_killed == []
        assert missing_while_paused == []
        assert db_dups == 0
        h.assert_clean(result, duplicates=False)


async def test_cp03_control_plane_5xx_and_replayed_reports_store_each_commit_once(
    tmp_path: Path, moto: MotoServer, seed: int
) -> None:
    async with Harness(tmp_path, moto, "CP-03", seed=seed, fast_retries=True) as h:
        assert h.cp_proxy is not None
        assert h.session is not None
        await h.start_node()
        async with h.traffic(writers=2) as t:
            await t.more_acked(20)

            # 1. Every control-plane call answers 500 or 503 for a while.
            h.cp_proxy.random_schedule(seed, {"error_503": 0.5, "error_500": 0.5})
            acked_at_errors = t.acked
            await t.more_acked(40)
            await wait_for(
                lambda: h.injected(h.cp_proxy, "error_", path="/commits") >= 3,
                what="three commit reports answered with 5xx",
            )
            queued = await _queued(h, 4)
            queued_during_5xx, missing = await _kept_until_acknowledged(h)
            kept = next(iter(sorted(queued)))
            replay = await asyncio.to_thread((h.data_dir / "outbox" / kept).read_bytes)
            acked_during_5xx = t.acked - acked_at_errors
            h.cp_proxy.clear()
            await _acknowledged(h, queued)

            # 2. Reports applied by the control plane whose answer is lost (the
            #    connection is reset after forwarding): the node sends them again.
            resets = 3
            for _ in range(resets):
                h.cp_proxy.fail_next(1, "reset_after", when=h.is_commit_report)
            await wait_for(
                lambda: h.injected(h.cp_proxy, "reset_after", path="/commits") == resets,
                what="the commit reports to be reset after forwarding",
            )
            await _acknowledged(h, await asyncio.to_thread(h.queued_reports))
            await t.more_acked(10)
        drain_s = await h.drain()

        # 3. The same report once more, straight from a copy of an outbox file.
        body = json.loads(replay)
        async with h.session.post(
            f"{h.api.url}/v1/nodes/{h.node_id()}/commits",
            json={"commits": [body]},
            headers={"X-API-Key": h.api.node_key},
        ) as r:
            assert r.status == 200, await r.text()
            answer = await r.json()

        result = await h.reconcile()
        db_dups = await asyncio.to_thread(h.db_commit_dups)
        log = h.cp_proxy.log
        resent = sum(
            1
            for i, e in enumerate(log)
            if e.action == "reset_after"
            and any(h.is_commit_report(x.method, x.path) for x in log[i + 1 :])
        )
        h.report(
            result,
            five_xx_injected=h.injected(h.cp_proxy, "error_"),
            five_xx_on_reports=h.injected(h.cp_proxy, "error_", path="/commits"),
            acked_during_5xx=acked_during_5xx,
            queued_during_5xx=queued_during_5xx,
            reports_reset_after_apply=h.injected(h.cp_proxy, "reset_after"),
            reset_reports_resent=resent,
            replayed_report_answer=answer,
            report_retries=h.node_log_count("commit report failed"),
            db_commit_dup_rows=db_dups,
            drain_s=round(drain_s, 2),
        )
        assert acked_during_5xx >= 40
        assert missing == [], f"segments deleted before acknowledgement: {missing}"
        assert resent == resets, "every reset report was sent again"
        assert answer == {"acknowledged": 1, "stored": 0}, answer
        assert db_dups == 0
        h.assert_clean(result, duplicates=False)
