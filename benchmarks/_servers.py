"""Shared by the benchmark scripts that run servers as their own processes
(`http_ingest.py`, `mqtt_ingest.py`, `restart_recovery.py`): starting a server with
optional CPU pinning (`taskset -c`), stopping it, and reading its CPU time and memory
from /proc; plus small file and formatting helpers. Only the standard library."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------- /proc
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fs_type(path: str) -> str:
    """File system type of the mount holding `path` (from /proc/mounts)."""
    path = os.path.realpath(path)
    best, kind = "", "unknown"
    with contextlib.suppress(OSError), open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if (
                len(parts) >= 3
                and (path == parts[1] or path.startswith(parts[1].rstrip("/") + "/"))
                and len(parts[1]) >= len(best)
            ):
                best, kind = parts[1], parts[2]
    return kind


def proc_user_sys_s(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process (all its threads), seconds; zeros when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds; 0 when it is gone."""
    return sum(proc_user_sys_s(pid))


def main_thread_cpu_s(pid: int) -> float:
    """utime + stime of the process's main thread (the event loop), seconds."""
    try:
        with open(f"/proc/{pid}/task/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_status_bytes(pid: int, key: str) -> int:
    """A `kB` field of /proc/PID/status (VmRSS, VmHWM), bytes; 0 when unknown."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def vm_hwm_bytes(pid: int) -> int:
    """Peak resident set size (VmHWM) of a process, bytes; 0 when unknown."""
    return proc_status_bytes(pid, "VmHWM")


def loadavg() -> str:
    with contextlib.suppress(OSError), open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
    return "unknown"


# --------------------------------------------------------------------- helpers
def fmt_k(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def write_json(path: str, doc: Any) -> None:
    """Atomically (temp file + rename)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def save_json(path: str | None, doc: Any) -> None:
    """`--json PATH`: write `doc` there (parent directories created); no path, nothing."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        write_json(path, doc)


@contextlib.contextmanager
def temp_root(parent: str | None, prefix: str, *, keep: bool = False) -> Iterator[str]:
    """A temp directory under `parent` (default: the current directory), removed at the
    end unless `keep` (then its path goes to stderr)."""
    root = tempfile.mkdtemp(prefix=prefix, dir=os.path.abspath(parent or os.getcwd()))
    try:
        yield root
    finally:
        if keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def read_json(path: str) -> Any:
    """The JSON document at `path`, None while it does not exist."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def loop_factory(use_uvloop: bool = True) -> Any:
    if not use_uvloop:
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def install_stop(loop: asyncio.AbstractEventLoop) -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (for `--serve` modes)."""
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


# ------------------------------------------------------------ server processes
@dataclass
class Server:
    """A server process started by `spawn`, its own session, output to `log_path`.
    `stop` signals it (`stop_signal`), kills it after `timeout`, closes the log and
    removes `data_dir` when set."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log_path: str
    log_file: Any
    http_port: int = 0
    data_dir: str | None = None
    stop_signal: int = signal.SIGTERM

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def base(self) -> str:
        """Base URL of its HTTP listener (`http_port`, else `port`)."""
        return f"http://127.0.0.1:{self.http_port or self.port}"

    def log_tail(self, n: int = 30) -> str:
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
        return ""

    def stop(self, timeout: float = 60.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(self.stop_signal)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log_file.close()
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def spawn(
    name: str,
    argv: list[str],
    *,
    cpu: int | None,
    workdir: str,
    port: int,
    env: dict[str, str] | None = None,
) -> Server:
    """Start `argv` in REPO as a new session, pinned to `cpu` with taskset when given;
    stdout and stderr go to `workdir/<name>-<port>.log`."""
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    log_path = os.path.join(workdir, f"{name}-{port}.log")
    log_file = open(log_path, "wb")  # noqa: SIM115 (closed in Server.stop)
    proc = subprocess.Popen(
        argv,
        cwd=REPO,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    return Server(name, proc, port, log_path, log_file)
