"""Named failpoints for fault tests: crash, raise or delay at a step of the data path.

Off in production and free: `hit(name)` is one truthiness check of an empty dict.
Tests turn failpoints on for a process through the environment variable
`EDGEMQ_FAILPOINTS`, read once at import:

    EDGEMQ_FAILPOINTS="delivery.before_manifest=crash@3;wal.before_fsync=delay:0.2"

Each entry is `<name>=<action>[@<n>]`: the action fires on the n-th hit of that name
(1-based, default 1) and on no other. Actions: `crash` (os._exit(137): like kill -9, no
cleanup, no flush), `raise` (FailpointError, an OSError so I/O error paths handle it),
`delay:<seconds>` (time.sleep — the steps are on worker threads or deliberately block).
`EDGEMQ_FAILPOINTS_SEED` is recorded in the log line a fired failpoint writes, so a
failing run names the schedule that produced it.

The names are listed in `NAMES`; `hit` with an unknown name is a programming error.
"""

from __future__ import annotations

import os
import sys
import threading
import time

NAMES = frozenset(
    {
        "wal.before_fsync",  # batch written to the page cache, fdatasync not yet called
        "wal.after_fsync",  # fdatasync returned, acknowledgements not yet posted
        "wal.mid_seal",  # segment renamed to .wal, directory not yet fsynced
        "delivery.after_build",  # artifacts built locally, nothing uploaded
        "delivery.mid_upload",  # after the first artifact upload
        "delivery.before_manifest",  # every artifact stored, manifest not written
        "delivery.after_manifest",  # manifest stored, commit report not queued
        "outbox.after_ack",  # control plane acknowledged, local segment not deleted
        "outbox.mid_delete",  # segment deleted, outbox file not removed
    }
)
ENV = "EDGEMQ_FAILPOINTS"


class FailpointError(OSError):
    """Raised by a `raise` failpoint."""


def _parse(spec: str) -> dict[str, tuple[str, int]]:
    active: dict[str, tuple[str, int]] = {}
    for entry in filter(None, (e.strip() for e in spec.split(";"))):
        name, _, action = entry.partition("=")
        nth = 1
        if "@" in action:
            action, _, count = action.partition("@")
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"{ENV}: the hit count of {name} must be a positive integer")
            nth = int(count)
        if name not in NAMES:
            raise ValueError(f"{ENV}: unknown failpoint {name!r}")
        if action not in ("crash", "raise") and not action.startswith("delay:"):
            raise ValueError(f"{ENV}: unknown action {action!r} for {name}")
        active[name] = (action, nth)
    return active


_ACTIVE = _parse(os.environ.get(ENV, ""))
_COUNTS: dict[str, int] = {}
_LOCK = threading.Lock()


def hit(name: str) -> None:
    """Mark reaching step `name`; fires its action when configured for this hit."""
    if not _ACTIVE:
        return
    assert name in NAMES, name
    planned = _ACTIVE.get(name)
    if planned is None:
        return
    with _LOCK:
        count = _COUNTS[name] = _COUNTS.get(name, 0) + 1
    action, nth = planned
    if count != nth:
        return
    seed = os.environ.get("EDGEMQ_FAILPOINTS_SEED", "-")
    sys.stderr.write(f"failpoint {name} fired: {action} (hit {count}, seed {seed})\n")
    sys.stderr.flush()
    if action == "crash":
        os._exit(137)
    if action == "raise":
        raise FailpointError(f"failpoint {name}")
    time.sleep(float(action.split(":", 1)[1]))


def configure(spec: str) -> None:
    """Replace the active failpoints (tests in one process)."""
    global _ACTIVE
    with _LOCK:
        _ACTIVE = _parse(spec)
        _COUNTS.clear()
