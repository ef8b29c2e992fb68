"""EdgeMQ's own commands as child processes for fault tests: `edgemq control`,
`edgemq node` and `edgemq admin`, on 127.0.0.1.

    control = ControlChild(log_path=tmp / "control.log", database_url=url, port=free_port())
    control.start(); await control.wait_ready(session)
    control.pause(); control.resume()        # SIGSTOP / SIGCONT
    await control.kill(); control.start()    # SIGKILL, then again on the same port
    node = NodeChild(data_dir=tmp / "node", control_url=..., node_key=..., http_port=...)
    node.start(failpoints="delivery.mid_upload=crash@1")   # this start only
    await node.wait_exit(30)                 # 137: the failpoint crashed it

Output goes to a log file (no pipes to drain or close); `log_text()` / `log_tail()`
read it back for assertions. Options travel as command-line arguments (control, admin)
or through the `EDGEMQ_*` environment (node), which is scrubbed of inherited `EDGEMQ_*`
values first so a developer's shell cannot change a test. Everything blocking (waiting
for an exit) runs off the event loop. Every started child is in `LIVE` until reaped,
so a fixture can kill what a failed test left behind.

Test timings. The CLI exposes neither the control plane's `segment_bytes_min` (which
`edgemq up` lowers to 64 KiB) nor the node's delivery retry timings (`retry_base_s`,
`retry_cap_s`, `permanent_retry_s`: 0.5 s, 30 s and 60 s) and `control_timeout_s`.
A child given `overrides` runs `python -m tests.support.processes <command> …`
instead of `python -m edgemq <command> …`: the same `edgemq.cli.main` with the same
arguments and environment, except that the settings object handed to `serve` /
`run_node` gets those fields replaced (JSON in `EDGEMQ_TEST_OVERRIDES`). Nothing else
differs: argument parsing, logging, uvloop, signal handling and drain are the CLI's.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[2]
OVERRIDES_ENV = "EDGEMQ_TEST_OVERRIDES"
LIVE: set[subprocess.Popen[bytes]] = set()
"""Children started and not reaped yet (the safety net of tests/fault/conftest.py)."""


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ without EDGEMQ_* (AWS_* from the moto fixture stay), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEMQ_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def kill_leftovers() -> int:
    """SIGKILL and reap every child still alive (test teardown); how many there were."""
    killed = 0
    for proc in list(LIVE):
        if proc.poll() is None:
            proc.kill()
            killed += 1
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            continue
        LIVE.discard(proc)
    return killed


class Child:
    """One restartable child process writing to `log_path`."""

    name = "child"

    def __init__(self, *, log_path: Path, overrides: dict[str, Any] | None = None) -> None:
        self.log_path = log_path
        self.overrides = overrides
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.paused = False

    # -- what to run ----------------------------------------------------------------
    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return child_env()

    def _command(self) -> list[str]:
        module = "tests.support.processes" if self.overrides is not None else "edgemq"
        return [sys.executable, "-m", module, *self.argv()]

    # -- lifecycle ------------------------------------------------------------------
    def start(self, extra_env: dict[str, str] | None = None) -> None:
        assert not self.running, f"{self.name} already running"
        self.starts += 1
        self.paused = False
        env = {**self.env(), **(extra_env or {})}
        if self.overrides is not None:
            env[OVERRIDES_ENV] = json.dumps(self.overrides)
        with open(self.log_path, "ab") as log:
            log.write(f"--- start {self.starts} {' '.join(self._command()[1:])}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self._command(),
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        LIVE.add(self.proc)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def wait_exit(self, timeout_s: float) -> int:
        """The exit status once the child is gone (AssertionError after `timeout_s`)."""
        assert self.proc is not None
        proc = self.proc
        try:
            code = await asyncio.to_thread(proc.wait, timeout_s)
        except subprocess.TimeoutExpired as err:
            raise AssertionError(
                f"{self.name} did not exit within {timeout_s}s:\n{self.log_tail()}"
            ) from err
        LIVE.discard(proc)
        return code

    def _signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def kill(self) -> int:
        """SIGKILL (works on a paused child too) and reap: -9."""
        self._signal(signal.SIGKILL)
        self.paused = False
        return await self.wait_exit(30.0)

    async def terminate(self, *, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait for the exit code."""
        self._signal(signal.SIGTERM)
        return await self.wait_exit(timeout_s)

    def pause(self) -> None:
        """SIGSTOP: the process keeps its sockets but answers nothing."""
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self._signal(signal.SIGCONT)
        self.paused = False

    async def close(self) -> None:
        """Make sure the child is gone (teardown)."""
        if self.running:
            await self.kill()
        elif self.proc is not None:
            LIVE.discard(self.proc)

    # -- output ---------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_text()[-chars:] or "(no output)"

    def log_count(self, needle: str) -> int:
        return self.log_text().count(needle)

    async def _poll_ready(
        self, session: aiohttp.ClientSession, url: str, *, timeout_s: float
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                    f"{self.log_tail()}"
                )
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
                    await r.read()
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            if loop.time() > deadline:
                raise AssertionError(
                    f"{self.name} not ready after {timeout_s}s ({url}):\n{self.log_tail()}"
                )
            await asyncio.sleep(0.05)


class ControlChild(Child):
    """`edgemq control --database-url … --host 127.0.0.1 --port …`."""

    name = "control plane"

    def __init__(
        self,
        *,
        log_path: Path,
        database_url: str,
        port: int,
        overrides: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(log_path=log_path, overrides=overrides)
        self.database_url = database_url
        self.port = port
        self.url = f"http://127.0.0.1:{port}"

    def argv(self) -> list[str]:
        return [
            "--log-level",
            "WARNING",
            "control",
            "--database-url",
            self.database_url,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]

    async def wait_ready(self, session: aiohttp.ClientSession, *, timeout_s: float = 30.0) -> None:
        await self._poll_ready(session, self.url + "/healthz", timeout_s=timeout_s)


class NodeChild(Child):
    """`edgemq node`, configured through the EDGEMQ_* environment (the CLI contract), so
    a restart on the same data directory and port is `start()` again. The log goes to
    `<data_dir>.log` next to the data directory unless `log_path` says otherwise."""

    name = "node"

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
        unshipped_bytes_max: int | None = None,
        overrides: dict[str, Any] | None = None,
        env: dict[str, str] | None = None,
        mqtt_port: int = 0,
        log_path: Path | None = None,
    ) -> None:
        super().__init__(
            log_path=log_path or data_dir.parent / f"{data_dir.name}.log", overrides=overrides
        )
        self.data_dir = data_dir
        self.http_port = http_port
        self.mqtt_port = mqtt_port
        self.url = f"http://127.0.0.1:{http_port}"
        self.options = {
            "EDGEMQ_CONTROL_URL": control_url,
            "EDGEMQ_NODE_KEY": node_key,
            "EDGEMQ_REGION": region,
            "EDGEMQ_DATA_DIR": str(data_dir),
            "EDGEMQ_HOST": "127.0.0.1",
            "EDGEMQ_HTTP_PORT": str(http_port),
            "EDGEMQ_MQTT_PORT": str(mqtt_port),  # 0: any free port, never the shared 1883
            "EDGEMQ_SEGMENT_BYTES_MIN": str(segment_bytes_min),
            "EDGEMQ_DRAIN_DEADLINE_S": str(drain_deadline_s),
            "EDGEMQ_DISK_RESERVE_BYTES": str(16 * 1024 * 1024),
            "EDGEMQ_LOG_LEVEL": "WARNING",
            **(
                {"EDGEMQ_UNSHIPPED_BYTES_MAX": str(unshipped_bytes_max)}
                if unshipped_bytes_max is not None
                else {}
            ),
            **(env or {}),
        }
        """The EDGEMQ_* options of every start (a change applies from the next one)."""

    def argv(self) -> list[str]:
        return ["node"]

    def env(self) -> dict[str, str]:
        return child_env(self.options)

    def start(
        self,
        extra_env: dict[str, str] | None = None,
        *,
        failpoints: str | None = None,
        failpoints_seed: int | None = None,
    ) -> None:
        """Start; `failpoints` (EDGEMQ_FAILPOINTS syntax) apply to this start only."""
        extra = dict(extra_env or {})
        if failpoints:
            extra["EDGEMQ_FAILPOINTS"] = failpoints
            if failpoints_seed is not None:
                extra["EDGEMQ_FAILPOINTS_SEED"] = str(failpoints_seed)
        super().start(extra)

    async def wait_ready(self, session: aiohttp.ClientSession, *, timeout_s: float = 30.0) -> None:
        """Poll /readyz until 200 (the process dying first is an error)."""
        await self._poll_ready(session, self.url + "/readyz", timeout_s=timeout_s)


def run_cli(*args: str, text: bool = True) -> subprocess.CompletedProcess[Any]:
    """`edgemq ARGS…` as a child process from the repository root (blocking; wrap in
    `asyncio.to_thread` from a test's loop): its exit code, stdout and stderr (str, or
    bytes when not `text`)."""
    return subprocess.run(
        [sys.executable, "-m", "edgemq", *args],
        cwd=ROOT,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=text,
        timeout=120,
        check=False,
    )


def _run_admin(database_url: str, args: list[str]) -> dict[str, Any]:
    done = run_cli("admin", "--database-url", database_url, *args)
    if done.returncode != 0:
        raise AssertionError(
            f"edgemq admin {' '.join(args)} exited {done.returncode}: {done.stderr}"
        )
    value = json.loads(done.stdout)
    assert isinstance(value, dict)
    return value


async def admin(database_url: str, *args: str) -> dict[str, Any]:
    """`edgemq admin --database-url URL ARGS…` (off the loop); its JSON answer."""
    return await asyncio.to_thread(_run_admin, database_url, list(args))


# ------------------------------------------------------------------- the launcher
def _launch(argv: list[str]) -> None:
    """`edgemq.cli.main(argv)` with the settings fields of EDGEMQ_TEST_OVERRIDES
    replaced: {"control": {ControlSettings fields}, "node": {NodeSettings fields},
    "delivery": {DeliverySettings fields}}."""
    import dataclasses

    overrides = json.loads(os.environ.get(OVERRIDES_ENV) or "{}")
    from control import server
    from control.services.common import ControlSettings
    from edgemq import cli, node_cmd

    serve, run_node = server.serve, node_cmd.run_node

    async def serve_with(database_url: str, host: str, port: int, *args: Any, **kw: Any) -> None:
        settings = ControlSettings(
            public_url=f"http://{host}:{port}", **overrides.get("control", {})
        )
        await serve(database_url, host, port, settings, **kw)

    async def run_node_with(settings: Any, **kw: Any) -> int:
        delivery = dataclasses.replace(settings.delivery, **overrides.get("delivery", {}))
        settings = dataclasses.replace(settings, delivery=delivery, **overrides.get("node", {}))
        return await run_node(settings, **kw)

    server.serve = serve_with  # type: ignore[assignment]
    node_cmd.run_node = run_node_with  # type: ignore[assignment]
    cli.main(argv)


if __name__ == "__main__":
    _launch(sys.argv[1:])
