"""`edgemq up` as a user runs it: a real process on free ports, bootstrap.json, the
printed quickstart (send NDJSON, find raw and view Parquet, query it with DuckDB),
SIGTERM draining and exiting 0, and a second start that reuses the account, key and
data."""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb

from tests.support.up_process import spawn_up

ROOT = Path(__file__).resolve().parents[3]
BUCKET = "edgemq-local"
START_TIMEOUT_S = 60.0
PARQUET_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class Up:
    """One `edgemq up` process; its output is collected by a thread."""

    def __init__(self, data_dir: Path) -> None:
        self.proc, self.ports = spawn_up(data_dir, stdout=subprocess.PIPE, text=True)
        self._lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def wait_for_output(self, marker: str, timeout_s: float = START_TIMEOUT_S) -> str:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not any(marker in line for line in self._lines):
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(
                        f"no {marker!r} from edgemq up (exit {self.proc.poll()}):\n"
                        + "".join(self._lines)
                    )
                self._changed.wait(min(left, 0.5))
            return "".join(self._lines)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=STOP_TIMEOUT_S)
        self._reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._reader.join(timeout=5)

    def close(self) -> None:
        self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _request(url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    req = urllib.request.Request(url, data=body, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def _admin_token(boot: dict[str, Any]) -> str:
    answer = _request(
        f"{boot['control_url']}/v1/token/exchange",
        json.dumps({"api_key": boot["api_key"], "scope": "admin"}).encode(),
        {"Content-Type": "application/json"},
    )
    return str(answer["access_token"])


def _api(boot: dict[str, Any], path: str) -> Any:
    return _request(
        f"{boot['control_url']}{path}", headers={"Authorization": f"Bearer {_admin_token(boot)}"}
    )


def _send(boot: dict[str, Any], lines: list[str]) -> dict[str, Any]:
    """The printed curl, with urllib."""
    answer: dict[str, Any] = _request(
        f"{boot['ingest_url']}/ingest/{boot['endpoint_id']}",
        ("\n".join(lines) + "\n").encode(),
        {"X-API-Key": boot["api_key"], "Content-Type": "application/x-ndjson"},
    )
    return answer


def _poll(predicate: Callable[[], Any], what: str, timeout_s: float = PARQUET_TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)


def _raw_glob(boot: dict[str, Any]) -> str:
    return f"{boot['output_dir']}/{BUCKET}/loc/{boot['endpoint_id']}/parquet/dt=*/*.parquet"


def _view_glob(boot: dict[str, Any]) -> str:
    return f"{boot['output_dir']}/{BUCKET}/views/demo_events/v1/*.parquet"


def _query(sql: str) -> list[tuple[Any, ...]]:
    with duckdb.connect() as db:
        return db.sql(sql).fetchall()


def _raw_payloads(boot: dict[str, Any]) -> list[str]:
    if not glob.glob(_raw_glob(boot)):
        return []
    return [r[0] for r in _query(f"SELECT payload FROM read_parquet('{_raw_glob(boot)}')")]


def _printed_block(output: str, title: str) -> list[str]:
    """The indented lines printed under `title`."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    block = []
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        block.append(line.strip())
    return block


EVENTS = [
    '{"event":"signup","user_id":"u10","value":3.5}',
    '{"event":"click","user_id":"u11","value":7}',
    '{"event":"heartbeat","user_id":"u12"}',
    '{"event":"buy","user_id":"u13","value":"lots"}',
]


def test_up_takes_events_writes_raw_and_view_parquet_and_a_second_start_reuses_it_all(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "edgemq-data"
    first = Up(data_dir)
    try:
        output = first.wait_for_output("Ctrl-C")
        boot_path = data_dir / "bootstrap.json"
        boot = json.loads(boot_path.read_text())
        assert stat.S_IMODE(os.stat(boot_path).st_mode) == 0o600
        assert set(boot) == {
            "account_id",
            "api_key",
            "node_key",
            "control_url",
            "ingest_url",
            "mqtt_url",
            "endpoint_id",
            "destination_id",
            "view_id",
            "output_dir",
        }
        assert boot["ingest_url"] == f"http://127.0.0.1:{first.ports['ingest']}"
        assert boot["control_url"] == f"http://127.0.0.1:{first.ports['control']}"
        assert boot["mqtt_url"] == f"mqtt://127.0.0.1:{first.ports['mqtt']}"
        assert output.count(boot["api_key"]) == 1, "the key is shown once"
        assert boot["node_key"] not in output
        # The next steps name the curl and the DuckDB query for this endpoint.
        send = _printed_block(output, "send events")
        assert any(
            line.startswith("curl") and f"{boot['ingest_url']}/ingest/{boot['endpoint_id']}" in line
            for line in send
        ), send
        (query,) = _printed_block(output, "query it with DuckDB")
        assert "duckdb" in query
        assert boot["output_dir"] in query

        endpoint = _api(boot, f"/v1/endpoints/{boot['endpoint_id']}")
        assert endpoint["destination_status"] == "valid"
        assert "parquet_views" in endpoint["output_formats"]

        answer = _send(boot, EVENTS)
        assert (answer["accepted"], answer["bytes"]) == (
            len(EVENTS),
            sum(len(e.encode()) for e in EVENTS),
        )
        sent = list(EVENTS)
        if shutil.which("curl") and shutil.which("python3"):
            # The printed commands, run as printed.
            script = "\n".join(send)
            done = subprocess.run(
                ["bash", "-c", script], capture_output=True, text=True, timeout=60, check=True
            )
            assert json.loads(done.stdout)["accepted"] == 2, done
            sent += re.findall(r"'(\{[^']*\})'", send[1])

        raw = _poll(lambda: sorted(_raw_payloads(boot)) == sorted(sent), "the raw Parquet")
        assert raw
        view_rows = _poll(
            lambda: (
                glob.glob(_view_glob(boot))
                and _query(
                    f"SELECT event, user_id, value FROM read_parquet('{_view_glob(boot)}') "
                    "ORDER BY user_id"
                )
            ),
            "the view Parquet",
        )
        assert ("signup", "u10", 3.5) in view_rows
        assert ("click", "u11", 7.0) in view_rows
        assert not [r for r in view_rows if r[0] in ("heartbeat", "buy")]
        shown = subprocess.run(
            ["bash", "-c", query], capture_output=True, text=True, timeout=60, check=True
        )
        assert "u10" in shown.stdout
        assert "signup" in shown.stdout

        assert first.terminate() == 0
        assert "draining" in first.output
    finally:
        first.close()
    files_before = sorted(str(p) for p in Path(boot["output_dir"]).rglob("*.parquet"))

    # A second start, on other ports: same account, key, endpoint and data.
    again = Up(data_dir)
    try:
        output = again.wait_for_output("Ctrl-C")
        assert "reusing" in output
        assert boot["api_key"] not in output
        reused = json.loads(boot_path.read_text())
        for name in ("account_id", "api_key", "endpoint_id", "destination_id", "view_id"):
            assert reused[name] == boot[name], name
        assert reused["ingest_url"] == f"http://127.0.0.1:{again.ports['ingest']}"
        assert reused["control_url"] == f"http://127.0.0.1:{again.ports['control']}"
        assert set(files_before) <= {str(p) for p in Path(boot["output_dir"]).rglob("*.parquet")}
        more = ['{"event":"signup","user_id":"u20","value":1}']
        assert _send(reused, more)["accepted"] == 1
        _poll(lambda: sorted(_raw_payloads(reused)) == sorted(sent + more), "the new raw Parquet")
        commits = _poll(
            lambda: (
                (items := _api(reused, f"/v1/endpoints/{boot['endpoint_id']}/commits")["items"])
                and sum(c["frames"] for c in items) == len(sent) + len(more)
                and items
            ),
            "the commits of both runs",
        )
        assert len({c["node_id"] for c in commits}) == 1, "the node keeps its id"
        assert again.terminate() == 0
    finally:
        again.close()
