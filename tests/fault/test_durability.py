"""Durability scenarios (docs/RELIABILITY.md): DUR-01 kill loop, DUR-03 crash-point
matrix, DUR-05 SIGTERM drain — the node a real `python -m edgemq node` process, S3 a
real moto server, the control plane a real `edgemq control`.

kill -9 tests recovery, not fsync: the killed process's page cache still reaches disk
(power cuts are the PWR scenarios). Seeds: EDGEMQ_TEST_SEED replays kill instants.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
from pathlib import Path

import pytest

from tests.fault.harness import (
    Harness,
    Outcome,
    Traffic,
    failed_statuses,
    long_tier,
    percentile,
)
from tests.support.ledger import load_manifests
from tests.support.moto_server import MotoServer
from tests.support.stack import wait_for

DUR01_CYCLES = 30
DUR01_LONG_CYCLES = 300
KILL_INSTANT_S = (0.05, 1.0)
CRASH_EXIT = 137  # shared/failpoints.py: os._exit(137), like kill -9
DISCONNECTS = ("ServerDisconnectedError", "ClientOSError")


# ------------------------------------------------------------------------ DUR-01
async def _kill_loop(tmp_path: Path, moto: MotoServer, seed: int, cycles: int) -> None:
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    async with Harness(tmp_path, moto, "DUR-01", seed=seed) as h:
        await h.start_node()
        assert h.node is not None
        recoveries: list[float] = []
        instants: list[float] = []
        async with h.traffic(writers=4) as t:
            for _ in range(cycles):
                await t.more_acked(5)
                instant_s = rng.uniform(*KILL_INSTANT_S)
                await asyncio.sleep(instant_s)  # the seeded kill instant, mid-stream
                assert await h.node.kill() == -9
                instants.append(round(instant_s, 3))
                restarted = loop.time()
                h.node.start()
                recoveries.append(await t.ok_after(restarted))
            await t.more_acked(10)
        drain_s = await h.drain()
        result = await h.reconcile()
        h.report(
            result,
            cycles=cycles,
            kills=len(instants),
            recovery_p50_s=percentile(recoveries, 50),
            recovery_p95_s=percentile(recoveries, 95),
            recovery_max_s=round(max(recoveries), 3),
            drain_s=round(drain_s, 2),
            recoveries_cutting_a_torn_tail=h.node_log_count("WAL recovery:"),
            outcomes=dict(failed_statuses(t.outcomes)),
        )
        h.assert_clean(result)
        assert h.node.starts == cycles + 1
        assert result.ok >= cycles * 5 * 20, result.line()


async def test_dur01_thirty_kill_nine_cycles_under_http_load_lose_no_acknowledged_record(
    tmp_path: Path, moto: MotoServer, seed: int
) -> None:
    await _kill_loop(tmp_path, moto, seed, DUR01_CYCLES)


@pytest.mark.slow
@long_tier
@pytest.mark.timeout(3600)
async def test_dur01_long_three_hundred_kill_nine_cycles_lose_no_acknowledged_record(
    tmp_path: Path, moto: MotoServer, seed: int
) -> None:
    await _kill_loop(tmp_path, moto, seed, DUR01_LONG_CYCLES)


# ------------------------------------------------------------------------ DUR-03
CRASH_POINTS = {
    # name: (crash on this hit, what a restart re-uploads: "none", "some" or "any")
    "wal.before_fsync": (20, "any"),  # batch in the page cache, fdatasync not called
    "wal.after_fsync": (20, "any"),  # fsynced, acknowledgements not posted
    "wal.mid_seal": (2, "any"),  # renamed to .wal, directory not fsynced
    "delivery.after_build": (1, "none"),  # artifacts built, nothing uploaded
    "delivery.mid_upload": (1, "some"),  # the first artifact stored
    "delivery.before_manifest": (1, "some"),  # every artifact stored, no manifest
    "delivery.after_manifest": (1, "some"),  # manifest stored, report not queued
    "outbox.after_ack": (1, "none"),  # acknowledged, segment not deleted
    "outbox.mid_delete": (1, "none"),  # segment deleted, report file not removed
}


@pytest.mark.parametrize("failpoint", sorted(CRASH_POINTS))
async def test_dur03_a_crash_at_each_step_loses_nothing_and_reuses_the_same_keys(
    tmp_path: Path, moto: MotoServer, seed: int, failpoint: str
) -> None:
    """The node runs with `<failpoint>=crash@n` (os._exit(137) at that step, no cleanup),
    is restarted without it, drains; then nothing acknowledged is lost, no manifest or
    commit row is orphaned, and every key a re-delivery wrote is a key the first
    attempt wrote (one manifest per (node, epoch, seq)). A report already queued in
    the outbox means no second upload at all."""
    nth, reupload = CRASH_POINTS[failpoint]
    loop = asyncio.get_running_loop()
    async with Harness(tmp_path, moto, "DUR-03", seed=seed) as h:
        assert h.node is not None
        await h.start_node(failpoints=f"{failpoint}=crash@{nth}")
        async with h.traffic(writers=2) as t:
            code = await h.node.wait_exit(60)
            acked_before_crash = t.acked
            node_id = await asyncio.to_thread(h.node_id)
            keys_before_crash = {
                k: n for k, n in (await asyncio.to_thread(h.s3_puts)).items() if node_id in k
            }
            sealed_at_crash = await asyncio.to_thread(h.sealed_segments)
            reported_at_crash = {
                int(name.removesuffix(".json").split("~")[2])
                for name in await asyncio.to_thread(h.queued_reports)
            }
            restarted = loop.time()
            h.node.start()  # without the failpoint
            recovery_s = await t.ok_after(restarted)
            await t.more_acked(20)
        await h.drain()
        result = await h.reconcile()
        manifests = await asyncio.to_thread(load_manifests, h.reader())
        assert {m.node_id for m in manifests.values()} == {node_id}
        puts = {k: n for k, n in (await asyncio.to_thread(h.s3_puts)).items() if node_id in k}
        rewritten = sorted(k for k, n in puts.items() if n > 1)
        per_segment = collections.Counter((m.node_id, m.epoch, m.seq) for m in manifests.values())
        fired = h.node_log_count(f"failpoint {failpoint} fired: crash")
        # The segment(s) the crash interrupted: the reports in the outbox for the outbox
        # steps, the oldest sealed segment without a report for the delivery steps
        # (segments are delivered in order).
        if failpoint.startswith("outbox."):
            crashed = reported_at_crash
        elif failpoint.startswith("delivery."):
            crashed = {min(set(sealed_at_crash) - reported_at_crash, default=-1)}
        else:
            crashed = set()  # a WAL step: no delivery was interrupted on purpose
        crashed_keys = {k: n for k, n in puts.items() if _segment_of(k) in crashed}
        h.report(
            result,
            failpoint=failpoint,
            crash_on_hit=nth,
            exit_code=code,
            fired=fired,
            acked_before_crash=acked_before_crash,
            objects_before_crash=len(keys_before_crash),
            recovery_s=round(recovery_s, 3),
            keys_written=len(puts),
            keys_rewritten=len(rewritten),
            crashed_segments=sorted(crashed),
            crashed_segment_puts=sorted(crashed_keys.values()),
            manifests_per_segment_max=max(per_segment.values()),
        )
        assert (code, fired) == (CRASH_EXIT, 1), h.logs()
        h.assert_clean(result)
        assert max(per_segment.values()) == 1, per_segment
        listed = set(await asyncio.to_thread(h.reader().list_keys))
        assert set(puts) <= listed, sorted(set(puts) - listed)
        assert set(rewritten) <= set(keys_before_crash), "a retry wrote only keys seen before"
        if failpoint.startswith("outbox."):
            assert reported_at_crash, "the crash left its report in the outbox"
        if reupload == "none":
            assert crashed_keys, crashed
            assert set(crashed_keys.values()) == {1}, f"uploaded again: {crashed_keys}"
        elif reupload == "some":
            assert max(crashed_keys.values(), default=0) > 1, f"not redelivered: {crashed_keys}"
        if failpoint.startswith("wal."):
            assert acked_before_crash > 0, "the crash came after some acknowledged data"


def _segment_of(key: str) -> int | None:
    """The segment number in an artifact or manifest key (DESIGN.md §6 layout)."""
    name = key.rsplit("/", 1)[-1]
    for prefix_end, suffix in (("seg-", ".wal.zst"), ("seg-", ".json"), ("-", ".parquet")):
        if name.endswith(suffix):
            stem = name.removesuffix(suffix)
            digits = stem[len(prefix_end) :] if prefix_end == "seg-" else stem.rsplit("-", 1)[-1]
            return int(digits) if digits.isdigit() else None
    return None


# ------------------------------------------------------------------------ DUR-05
def _after_sigterm(outcome: Outcome) -> str:
    if outcome.status == 200:
        return "200"
    if outcome.status == 503:
        return f"503 {outcome.reason or outcome.code}"
    if outcome.status is not None:
        return str(outcome.status)
    kind = (outcome.error or "?").split(":")[0]
    return "refused" if kind == "ClientConnectorError" else kind


async def test_dur05_sigterm_under_load_answers_200_or_503_draining_and_exits_zero_in_time(
    tmp_path: Path, moto: MotoServer, seed: int
) -> None:
    loop = asyncio.get_running_loop()
    deadline_s = 20.0
    async with Harness(tmp_path, moto, "DUR-05", seed=seed, drain_deadline_s=deadline_s) as h:
        assert h.node is not None
        await h.start_node()
        async with h.traffic(writers=4) as t:
            await t.more_acked(100)
            sigterm_at = loop.time()
            code = await h.node.terminate(timeout_s=deadline_s + 15)
            exit_s = loop.time() - sigterm_at
            exited_at = loop.time()
            # The writers keep going until they have found the port closed.
            await t.until(
                lambda: any(o.started > exited_at for o in t.outcomes),
                what="a request after the exit",
            )
        after = collections.Counter(_after_sigterm(o) for o in t.outcomes if o.ended > sigterm_at)
        in_flight = collections.Counter(
            _after_sigterm(o) for o in t.outcomes if o.started < sigterm_at < o.ended
        )
        held = await asyncio.to_thread(h.held)
        result = await h.reconcile()
        h.report(
            result,
            exit_code=code,
            exit_s=round(exit_s, 2),
            drain_deadline_s=deadline_s,
            in_flight_at_sigterm=dict(in_flight),
            answers_after_sigterm=dict(after),
            held_after_exit=len(held),
        )
        assert code == 0, h.logs()
        assert exit_s < deadline_s + 5, exit_s
        assert held == [], held
        assert set(in_flight) <= {"200", "503 draining"}, in_flight
        # Started after the signal: a keep-alive connection may be closed under a
        # request sent as the node exits (nothing can be appended by then).
        assert set(after) <= {"200", "503 draining", "refused", *DISCONNECTS}, after
        assert after["503 draining"] > 0, after
        h.assert_clean(result, duplicates=False)


async def test_dur05_sigterm_while_s3_is_down_exits_3_at_the_deadline_keeping_the_data_for_the_next_start(
    tmp_path: Path, moto: MotoServer, seed: int
) -> None:
    loop = asyncio.get_running_loop()
    deadline_s = 3.0
    async with Harness(
        tmp_path, moto, "DUR-05", seed=seed, drain_deadline_s=deadline_s, fast_retries=True
    ) as h:
        assert h.node is not None
        assert h.s3_proxy is not None
        await h.start_node()
        h.s3_proxy.set_rule(lambda method, target: True, "error_503")
        async with h.traffic(writers=2) as t:
            await t.more_acked(100)
            sigterm_at = loop.time()
            code = await h.node.terminate(timeout_s=deadline_s + 15)
            exit_s = loop.time() - sigterm_at
        in_flight = collections.Counter(
            _after_sigterm(o) for o in t.outcomes if o.started < sigterm_at < o.ended
        )
        held = await asyncio.to_thread(h.held)
        restart_drain_s = await h.drain()  # S3 back, the node started again
        result = await h.reconcile()
        h.report(
            result,
            variant="s3_down",
            exit_code=code,
            exit_s=round(exit_s, 2),
            drain_deadline_s=deadline_s,
            in_flight_at_sigterm=dict(in_flight),
            held_after_exit=len(held),
            s3_503s_injected=h.injected(h.s3_proxy, "error_503"),
            restart_drain_s=round(restart_drain_s, 2),
        )
        assert code == 3, h.logs()  # the deadline passed with data undelivered
        assert deadline_s <= exit_s < deadline_s + 5, exit_s
        assert held, "the undelivered segments stay for the next start"
        assert all(name.endswith(".wal") for name in held), held  # sealed by the drain
        assert set(in_flight) <= {"200", "503 draining"}, in_flight
        h.assert_clean(result, duplicates=False)


# ------------------------------------------------------------ negative control
async def test_the_harness_sees_loss_when_a_sealed_segment_vanishes_behind_the_nodes_back(
    tmp_path: Path, moto: MotoServer, seed: int
) -> None:
    """NEG-01: the same processes, drain and reconciler as the scenarios above, with
    loss made on purpose (S3 held off so segments wait on disk, the node killed, its
    first and third sealed segments deleted): the verdict must show the acknowledged records as
    lost and the hole as a sequence gap, or the clean verdicts above prove nothing."""
    async with Harness(tmp_path, moto, "NEG-01", seed=seed, fast_retries=True) as h:
        assert h.node is not None
        assert h.s3_proxy is not None
        await h.start_node()
        h.s3_proxy.set_rule(lambda method, target: True, "error_503")

        async def three_sealed() -> bool:
            return len(await asyncio.to_thread(h.sealed_segments)) >= 3

        async with h.traffic(writers=2) as t:
            await wait_for(three_sealed, what="three sealed segments waiting for S3")
            await h.node.kill()
            sealed = await asyncio.to_thread(h.sealed_segments)
            first, middle = sealed[0], sealed[2]  # a lost head and a hole after it
            wal_dir = h.data_dir / "wal" / h.lake.endpoint_id
            frames = 0
            for seq in (first, middle):
                path = wal_dir / f"seg-{seq:08d}.wal"
                frames += (await asyncio.to_thread(path.read_bytes)).count(b'{"id":')
                await asyncio.to_thread(path.unlink)
            h.node.start()
            await t.ok_after(asyncio.get_running_loop().time())
        await h.drain()
        result = await h.reconcile()
        h.report(result, deleted_segments=[first, middle], deleted_records=frames, expected="loss")
        assert result.lost_acked == frames > 0, result.line()
        # The lost head and the hole after it, each missing from manifests and commits
        # (the reconciler counts from segment 1); the harness's own head check agrees.
        assert (result.seq_gaps, h.head_gaps) == (4, 2), result.line()


# ------------------------------------------------------------------ soak (long tier)
SOAK_MINUTES = float(os.environ.get("EDGEMQ_SOAK_MINUTES") or 10)
SOAK_FAULTS = (
    "s3_5xx",
    "s3_ambiguous",
    "s3_outage",
    "s3_slow",
    "cp_kill",
    "cp_pause",
    "cp_5xx",
    "node_kill",
)


async def _one_fault(h: Harness, t: Traffic, fault: str, rng: random.Random) -> float | None:
    """Apply `fault` for a seeded 1-8 s, then heal it; the node's recovery time for a
    node kill, else None."""
    assert h.s3_proxy is not None
    assert h.cp_proxy is not None
    assert h.control is not None
    assert h.node is not None
    assert h.session is not None
    loop = asyncio.get_running_loop()
    duration_s = rng.uniform(1.0, 8.0)
    if fault == "node_kill":
        await asyncio.sleep(rng.uniform(0.05, 1.0))  # the seeded kill instant
        await h.node.kill()
        restarted = loop.time()
        h.node.start()
        return await t.ok_after(restarted)
    if fault == "s3_5xx":
        h.s3_proxy.random_schedule(
            rng.randrange(2**32), {"error_503": 0.3, "error_500": 0.1}, when=h.is_bucket_put
        )
    elif fault == "s3_ambiguous":
        h.s3_proxy.fail_next(2, "reset_after", when=h.is_bucket_put)
    elif fault == "s3_outage":
        h.s3_proxy.set_rule(lambda method, target: True, "error_503")
    elif fault == "s3_slow":
        h.s3_proxy.set_rule(h.is_bucket_put, "delay:0.5")
    elif fault == "cp_kill":
        await h.control.kill()
    elif fault == "cp_pause":
        h.control.pause()
    elif fault == "cp_5xx":
        h.cp_proxy.random_schedule(rng.randrange(2**32), {"error_503": 0.5, "error_500": 0.3})
    else:
        raise AssertionError(f"unknown fault {fault}")
    await asyncio.sleep(duration_s)  # the fault's seeded duration
    h.s3_proxy.clear()
    h.cp_proxy.clear()
    if h.control.paused:
        h.control.resume()
    if not h.control.running:
        h.control.start()
        await h.control.wait_ready(h.session)
    return None


@pytest.mark.slow
@long_tier
@pytest.mark.timeout(int(SOAK_MINUTES * 60) + 900)
async def test_soak_periodic_random_s3_control_plane_and_node_faults_lose_nothing(
    tmp_path: Path, moto: MotoServer, seed: int
) -> None:
    """EDGEMQ_SOAK_MINUTES (default 10) of continuous ingest with a seeded random fault
    every few seconds: S3 5xx, ambiguous PUTs, S3 outage, slow S3, control plane
    killed / paused / 5xx, node kill -9."""
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    async with Harness(tmp_path, moto, "SOAK", seed=seed, fast_retries=True) as h:
        await h.start_node()
        faults: collections.Counter[str] = collections.Counter()
        recoveries: list[float] = []
        async with h.traffic(writers=2) as t:
            end = loop.time() + SOAK_MINUTES * 60
            while loop.time() < end:
                fault = rng.choice(SOAK_FAULTS)
                faults[fault] += 1
                recovery = await _one_fault(h, t, fault, rng)
                if recovery is not None:
                    recoveries.append(recovery)
                await t.more_acked(10, timeout_s=120)  # healed: the stream flows again
        drain_s = await h.drain(timeout_s=300)
        result = await h.reconcile()
        h.report(
            result,
            minutes=SOAK_MINUTES,
            faults=dict(faults),
            node_recovery_p95_s=percentile(recoveries, 95),
            outcomes=dict(failed_statuses(t.outcomes)),
            **h.retries_seen(),
            drain_s=round(drain_s, 2),
        )
        h.assert_clean(result)
        assert sum(faults.values()) >= 10, faults
