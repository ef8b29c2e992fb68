"""A WAL writer for the power-cut, fsync-audit and fsync-error tests (tests/fault).

Usage: python -m tests.fault.power_child WAL_DIR ACK_LOG FIRST_ID [PAUSE_MS]

Opens (recovers) the WAL in WAL_DIR, prints "ready <pid> <epoch> <open_seq>" on stdout,
then PRODUCERS tasks append RECORDS_PER_APPEND records each, over and over, pausing
PAUSE_MS (default 2) between appends. After an append's future resolves (its fsync
returned), the producer writes one line to ACK_LOG with a single write(2) on an
O_APPEND descriptor:

    ack <seq> <offset> <nbytes> <first_id> <last_id>

saying the frames of ids first..last are durable in segment <seq> at bytes
[offset, offset + nbytes). ACK_LOG lives outside the file system under test; a reader
that notes the log's size at an instant knows exactly which acks happened before it.
A failed WAL makes every producer write "fail <first_id> <last_id>" and stop.

The record for id n is `record(n)`: the parent recomputes it to find corrupt payloads.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from wal import WalFailed, WalFull, WalSettings, WriteAheadLog
from wal.frame import encode_records

PRODUCERS = 8
RECORDS_PER_APPEND = 4
TENANT = 7
SEGMENT_BYTES = 48 * 1024
SEGMENT_MAX_AGE_S = 0.25
FULL_PAUSE_S = 0.01


def record(n: int) -> bytes:
    """The exact payload written for id `n`."""
    return b'{"id":%d,"pad":"%s"}' % (n, (b"%x" % (n * 2654435761 % 2**32)) * 3)


async def main(wal_dir: str, ack_log: str, first_id: int, pause_s: float) -> None:
    wal = await WriteAheadLog.open(
        wal_dir,
        settings=WalSettings(segment_bytes=SEGMENT_BYTES, segment_max_age_s=SEGMENT_MAX_AGE_S),
    )
    ack_fd = os.open(ack_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    print(f"ready {os.getpid()} {wal.epoch} {wal.open_seq}", flush=True)
    next_id = first_id

    async def produce() -> None:
        nonlocal next_id
        while True:
            first = next_id
            next_id += RECORDS_PER_APPEND
            ids = range(first, next_id)
            data = encode_records(
                [record(i) for i in ids], tenant=TENANT, ts_ms=time.time_ns() // 1_000_000
            )
            try:
                ack = await wal.append_encoded(data, len(ids))
            except WalFull:
                await asyncio.sleep(FULL_PAUSE_S)
                continue
            except WalFailed:
                os.write(ack_fd, b"fail %d %d\n" % (first, ids[-1]))
                return
            line = b"ack %d %d %d %d %d\n" % (ack.seq, ack.offset, len(data), first, ids[-1])
            os.write(ack_fd, line)
            if pause_s:
                await asyncio.sleep(pause_s)

    await asyncio.gather(*(produce() for _ in range(PRODUCERS)))
    print("failed", flush=True)
    await wal.close()


if __name__ == "__main__":
    pause_ms = float(sys.argv[4]) if len(sys.argv) > 4 else 2.0
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), pause_ms / 1000))
