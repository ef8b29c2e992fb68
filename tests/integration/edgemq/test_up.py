"""`edgemq up` as a user runs it: a real process, bootstrap.json, the API answering,
SIGTERM stopping it, a second start reusing the same account and key."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(data_dir: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgemq",
            "up",
            "--data-dir",
            str(data_dir),
            "--control-port",
            str(port),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_listening(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "control plane listening" in line:
            return "".join(seen)
    raise AssertionError("edgemq up exited early:\n" + "".join(seen))


def _post(url: str, body: dict[str, str]) -> dict[str, str]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)  # type: ignore[no-any-return]


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=30)
    assert proc.stdout is not None
    proc.stdout.close()
    return code


def test_up_bootstraps_once_serves_the_api_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    proc = _start(tmp_path, port)
    try:
        output = _wait_listening(proc)
    except BaseException:
        proc.kill()
        raise
    boot_path = tmp_path / "bootstrap.json"
    boot = json.loads(boot_path.read_text())
    assert stat.S_IMODE(os.stat(boot_path).st_mode) == 0o600
    assert set(boot) == {
        "account_id",
        "api_key",
        "control_url",
        "ingest_url",
        "mqtt_url",
        "endpoint_id",
        "destination_id",
        "output_dir",
    }
    assert boot["api_key"] in output  # shown once, on first start
    token = _post(
        f"{boot['control_url']}/v1/token/exchange", {"api_key": boot["api_key"], "scope": "admin"}
    )["access_token"]
    req = urllib.request.Request(
        f"{boot['control_url']}/v1/endpoints/{boot['endpoint_id']}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        endpoint = json.load(resp)
    assert endpoint["destination_status"] == "valid"
    assert "parquet_views" in endpoint["output_formats"]
    assert _stop(proc) == 0

    again = _start(tmp_path, port)
    try:
        output = _wait_listening(again)
    except BaseException:
        again.kill()
        raise
    assert "reusing" in output
    assert boot["api_key"] not in output
    assert json.loads(boot_path.read_text()) == boot
    assert _stop(again) == 0
