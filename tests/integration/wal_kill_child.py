"""Child process for test_wal_sigkill: append under load, print acknowledged ids.

Usage: python -m tests.integration.wal_kill_child WAL_DIR DELIVERED_DIR FIRST_ID

Producers append JSON records {"id": n}: before an append the child prints
"send <first_id> <last_id>"; after an append's future resolves (fsync done)
the child prints "ack <first_id> <last_id>" and flushes. A delivery task copies every
sealed segment into DELIVERED_DIR (temp file, fsync, rename, fsync dir) and then marks
it committed, so retention runs under the kill too. The parent SIGKILLs this process
at a random moment.
"""

import asyncio
import os
import sys

from wal import SealedSegment, WalSettings, WriteAheadLog

PRODUCERS = 16
RECORDS_PER_APPEND = 8


def _copy_durably(src: str, dst_dir: str) -> None:
    name = os.path.basename(src)
    tmp = os.path.join(dst_dir, name + ".tmp")
    with open(src, "rb") as f:
        data = f.read()
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, os.path.join(dst_dir, name))
    fd = os.open(dst_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


async def main(wal_dir: str, delivered_dir: str, first_id: int) -> None:
    queue: asyncio.Queue[SealedSegment] = asyncio.Queue(maxsize=10_000)
    wal = await WriteAheadLog.open(
        wal_dir,
        settings=WalSettings(segment_bytes=32 * 1024, segment_max_age_s=0.2),
        on_sealed=queue.put_nowait,
    )
    for segment in wal.sealed_segments():
        queue.put_nowait(segment)
    print(f"ready {wal.epoch} {wal.open_seq}", flush=True)

    async def deliver() -> None:
        loop = asyncio.get_running_loop()
        while True:
            segment = await queue.get()
            await loop.run_in_executor(None, _copy_durably, segment.path, delivered_dir)
            await wal.mark_committed(segment.seq)

    next_id = first_id
    out = sys.stdout

    async def produce() -> None:
        nonlocal next_id
        while True:
            ids = range(next_id, next_id + RECORDS_PER_APPEND)
            next_id += RECORDS_PER_APPEND
            records = [b'{"id":%d}' % i for i in ids]
            out.write(f"send {ids[0]} {ids[-1]}\n")
            out.flush()
            await wal.append(records, tenant=1)
            out.write(f"ack {ids[0]} {ids[-1]}\n")
            out.flush()

    tasks = [asyncio.create_task(produce()) for _ in range(PRODUCERS)]
    tasks.append(asyncio.create_task(deliver()))
    await asyncio.gather(*tasks)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
