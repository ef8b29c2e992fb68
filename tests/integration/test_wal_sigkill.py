"""A writer process is SIGKILLed under load, again and again; after each restart every
acknowledged record must be in the WAL or in what was delivered, exactly as written.

kill -9 tests recovery (torn tails, half-done seals and deletes), not fsync: the
killed process's page cache still reaches disk. Power-cut tests are in tests/fault.
"""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from wal.reader import iter_frames
from wal.segment import parse_name

ROOT = Path(__file__).resolve().parents[2]
CYCLES = 40 if os.environ.get("EDGEMQ_LONG_TESTS") == "1" else 8
IDS_PER_CYCLE = 10_000_000


class Child:
    def __init__(self, wal_dir: Path, delivered: Path, first_id: int) -> None:
        args = (wal_dir, delivered, first_id)
        self.sent: set[int] = set()
        self.acked: set[int] = set()
        self.ready = threading.Event()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.wal_kill_child", *map(str, args)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            kind, *rest = line.split()
            if kind == "ready":
                self.ready.set()
            elif kind in ("send", "ack") and len(rest) == 2:
                ids = range(int(rest[0]), int(rest[1]) + 1)
                (self.sent if kind == "send" else self.acked).update(ids)

    def kill(self) -> str:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._reader.join(timeout=30)
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self.proc.stdout.close()
        with self.proc.stderr:
            return self.proc.stderr.read()


def _records(path: Path) -> list[int]:
    return [json.loads(frame.payload)["id"] for _, frame in iter_frames(path.read_bytes())]


def test_acknowledged_records_survive_repeated_sigkill(tmp_path: Path) -> None:
    seed = int(os.environ.get("EDGEMQ_TEST_SEED", random.randrange(2**32)))
    print(f"seed={seed} cycles={CYCLES}")
    rng = random.Random(seed)
    wal_dir, delivered = tmp_path / "wal", tmp_path / "delivered"
    delivered.mkdir()
    acked: set[int] = set()
    sent: set[int] = set()
    for cycle in range(CYCLES):
        child = Child(wal_dir, delivered, first_id=cycle * IDS_PER_CYCLE)
        assert child.ready.wait(timeout=60), child.kill()
        time.sleep(rng.uniform(0.05, 0.6))  # the fault's timing is the random input
        stderr = child.kill()
        assert child.acked, f"cycle {cycle} acknowledged nothing: {stderr}"
        acked |= child.acked
        sent |= child.sent

    # Recover once more in a last child, killed right after recovery.
    last = Child(wal_dir, delivered, first_id=CYCLES * IDS_PER_CYCLE)
    assert last.ready.wait(timeout=60), last.kill()
    last.kill()
    acked |= last.acked
    sent |= last.sent

    seen: dict[int, int] = {}
    by_seq: dict[int, list[int]] = {}
    for directory in (wal_dir, delivered):
        for path in sorted(directory.iterdir()):
            parsed = parse_name(path.name)
            if parsed is None:
                continue
            ids = _records(path)
            seq = parsed[0]
            if seq in by_seq:  # delivered, then killed before the local delete
                assert by_seq[seq] == ids, f"two different segments {seq}"
                continue
            by_seq[seq] = ids
            for i in ids:
                seen[i] = seen.get(i, 0) + 1
    lost = acked - seen.keys()
    phantoms = seen.keys() - sent
    duplicates = sum(n - 1 for n in seen.values() if n > 1)
    sealed_seqs = sorted(by_seq)
    print(
        f"acked {len(acked)} records across {CYCLES} kill cycles; lost {len(lost)}; "
        f"phantoms {len(phantoms)}; "
        f"duplicates {duplicates}; segments {len(sealed_seqs)}"
    )
    assert not lost, f"lost {len(lost)} acknowledged records, e.g. {sorted(lost)[:10]}"
    assert not phantoms, f"records nobody sent: {sorted(phantoms)[:10]}"
    assert duplicates == 0
    assert sealed_seqs == list(range(1, len(sealed_seqs) + 1)), "sequence numbers have a gap"
