"""`edgemq up`: everything on one machine with embedded defaults.

Until the ingest node and control plane land, `up` runs what exists: it opens (and
recovers) the WAL of a demo endpoint under the data directory, appends a few demo
records with durable acknowledgement, seals the segment and prints how to read it.
"""

from __future__ import annotations

import asyncio
import json
import os

from shared.clock import SYSTEM_CLOCK
from wal import WalSettings, WriteAheadLog

DEMO_ENDPOINT = "demo"


async def run_up(wal_dir: str) -> int:
    wal = await WriteAheadLog.open(wal_dir, settings=WalSettings(segment_max_age_s=1.0))
    print(f"WAL {wal_dir}: {wal.recovery.summary()}")
    now = SYSTEM_CLOCK.time_ms()
    records = [
        json.dumps({"device": f"sensor-{i}", "temp_c": 20 + i, "ts": now}).encode()
        for i in range(3)
    ]
    ack = await wal.append(records, tenant=1)
    print(f"appended {ack.frames} records, fsynced: epoch {ack.epoch} segment {ack.seq}")
    seq = wal.open_seq
    await wal.close(seal=True)
    segment = os.path.join(wal_dir, f"seg-{seq:08d}.wal")
    print(f"sealed {segment}")
    print(f"read it back with:  .venv/bin/edgemq segment cat {segment}")
    print("HTTP/MQTT ingest and S3 delivery arrive with the ingest node (issue 5).")
    return 0


def up(data_dir: str) -> int:
    return asyncio.run(run_up(os.path.join(os.path.abspath(data_dir), "wal", DEMO_ENDPOINT)))
