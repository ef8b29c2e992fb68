"""`edgemq bench`: run every benchmark script in benchmarks/ with bounded time, collect
each one's JSON, write benchmarks/results/<date>.json (machine facts + one entry per
target) and the Markdown table of targets vs. measured ratios into benchmarks/README.md
(between `<!-- bench-table:start -->` and `<!-- bench-table:end -->`).

Each script runs as its own process with a per-profile argument list and a timeout; a
script that fails or times out is recorded as such and the others still run. On a
timeout the script gets SIGINT (its `finally` blocks stop its servers and remove its
temp dir), then SIGKILL with every process it started, after a grace period."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .bench_report import TARGETS, Row, render_block, render_table, replace_block, rows_from
from .options import add_list_option, add_option, choice

GRACE_S = 60.0
PROFILES = ("quick", "full", "smoke")
PACKAGES = ("aiohttp", "uvloop", "msgspec", "duckdb", "pyarrow", "zstandard", "amqtt", "psycopg")


@dataclass(frozen=True, slots=True)
class Spec:
    """One benchmark script: the ids of the targets it reports (bench_report.TARGETS
    names them and holds their thresholds) and its arguments per profile."""

    script: str
    expected: tuple[str, ...]
    args: dict[str, list[str]]
    timeout_s: dict[str, float]
    ids: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        unknown = set(self.expected) - set(TARGETS)
        if unknown:
            raise ValueError(f"{self.script}: targets {sorted(unknown)} are not in TARGETS")
        object.__setattr__(self, "ids", frozenset(self.expected))


SPECS: tuple[Spec, ...] = (
    Spec(
        "wal_append",
        ("W1",),
        {
            "smoke": "--rounds 1 --mib 2 --segment-mib 1 --producers 8".split(),
            "quick": "--rounds 5 --mib 64".split(),
            "full": [],
        },
        {"smoke": 60, "quick": 240, "full": 900},
    ),
    Spec(
        "view_materialize",
        ("V1",),
        {"smoke": "--rounds 1 --segment-mib 1".split(), "quick": "--rounds 5".split(), "full": []},
        {"smoke": 60, "quick": 240, "full": 900},
    ),
    Spec(
        "control_api",
        ("C1", "C2"),
        {
            "smoke": "--stores sqlite --rounds 1 --endpoints 100 --exchange-seconds 1 --list-requests 20 --status-requests 2".split(),
            "quick": "--rounds 2 --exchange-seconds 3 --list-requests 300 --status-requests 5".split(),
            "full": [],
        },
        {"smoke": 120, "quick": 420, "full": 1800},
    ),
    Spec(
        "http_ingest",
        ("H1", "H2", "E1"),
        {
            "smoke": "--only h2 --rounds 1 --h2-requests 500 --warmup-s 0.2".split(),
            "quick": "--rounds 2 --h1-mib 256 --h2-requests 20000 --e1-seconds 60 --e1-drain-timeout 240".split(),
            "full": [],
        },
        {"smoke": 120, "quick": 480, "full": 2400},
    ),
    Spec(
        "mqtt_ingest",
        ("M0", "M1", "M2", "R1"),
        {
            "smoke": "--only m1 --rounds 1 --messages 5000".split(),
            "quick": "--rounds 2 --messages 200000 --qos0-messages 800000 --amqtt-messages 5000".split(),
            "full": [],
        },
        {"smoke": 120, "quick": 480, "full": 2400},
    ),
    Spec(
        "restart_recovery",
        ("R2",),
        {
            "smoke": "--wal-mib 4 --rounds 1".split(),
            "quick": "--wal-mib 256 --rounds 5".split(),
            "full": [],
        },
        {"smoke": 120, "quick": 300, "full": 1200},
    ),
)


def _descendants(pid: int) -> list[int]:
    """Every live process below `pid` (its servers run in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def run_script(argv: list[str], cwd: Path, log_path: Path, timeout_s: float) -> str:
    """Run one benchmark; "ok", "failed (exit N)" or "timeout after N s"."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            below = _descendants(proc.pid)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(30)
            for pid in below:  # our own children's processes, by id
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            return f"timeout after {timeout_s:.0f} s"
    return "ok" if code == 0 else f"failed (exit {code})"


def _loadavg() -> str:
    with contextlib.suppress(OSError), open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])
    return "unknown"


def _git(repo: Path, *args: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10)
        if out.returncode == 0:
            return out.stdout.strip()
    return ""


def machine_facts(repo: Path) -> dict[str, Any]:
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": versions,
        "git_commit": _git(repo, "rev-parse", "HEAD") or "unknown",
        "git_dirty": bool(_git(repo, "status", "--porcelain", "--untracked-files=no")),
        "loadavg_start": _loadavg(),
    }


def default_bench_dir() -> Path:
    here = Path(__file__).resolve().parent.parent / "benchmarks"
    return here if here.is_dir() else Path.cwd() / "benchmarks"


def select(only: list[str] | None) -> list[Spec]:
    if not only:
        return list(SPECS)
    want = {x.lower() for x in only}
    chosen = [s for s in SPECS if s.script in want or {i.lower() for i in s.ids} & want]
    unknown = want - {s.script for s in SPECS} - {i.lower() for s in SPECS for i in s.ids}
    if unknown:
        raise SystemExit(f"edgemq bench: unknown benchmark(s): {', '.join(sorted(unknown))}")
    return chosen


def run(args: argparse.Namespace) -> int:
    bench_dir = Path(args.benchmarks_dir or default_bench_dir()).resolve()
    repo = bench_dir.parent
    specs = select(args.only)
    now = dt.datetime.now(dt.UTC)
    date = now.strftime("%Y-%m-%d")
    results_dir = Path(args.results_dir or bench_dir / "results").resolve()
    raw_dir = results_dir / f"{date}-raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    output = Path(
        args.output or results_dir / (f"{date}.json" if not args.only else f"{date}-partial.json")
    )
    readme = args.readme or (None if args.only else str(bench_dir / "README.md"))
    machine = machine_facts(repo)
    scale = args.timeout_scale
    rows: list[Row] = []
    entries: list[dict[str, Any]] = []
    t_all = time.monotonic()
    print(
        f"edgemq bench --{args.profile}: {len(specs)} scripts; load average {machine['loadavg_start']}"
    )
    for n, spec in enumerate(specs, 1):
        json_path = raw_dir / f"{spec.script}.json"
        json_path.unlink(missing_ok=True)
        argv = [sys.executable, str(bench_dir / f"{spec.script}.py"), *spec.args[args.profile]]
        argv += ["--json", str(json_path)]
        command = " ".join(["python", f"benchmarks/{spec.script}.py", *spec.args[args.profile]])
        timeout = spec.timeout_s[args.profile] * scale
        print(f"[{n}/{len(specs)}] {command}  (bound {timeout:.0f} s)", flush=True)
        load0, t0 = _loadavg(), time.monotonic()
        status = run_script(argv, repo, raw_dir / f"{spec.script}.log", timeout)
        duration = time.monotonic() - t0
        doc: Any = None
        try:
            doc = json.loads(json_path.read_text())
        except (OSError, ValueError) as err:
            if status == "ok":
                status = f"failed (no JSON: {err})"
        got = rows_from(
            spec.script, spec.expected, doc, status=status, command=command, duration_s=duration
        )
        rows += got
        entries.append(
            {
                "script": spec.script,
                "status": status,
                "command": command,
                "duration_s": round(duration, 1),
                "timeout_s": timeout,
                "loadavg_start": load0,
                "loadavg_end": _loadavg(),
                "log": os.path.relpath(raw_dir / f"{spec.script}.log", repo),
            }
        )
        print(
            f"    {status} in {duration:.0f} s: "
            + ", ".join(
                f"{r.id} {'met' if r.met else ('NOT met' if r.status == 'ok' else r.status)}"
                for r in got
            ),
            flush=True,
        )
    machine["loadavg_end"] = _loadavg()
    report: dict[str, Any] = {
        "date": date,
        "started_utc": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "profile": args.profile,
        "duration_s": round(time.monotonic() - t_all, 1),
        "machine": machine,
        "note": "shared machine: other work may run at the same time; see the load averages",
        "scripts": entries,
        "benchmarks": [r.as_json() for r in rows],
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print()
    print(render_table(rows))
    print(f"wrote {output}")
    if readme:
        path = Path(readme)
        text = path.read_text() if path.exists() else "# Benchmarks\n"
        path.write_text(replace_block(text, render_block(report, rows)))
        print(f"updated the table in {path}")
    return 0 if all(e["status"] == "ok" for e in entries) else 1


def add_bench_parser(commands: Any) -> None:
    """Register `edgemq bench` on the CLI's subparsers."""
    p = commands.add_parser(
        "bench",
        help="run every benchmark in benchmarks/ (bounded time) and write the report",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    profile = p.add_mutually_exclusive_group()
    # One variable for the three switches (like EDGEMQ_PROGRESS for `read`): the
    # --profile option is first, so its default (EDGEMQ_PROFILE or quick) is the dest's.
    add_option(
        profile,
        "--profile",
        default="quick",
        type=choice(*PROFILES),
        metavar="|".join(PROFILES),
        help="the settings of every script: --quick, --full or --smoke",
    )
    profile.add_argument(
        "--quick",
        dest="profile",
        action="store_const",
        const="quick",
        help="short runs: about 10-15 min on 2 vCPUs (the default)",
    )
    profile.add_argument(
        "--full",
        dest="profile",
        action="store_const",
        const="full",
        help="every script with its default settings (about 1-1.5 h)",
    )
    profile.add_argument(
        "--smoke",
        dest="profile",
        action="store_const",
        const="smoke",
        help="tiny settings (seconds per script): only checks that it runs",
    )
    p.set_defaults(func=run)
    add_list_option(
        p,
        "--only",
        metavar="NAME",
        help="a script (wal_append, http_ingest, …) or an id (W1, H1, …)",
    )
    add_option(p, "--timeout-scale", default=1.0, type=float, help="multiplies every bound")
    add_option(
        p,
        "--benchmarks-dir",
        default="",
        shown_default="the benchmarks/ directory of this checkout",
        help="the benchmarks/ directory",
    )
    add_option(
        p,
        "--results-dir",
        default="",
        shown_default="BENCHMARKS_DIR/results",
        help="where the report and the scripts' raw output go",
    )
    add_option(
        p,
        "--output",
        default="",
        shown_default="RESULTS_DIR/<date>.json",
        help="report JSON",
    )
    add_option(
        p,
        "--readme",
        default="",
        shown_default="BENCHMARKS_DIR/README.md, none with --only",
        help="Markdown file to put the table in",
    )
