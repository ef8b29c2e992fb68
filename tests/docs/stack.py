"""One real `edgemq up` process for the doc examples: free ports, a fresh data
directory `edgemq-data` inside a working directory (the path the quickstart uses), and
a first delivery with a DLQ row so formats/SQL examples have committed output to read.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.support.up_process import spawn_up

START_TIMEOUT_S = 60.0
DELIVERY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SEED_EVENTS = [
    '{"event":"signup","user_id":"u1","value":1.5}',
    '{"event":"click","user_id":"u2","value":2}',
    '{"event":"heartbeat","user_id":"u3"}',
    '{"event":"buy","user_id":"u4","value":"lots"}',
]
"""Accepted, accepted, dropped by the demo view's filter, DLQ (cast_failures: dlq)."""


class Stack:
    """`python -m edgemq up` in `workdir` with data in `workdir/edgemq-data`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "edgemq-data"
        # `.venv/bin/python` in the docs: the interpreter running the tests.
        os.symlink(sys.prefix, workdir / ".venv")
        self.log_path = workdir / "edgemq-up.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc, self.ports = spawn_up(self.data_dir, stdout=self._log, env=self.env())
        self.boot: dict[str, Any] = {}
        self.doc_env: dict[str, str] | None = None
        """The environment the docs' setup block exports (tests/docs/runner.py)."""

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEMQ_")}
        env["PATH"] = f"{Path(sys.prefix) / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_started(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while "Ctrl-C" not in self.log():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"edgemq up did not start:\n{self.log()}")
            time.sleep(0.1)
        self.boot = json.loads((self.data_dir / "bootstrap.json").read_text())

    def request(self, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        req = urllib.request.Request(url, data=data, headers=hdrs)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)

    def token(self, scope: str = "admin") -> str:
        answer = self.request(
            f"{self.boot['control_url']}/v1/token/exchange",
            {"api_key": self.boot["api_key"], "scope": scope},
        )
        return str(answer["access_token"])

    def api(self, path: str, body: Any = None) -> Any:
        return self.request(
            f"{self.boot['control_url']}{path}",
            body,
            {"Authorization": f"Bearer {self.token()}"},
        )

    def bucket_dir(self) -> Path:
        return Path(self.boot["output_dir"]) / "edgemq-local"

    def manifests(self) -> list[Path]:
        pattern = f"{self.bucket_dir()}/loc/{self.boot['endpoint_id']}/commits/*/*/*.json"
        return sorted(Path(p) for p in glob.glob(pattern))

    def wait_active(self) -> None:
        """The demo endpoint is `active` once the node's heartbeat reports the config
        epoch it applied (every 5 s): the state a user finds a few seconds after start."""
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while self.api(f"/v1/endpoints/{self.boot['endpoint_id']}")["status"] != "active":
            if time.monotonic() > deadline:
                raise AssertionError(f"the demo endpoint is not active:\n{self.log()}")
            time.sleep(0.2)

    def seed(self) -> Path:
        """Send SEED_EVENTS and wait for the manifest that has a DLQ artifact."""
        answer = self.request(
            f"{self.boot['ingest_url']}/ingest/{self.boot['endpoint_id']}",
            ("\n".join(SEED_EVENTS) + "\n").encode(),
            {"X-API-Key": self.boot["api_key"], "Content-Type": "application/x-ndjson"},
        )
        assert answer["accepted"] == len(SEED_EVENTS), answer
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while True:
            for path in self.manifests():
                kinds = {a["kind"] for a in json.loads(path.read_text())["artifacts"]}
                if "dlq" in kinds:
                    return path
            if time.monotonic() > deadline:
                raise AssertionError(f"no manifest with a DLQ artifact:\n{self.log()}")
            time.sleep(0.2)

    def stop(self) -> int:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    return self.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=10)
            return self.proc.returncode
        finally:
            self._log.close()


def start(workdir: Path) -> Stack:
    stack = Stack(workdir)
    try:
        stack.wait_started()
    except BaseException:
        stack.stop()
        raise
    return stack
