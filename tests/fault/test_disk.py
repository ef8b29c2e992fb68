"""Disk faults under a real node process (`python -m edgemq node`): DSK-01, disk full,
and DSK-02, fdatasync failing with EIO.

DSK-01: the node's data directory is a 64 MiB ext4 loop image; writers post under load.
Filling the image below the node's free-disk reserve must turn ingest into 503
`disk` before the WAL ever meets ENOSPC (ADR 0004: "the node is expected to refuse
work before the disk is full"), even when the image is then filled to the last block.
Then, with the reserve set to 0 so that nothing guards the disk, a fill to the last
block makes a WAL write fail with ENOSPC: the WAL fail-stops (503 `wal_failed`,
/readyz 503), stays failed after space comes back, and a restart recovers it. Both
phases end with space freed, the node ready, everything delivered and reconciled.

DSK-02: the node runs under `strace -e inject=fdatasync:error=EIO:when=K -P <open
segment>`: the K-th fdatasync of the first segment fails. The WAL must fail-stop
(/readyz 503 "WAL failed", ingest 503 `wal_failed`), the requests of that batch are not
acknowledged (500 `wal_failed`: written, not synced, outcome unknown), the trace shows the injected EIO and no fdatasync of that file after it
(a failed fsync is never retried), and after a restart nothing acknowledged is lost.

Both end with the ledger reconciler (tests/support/ledger.py) against the committed
output. Randomised parts print their seed; replay with EDGEMQ_TEST_SEED.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fault.traced_node import Node
from tests.support.ledger import (
    INDETERMINATE,
    Ledger,
    LocalReader,
    Reconciliation,
    Request,
    reconcile_async,
)
from tests.support.loopfs import MIB, LoopMount, make_image, missing_root_tools
from tests.support.postgres import free_port
from tests.support.report import report
from tests.support.stack import ControlPlane, control_plane, wait_for

BATCH_RECORDS = 20
WRITERS = 3
RESERVE_BYTES = 16 * MIB
IMAGE_BYTES = 64 * MIB
PAUSE_AFTER_REFUSAL_S = 0.02
"""Pacing of a writer whose request was refused, not a settle-wait."""
DRAIN_TIMEOUT_S = 90.0
FILL_ATTEMPTS = 10


def _seed() -> int:
    seed = int(os.environ.get("EDGEMQ_TEST_SEED") or random.randrange(2**32))
    print(f"seed={seed} (replay with EDGEMQ_TEST_SEED={seed})")
    return seed


# ------------------------------------------------------------------- the load
@dataclass
class Load:
    """Writers posting batches until stopped; every outcome goes to the ledger, every
    refusal's reason is counted, and requests refused as `wal_failed` are remembered."""

    ledger: Ledger
    session: aiohttp.ClientSession
    url: str
    api_key: str
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    wal_failed_requests: set[int] = field(default_factory=set)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.stop.clear()
        self.tasks = [asyncio.create_task(self._write()) for _ in range(WRITERS)]

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)
        self.tasks = []

    async def post(self) -> str:
        batch = self.ledger.records(BATCH_RECORDS, lambda n: {"temp": n % 90, "pad": "x" * 40})
        try:
            async with self.session.post(
                self.url,
                data=Ledger.ndjson(batch),
                headers={"X-API-Key": self.api_key, "Content-Type": "application/x-ndjson"},
                timeout=aiohttp.ClientTimeout(total=10),
            ) as r:
                body = await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            self.ledger.note(batch, None, err)
            outcome = f"error:{type(err).__name__}"
            self.outcomes[outcome] += 1
            return outcome
        self.ledger.note(batch, status)
        outcome = str(status)
        if status != 200:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                error = json.loads(body)["error"]
                outcome = f"{status}:{error.get('reason') or error.get('code')}"
        if outcome == "503:wal_failed":
            self.wal_failed_requests.add(len(self.ledger.requests) - 1)
        self.outcomes[outcome] += 1
        return outcome

    async def _write(self) -> None:
        while not self.stop.is_set():
            if await self.post() != "200":
                await asyncio.sleep(PAUSE_AFTER_REFUSAL_S)

    async def until(self, outcome: str, n: int = 1, *, timeout_s: float = 30.0) -> None:
        target = self.outcomes[outcome] + n
        await wait_for(
            lambda: self.outcomes[outcome] >= target,
            timeout_s=timeout_s,
            what=f"{n} more '{outcome}' answers (so far {dict(self.outcomes)})",
        )


def wal_failed_as_indeterminate(ledger: Ledger, requests: set[int]) -> Ledger:
    """The same ledger with the `wal_failed` refusals classed as indeterminate."""
    copy = Ledger(ledger.run)
    copy.sent = ledger.sent
    copy.requests = [
        Request(r.ids, INDETERMINATE, None, "503 wal_failed") if i in requests else r
        for i, r in enumerate(ledger.requests)
    ]
    return copy


# ------------------------------------------------------------- shared steps
async def _endpoint(cp: ControlPlane, out: Path, **fields: Any) -> dict[str, Any]:
    dest = await cp.local_destination(str(out))
    return await cp.endpoint(dest["id"], **fields)


def _leftovers(data_dir: Path, endpoint_id: str) -> list[str]:
    """Sealed or non-empty open segments and queued commit reports (blocking)."""
    held = []
    wal_dir = data_dir / "wal" / endpoint_id
    for path in sorted(wal_dir.iterdir()) if wal_dir.is_dir() else []:
        if path.name.endswith(".wal") or (
            path.name.endswith(".wal.open") and path.stat().st_size > 0
        ):
            held.append(path.name)
    outbox = data_dir / "outbox"
    held += [p.name for p in sorted(outbox.iterdir())] if outbox.is_dir() else []
    return held


async def _drain(node: Node, endpoint_id: str) -> None:
    """Seal (SIGTERM drains) and wait for the delivery of everything held."""

    async def empty() -> bool:
        return not await asyncio.to_thread(_leftovers, node.data_dir, endpoint_id)

    try:
        await wait_for(empty, timeout_s=DRAIN_TIMEOUT_S, what="the node to deliver everything")
    except AssertionError as err:
        held = await asyncio.to_thread(_leftovers, node.data_dir, endpoint_id)
        raise AssertionError(f"{err}; still held: {held}\n{node.log_tail()}") from None


async def _reconcile(
    load: Load, cp: ControlPlane, out: Path, endpoint_id: str
) -> tuple[Reconciliation, Reconciliation]:
    """(strict, lenient): the lenient view classes `wal_failed` refusals as
    indeterminate, the strict one as refusals (nothing of them may be present)."""
    commits = {endpoint_id: await cp.commits(endpoint_id)}
    reader = LocalReader(out / "lake")
    strict = await reconcile_async(load.ledger, reader, commits=commits)
    lenient_ledger = wal_failed_as_indeterminate(load.ledger, load.wal_failed_requests)
    lenient = await reconcile_async(lenient_ledger, reader, commits=commits)
    print(strict.line())
    return strict, lenient


def _assert_reconciled(lenient: Reconciliation) -> None:
    assert lenient.must_be_zero() == {}, lenient.line()
    assert (lenient.unlisted, lenient.unreported) == (0, 0), lenient.line()


def _wal_failed_present(strict: Reconciliation, lenient: Reconciliation) -> int:
    """Records answered 503 `wal_failed` that were delivered after all."""
    return strict.refused_but_present - lenient.refused_but_present


def _no_refusal_was_stored(present: int) -> None:
    """A 503 `wal_failed` is a definite refusal: nothing of it may be delivered. The
    batch the failure hit (written, fsync failed) is answered 500 instead — unknown
    outcome, which the ledger classes as indeterminate (it was once a 503; see
    wal.errors.WalFailed.maybe_written)."""
    assert present == 0, f"{present} records answered 503 wal_failed were delivered"


# --------------------------------------------------------------------- DSK-02
STRACE_FDATASYNC = re.compile(r"^\d+\s+fdatasync\((\d+)<([^>]*)>\)\s+=\s+(-?\d+)(.*)$")


async def test_an_fdatasync_eio_fail_stops_the_wal_and_loses_nothing_acknowledged(
    tmp_path: Path,
) -> None:
    reason = missing_root_tools("strace")
    if reason:
        pytest.skip(reason)
    rng = random.Random(_seed())
    when = rng.randint(3, 40)
    started = time.monotonic()
    out, trace = tmp_path / "objects", tmp_path / "fdatasync.strace"
    async with control_plane(str(tmp_path)) as cp, aiohttp.ClientSession() as session:
        endpoint = await _endpoint(
            cp, out, segment_bytes=64 * MIB, segment_max_age_seconds=300
        )  # the first segment stays open through the whole fault
        eid = endpoint["id"]
        node = Node(
            data_dir=tmp_path / "node",
            control_url=cp.url,
            node_key=cp.node_key,
            http_port=free_port(),
        )
        segment = node.data_dir / "wal" / eid / "seg-00000001.wal.open"
        node.prefix = [
            "strace",
            "-f",
            "--seccomp-bpf",
            "-y",
            "-qq",
            "-e",
            "signal=none",
            "-e",
            "trace=fdatasync",
            "-e",
            f"inject=fdatasync:error=EIO:when={when}",
            "-P",
            str(segment),
            "-o",
            str(trace),
        ]
        load = Load(Ledger(), session, f"{node.url}/ingest/{eid}", cp.api_key)
        try:
            node.start()
            await node.wait_ready(session, timeout_s=60)
            load.start()
            await load.until("503:wal_failed", timeout_s=60)
            status, body = await node.readyz(session)
            assert status == 503, body
            assert any("WAL failed" in p for p in body["problems"]), body
            await load.until("503:wal_failed", 5)  # later requests: refused at once
            await load.finish()
            acked_before_fault = load.outcomes["200"]
            await node.kill()  # the node, then strace exits
            lines = trace.read_text().splitlines()

            node.prefix = []
            node.start()  # recovery: the segment's valid frames are kept and sealed
            await node.wait_ready(session, timeout_s=60)
            await _drain(node, eid)
            assert await node.terminate() == 0, node.log_tail()
        finally:
            await load.finish()
            await node.close()
        strict, lenient = await _reconcile(load, cp, out, eid)

    syncs = [m.groups() for line in lines if (m := STRACE_FDATASYNC.match(line))]
    injected = [i for i, s in enumerate(syncs) if "(INJECTED)" in s[3]]
    report(
        "DSK-02",
        injected_at_fdatasync=when,
        fdatasyncs_traced=len(syncs),
        eio_injected=len(injected),
        fdatasync_after_eio=len(syncs) - 1 - injected[0] if injected else None,
        acked_requests=acked_before_fault,
        acked_records=lenient.ok,
        outcomes=dict(load.outcomes),
        lost_acked=lenient.lost_acked,
        duplicates=lenient.duplicates,
        phantoms=lenient.phantoms,
        corrupt=lenient.corrupt,
        seq_gaps=lenient.seq_gaps,
        orphans=lenient.orphans,
        wal_failed_present=_wal_failed_present(strict, lenient),
        runtime_s=round(time.monotonic() - started, 1),
    )
    # The fault happened, where and how it was asked for ...
    assert len(injected) == 1, lines[-5:]
    assert injected[0] == when - 1, syncs[: when + 1]
    assert syncs[injected[0]][3].startswith(" EIO"), syncs[injected[0]]
    assert all(path == str(segment) for _, path, _, _ in syncs)
    # ... and was never retried: no fdatasync of that file after the error.
    assert injected[0] == len(syncs) - 1, f"fdatasync retried after EIO: {syncs[-3:]}"
    assert acked_before_fault > 0, load.outcomes
    assert set(load.outcomes) <= {"200", "503:wal_failed", "500:wal_failed"}, load.outcomes
    _assert_reconciled(lenient)
    _no_refusal_was_stored(_wal_failed_present(strict, lenient))


# --------------------------------------------------------------------- DSK-01
def _fill(directory: Path, name: str, leave_bytes: int) -> int:
    """Allocate a file leaving about `leave_bytes` free; its size (blocking)."""
    st = os.statvfs(directory)
    size = max(0, st.f_bavail * st.f_frsize - leave_bytes)
    fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    return size


def _fill_to_the_last_block(directory: Path, name: str) -> int:
    """Write until ENOSPC, in ever smaller pieces down to one byte (proof the disk is
    full); the bytes written (blocking)."""
    size, total = 64 * 1024, 0
    fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while size:
            try:
                total += os.write(fd, b"\0" * size)
            except OSError as err:
                if err.errno != errno.ENOSPC:
                    raise
                size //= 2
    finally:
        os.close(fd)
    return total


def _free(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


async def test_a_full_disk_refuses_with_503_and_recovers_without_loss(tmp_path: Path) -> None:
    reason = missing_root_tools("losetup", "mount", "umount", "mkfs.ext4")
    if reason:
        pytest.skip(reason)
    started = time.monotonic()
    out = tmp_path / "objects"
    image = tmp_path / "node-disk.img"
    make_image(image, IMAGE_BYTES)
    figures: dict[str, Any] = {}
    with LoopMount(image, tmp_path / "node-disk") as disk:
        root = disk.mountpoint
        async with control_plane(str(tmp_path)) as cp, aiohttp.ClientSession() as session:
            endpoint = await _endpoint(cp, out)
            eid = endpoint["id"]
            node = Node(
                data_dir=root / "node",
                log_path=tmp_path / "node.log",
                control_url=cp.url,
                node_key=cp.node_key,
                http_port=free_port(),
                env={"EDGEMQ_DISK_RESERVE_BYTES": str(RESERVE_BYTES)},
            )
            load = Load(Ledger(), session, f"{node.url}/ingest/{eid}", cp.api_key)
            try:
                node.start()
                await node.wait_ready(session)
                load.start()
                await load.until("200", 20)

                # Phase 1: below the reserve → 503 disk, long before ENOSPC.
                filled = await asyncio.to_thread(_fill, root, "filler-1", RESERVE_BYTES // 2)
                figures["free_after_fill_bytes"] = _free(root)
                assert figures["free_after_fill_bytes"] < RESERVE_BYTES
                await load.until("503:disk", 10)
                # ... and to the very last block: the node goes on refusing, unharmed.
                last = await asyncio.to_thread(_fill_to_the_last_block, root, "filler-2")
                figures["enospc_hit"] = True
                figures["free_at_full_bytes"] = _free(root)
                await load.until("503:disk", 20)
                status, body = await node.readyz(session)
                figures["readyz_when_full"] = status
                assert "503:wal_failed" not in load.outcomes, (load.outcomes, node.log_tail())
                figures["phase1_filled_bytes"] = filled + last
                # Space back → accepted again, no restart needed.
                (root / "filler-1").unlink()
                (root / "filler-2").unlink()
                await load.until("200", 20)

                # Phase 2: no reserve (nothing guards the disk) → ENOSPC in the WAL.
                await load.finish()
                figures["phase1_outcomes"] = dict(load.outcomes)
                assert await node.terminate() == 0, node.log_tail()
                node.options["EDGEMQ_DISK_RESERVE_BYTES"] = "0"
                node.start()
                await node.wait_ready(session)
                load.start()
                await load.until("200", 20)
                await asyncio.to_thread(_fill, root, "filler-3", 512 * 1024)
                for attempt in range(FILL_ATTEMPTS):
                    # Delivery deletes committed segments: top the filler up until a
                    # WAL write meets the full disk.
                    await asyncio.to_thread(_fill_to_the_last_block, root, "filler-4")
                    try:
                        await load.until("503:wal_failed", timeout_s=3)
                        break
                    except AssertionError:
                        if attempt == FILL_ATTEMPTS - 1:
                            raise
                assert "No space left on device" in node.log_tail(), node.log_tail()
                status, body = await node.readyz(session)
                assert status == 503, body
                assert any("WAL failed" in p for p in body["problems"]), body
                (root / "filler-3").unlink()
                (root / "filler-4").unlink()
                await load.until("503:wal_failed", 3)  # sticky: space alone does not heal
                status, body = await node.readyz(session)
                assert status == 503, body
                # Restart: recovery, ready again, accepting again.
                assert await node.kill() == -9
                node.start()
                await node.wait_ready(session)
                await load.until("200", 20)
                await load.finish()
                await _drain(node, eid)
                assert await node.terminate() == 0, node.log_tail()
            finally:
                await load.finish()
                await node.close()
            strict, lenient = await _reconcile(load, cp, out, eid)
    report(
        "DSK-01",
        image_bytes=IMAGE_BYTES,
        reserve_bytes=RESERVE_BYTES,
        **figures,
        outcomes=dict(load.outcomes),
        acked_records=lenient.ok,
        lost_acked=lenient.lost_acked,
        duplicates=lenient.duplicates,
        phantoms=lenient.phantoms,
        corrupt=lenient.corrupt,
        seq_gaps=lenient.seq_gaps,
        orphans=lenient.orphans,
        wal_failed_present=_wal_failed_present(strict, lenient),
        restarts=node.starts - 1,
        runtime_s=round(time.monotonic() - started, 1),
    )
    # Phase 1 runs one node throughout: only acknowledgements and `disk` refusals.
    assert set(figures["phase1_outcomes"]) <= {"200", "503:disk"}, figures["phase1_outcomes"]
    # Phase 2 kills the node: connections refused or reset then are expected.
    answers = {k for k in load.outcomes if not k.startswith("error:")}
    assert answers <= {"200", "503:disk", "503:wal_failed", "500:wal_failed"}, load.outcomes
    _assert_reconciled(lenient)
    _no_refusal_was_stored(_wal_failed_present(strict, lenient))
