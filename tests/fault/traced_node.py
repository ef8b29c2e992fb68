"""`python -m edgemq node` as a child process whose command can be prefixed (strace,
eatmydata), for tests/fault/test_disk.py and test_power.py. Built on
tests/support/processes.py's NodeChild (options through the `EDGEMQ_*` environment,
a log file instead of pipes); the log can be moved off the data directory's file
system (`log_path`), and `kill` signals the node itself, not a tracer in front of it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.processes import NodeChild


class Node(NodeChild):
    """A NodeChild whose command can be prefixed (strace)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prefix: list[str] = []
        self._traced = False

    def _command(self) -> list[str]:
        return [*self.prefix, *super()._command()]

    def start(self, extra_env: dict[str, str] | None = None, **kwargs: Any) -> None:
        self._traced = bool(self.prefix) and self.prefix[0] == "strace"
        super().start(extra_env, **kwargs)

    def node_pid(self) -> int:
        """The node's pid: the child itself, or the tracee of a prefixing strace."""
        assert self.proc is not None
        if not self._traced:
            return self.proc.pid
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        pids = children.read_text().split()
        assert len(pids) == 1, f"strace has children {pids}"
        return int(pids[0])

    def _signal_node(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, FileNotFoundError):
                os.kill(self.node_pid(), sig)

    async def kill(self) -> int:
        """SIGKILL the node (not a tracer in front of it) and reap."""
        self._signal_node(signal.SIGKILL)
        return await self.wait_exit(30.0)

    async def terminate(self, *, timeout_s: float = 60.0) -> int:
        """SIGTERM the node (a tracer would only detach) and wait for the exit code."""
        self._signal_node(signal.SIGTERM)
        return await self.wait_exit(timeout_s)

    async def readyz(self, session: aiohttp.ClientSession) -> tuple[int, dict[str, Any]]:
        async with session.get(self.url + "/readyz", timeout=aiohttp.ClientTimeout(total=5)) as r:
            return r.status, await r.json()
