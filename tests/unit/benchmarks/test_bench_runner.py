"""`edgemq bench` end to end: the real W1 script at its smallest settings (so the
command cannot rot), and fake scripts that fail or hang (one bad benchmark is recorded
and the others still run). No timing assertions."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from edgemq.bench_report import END, START

REPO = Path(__file__).resolve().parents[3]


def _bench(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgemq", "bench", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_smoke_runs_the_real_wal_benchmark_and_writes_json_and_table(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# Benchmarks\n\n{START}\nold\n{END}\n\n## W1\nkept\n")
    out = tmp_path / "report.json"
    result = _bench(
        "--smoke",
        "--only",
        "W1",
        "--results-dir",
        str(tmp_path / "results"),
        "--output",
        str(out),
        "--readme",
        str(readme),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    assert report["profile"] == "smoke"
    assert report["machine"]["cpu_count"] >= 1
    assert report["machine"]["loadavg_start"]
    assert report["machine"]["packages"]["aiohttp"]
    [row] = report["benchmarks"]
    assert row["id"] == "W1"
    assert row["status"] == "ok"
    assert row["ratio"] > 0
    assert row["baseline"] > 0
    assert row["measured"] > 0
    assert row["met"] in (True, False)
    assert row["command"].startswith("python benchmarks/wal_append.py --rounds 1")
    text = readme.read_text()
    assert "old" not in text
    assert "| W1 | WAL append, durable acks |" in text
    assert text.endswith("## W1\nkept\n")
    assert "| W1 |" in result.stdout


FAKE_OK = """
import json, sys
path = sys.argv[sys.argv.index("--json") + 1]
doc = {"median": {"ratio_of_medians": 1.0, "baseline_mb_s": 10.0, "duckdb_mb_s": 10.0,
                  "wal_mb_s": 10.0, "edgemq_mb_s": 10.0, "wal_lat_p99_ms": 1.0}}
json.dump(doc, open(path, "w"))
"""


def test_a_failing_and_a_hanging_script_are_recorded_and_the_rest_still_runs(
    tmp_path: Path,
) -> None:
    bench_dir = tmp_path / "benchmarks"
    bench_dir.mkdir()
    (bench_dir / "wal_append.py").write_text("import sys\nprint('boom')\nsys.exit(3)\n")
    (bench_dir / "control_api.py").write_text("import time\ntime.sleep(600)\n")
    (bench_dir / "view_materialize.py").write_text(textwrap.dedent(FAKE_OK))
    out = tmp_path / "report.json"
    result = _bench(
        "--smoke",
        "--only",
        "wal_append",
        "--only",
        "control_api",
        "--only",
        "V1",
        "--timeout-scale",
        "0.02",  # control_api's 120 s smoke bound becomes 2.4 s
        "--benchmarks-dir",
        str(bench_dir),
        "--output",
        str(out),
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(out.read_text())
    status = {s["script"]: s["status"] for s in report["scripts"]}
    assert status == {
        "wal_append": "failed (exit 3)",
        "control_api": "timeout after 2 s",
        "view_materialize": "ok",
    }
    rows = {r["id"]: r for r in report["benchmarks"]}
    assert rows["W1"]["status"] == "failed (exit 3)"
    assert rows["W1"]["met"] is None
    assert rows["C1"]["status"] == rows["C2"]["status"] == "timeout after 2 s"
    assert rows["V1"]["status"] == "ok"
    assert rows["V1"]["ratio"] == 1.0
    assert rows["V1"]["met"] is True
    log = bench_dir / "results" / f"{report['date']}-raw" / "wal_append.log"
    assert log.read_text() == "boom\n"
    assert not (tmp_path / "README.md").exists()  # --only: no README unless asked
