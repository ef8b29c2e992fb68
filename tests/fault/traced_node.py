"""`python -m edgemq node` as a child process whose command can be prefixed (strace,
eatmydata), for tests/fault/test_disk.py and test_power.py. Built on
tests/integration/ingest/node_process.py (options through the `EDGEMQ_*` environment,
a log file instead of pipes); the log can be moved off the data directory's file
system, and `kill` signals the node itself, not a tracer in front of it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

from tests.integration.ingest.node_process import ROOT, NodeProcess


class Node(NodeProcess):
    """A NodeProcess whose command can be prefixed (strace) and whose log can live
    off the data directory's file system."""

    def __init__(self, *, log_path: Path | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if log_path is not None:
            self.log_path = log_path
        self.prefix: list[str] = []
        self._traced = False

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts} {' '.join(self.prefix)}\n".encode())
            log.flush()
            self._traced = bool(self.prefix) and self.prefix[0] == "strace"
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "edgemq", "node"],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def node_pid(self) -> int:
        """The node's pid: the child itself, or the tracee of a prefixing strace."""
        assert self.proc is not None
        if not self._traced:
            return self.proc.pid
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        pids = children.read_text().split()
        assert len(pids) == 1, f"strace has children {pids}"
        return int(pids[0])

    async def kill(self) -> int:
        """SIGKILL the node (not a tracer in front of it) and reap."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.kill(self.node_pid(), signal.SIGKILL)
        return await self._wait(30.0)

    async def terminate(self, *, timeout_s: float = 60.0) -> int:
        """SIGTERM the node (a tracer would only detach) and wait for the exit code."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.kill(self.node_pid(), signal.SIGTERM)
        return await self._wait(timeout_s)

    async def readyz(self, session: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
        async with session.get(self.url + "/readyz", timeout=aiohttp.ClientTimeout(total=5)) as r:
            return r.status, await r.json()
