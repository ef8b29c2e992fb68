"""`edgemq up` as a child process on free ports, as a user starts it: the one launcher
of tests/integration/edgemq/test_up.py and the doc examples (tests/docs/stack.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from tests.support.processes import ROOT


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (all bound at once, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def spawn_up(
    data_dir: Path,
    *,
    stdout: IO[Any] | int,
    env: Mapping[str, str] | None = None,
    text: bool = False,
) -> tuple[subprocess.Popen[Any], dict[str, int]]:
    """Start `python -m edgemq up --data-dir DATA_DIR` on three free ports (from the
    repository root, stderr into `stdout`); the process and its ports by role
    (`control`, `ingest`, `mqtt`)."""
    control, ingest, mqtt = free_ports(3)
    ports = {"control": control, "ingest": ingest, "mqtt": mqtt}
    argv = [sys.executable, "-m", "edgemq", "up", "--data-dir", str(data_dir)]
    for role, port in ports.items():
        argv += [f"--{role}-port", str(port)]
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=None if env is None else dict(env),
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=text,
    )
    return proc, ports
