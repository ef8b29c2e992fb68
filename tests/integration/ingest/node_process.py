"""`python -m edgemq node` as a child process, for kill and drain tests.

Options go through the `EDGEMQ_*` environment (the CLI contract), so a restart on the
same data directory and port is `start()` again. Output goes to a log file in the data
directory's parent (no pipes to drain or close); `log_tail()` shows it in assertion
messages. Everything blocking (waiting for exit) runs off the event loop.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[3]


class NodeProcess:
    def __init__(
        self,
        *,
        data_dir: Path,
        control_url: str,
        node_key: str,
        http_port: int,
        region: str = "loc",
        segment_bytes_min: int = 16 * 1024,
        drain_deadline_s: float = 20.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.http_port = http_port
        self.url = f"http://127.0.0.1:{http_port}"
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.env = {
            **os.environ,
            "EDGEMQ_CONTROL_URL": control_url,
            "EDGEMQ_NODE_KEY": node_key,
            "EDGEMQ_REGION": region,
            "EDGEMQ_DATA_DIR": str(data_dir),
            "EDGEMQ_HOST": "127.0.0.1",
            "EDGEMQ_HTTP_PORT": str(http_port),
            "EDGEMQ_MQTT_PORT": "0",  # any free port: never collide on 1883
            "EDGEMQ_SEGMENT_BYTES_MIN": str(segment_bytes_min),
            "EDGEMQ_DRAIN_DEADLINE_S": str(drain_deadline_s),
            "EDGEMQ_DISK_RESERVE_BYTES": str(16 * 1024 * 1024),
            "EDGEMQ_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "edgemq", "node"],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_ready(self, session: aiohttp.ClientSession, *, timeout_s: float = 30.0) -> None:
        """Poll /readyz until 200 (the process dying first is an error)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"node exited with {self.proc.returncode} before ready:\n{self.log_tail()}"
                )
            try:
                async with session.get(
                    self.url + "/readyz", timeout=aiohttp.ClientTimeout(total=2)
                ) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if loop.time() > deadline:
                raise AssertionError(f"node not ready after {timeout_s}s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    async def _wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        proc = self.proc
        try:
            return await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired as err:
            raise AssertionError(
                f"node did not exit within {timeout_s}s:\n{self.log_tail()}"
            ) from err

    async def kill(self) -> int:
        """SIGKILL and reap; the exit status (-9)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        return await self._wait(30.0)

    async def terminate(self, *, timeout_s: float = 60.0) -> int:
        """SIGTERM (drain) and wait for the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await self._wait(timeout_s)

    async def close(self) -> None:
        """Make sure the child is gone (test teardown)."""
        if self.running:
            await self.kill()

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return "(no log)"
