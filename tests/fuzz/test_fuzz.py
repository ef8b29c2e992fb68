"""The fuzz targets of tests/fuzz, run by pytest: each target fuzzes in its own process
for a short, bounded time in every run (`FUZZ_S`, an RSS limit, a per-input timeout)
and for `LONG_FUZZ_S` with EDGEMQ_LONG_TESTS=1; every input a fuzzer ever found is
kept under tests/fuzz/crashers/<target>/ and replayed here in every run, with the seed
corpora.

A finding fails the run that found it and is copied to crashers/<target>/ — commit it
with the fix. A fuzzer's own working corpus lives in a temporary directory (libFuzzer
adds new inputs to its first corpus directory; the committed seeds stay as they are).
"""

from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.report import report

FUZZ_DIR = Path(__file__).parent
ROOT = FUZZ_DIR.parents[1]
CORPUS = FUZZ_DIR / "corpus"
CRASHERS = FUZZ_DIR / "crashers"
TARGETS = {
    # target: libFuzzer options of its own
    "frames": ["-max_len=16384"],
    "records": ["-max_len=16384"],
    "mqtt": ["-max_len=4096"],
    "manifest": ["-max_len=16384", f"-dict={FUZZ_DIR / 'manifest.dict'}"],
}
LONG = os.environ.get("EDGEMQ_LONG_TESTS") == "1"
FUZZ_S = 20
LONG_FUZZ_S = 600
RSS_LIMIT_MB = 2048
"""Memory a fuzzing process may use beyond what it inherits (see `own_peak_rss_mb`)."""
INPUT_TIMEOUT_S = 10
FINDING_PREFIXES = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")


def kept_inputs() -> list[tuple[str, Path]]:
    found = []
    for target in TARGETS:
        for directory in (CRASHERS / target, CORPUS / target):
            if directory.is_dir():
                found += [
                    (target, p)
                    for p in sorted(directory.iterdir())
                    if p.is_file() and not p.name.startswith(".") and p.suffix != ".md"
                ]
    return found


def own_peak_rss_mb() -> int:
    """This process's peak RSS (VmHWM). A child inherits it as its starting `ru_maxrss`
    (Linux keeps the high-water mark across fork and exec), which is what libFuzzer's
    `-rss_limit_mb` compares with: the limit is set above it."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    return 0


def _stat(output: str, name: str) -> int | None:
    match = re.search(rf"stat::{name}:\s+(\d+)", output)
    return int(match.group(1)) if match else None


def run_fuzzer(target: str, seconds: int, tmp_path: Path) -> dict[str, object]:
    pytest.importorskip("atheris", reason="atheris is a dev dependency (pyproject.toml)")
    work = tmp_path / "corpus"
    findings = tmp_path / "findings"
    work.mkdir()
    findings.mkdir()
    inherited_mb = own_peak_rss_mb()
    command = [
        sys.executable,
        str(FUZZ_DIR / f"fuzz_{target}.py"),
        f"-max_total_time={seconds}",
        f"-rss_limit_mb={inherited_mb + RSS_LIMIT_MB}",
        f"-timeout={INPUT_TIMEOUT_S}",
        f"-artifact_prefix={findings}/",
        "-print_final_stats=1",
        *TARGETS[target],
        str(work),
        str(CORPUS / target),
    ]
    done = subprocess.run(
        command,
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=seconds + 120,
        check=False,
    )
    output = done.stderr.decode(errors="replace") + done.stdout.decode(errors="replace")
    kept = []
    for finding in sorted(findings.iterdir()):
        if finding.name.startswith(FINDING_PREFIXES):
            destination = CRASHERS / target / finding.name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(finding, destination)
            kept.append(os.path.relpath(destination, ROOT))
    figures: dict[str, object] = {
        "target": target,
        "seconds": seconds,
        "executions": _stat(output, "number_of_executed_units"),
        "execs_per_s": _stat(output, "average_exec_per_sec"),
        "new_units": _stat(output, "new_units_added"),
        "corpus_after": len(list(work.iterdir())),
        "peak_rss_mb": _stat(output, "peak_rss_mb"),
        "inherited_rss_mb": inherited_mb,
        "findings": kept,
        "exit_code": done.returncode,
    }
    report(f"FUZZ-{target}", **figures)
    assert not kept, f"the fuzzer found inputs, kept as {kept}:\n{output[-6000:]}"
    assert done.returncode == 0, output[-6000:]
    assert (figures["executions"] or 0) > 0, output[-6000:]
    return figures


@pytest.mark.parametrize("target", TARGETS)
def test_a_short_fuzzing_run_finds_nothing(target: str, tmp_path: Path) -> None:
    run_fuzzer(target, FUZZ_S, tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(not LONG, reason="long fuzzing runs only with EDGEMQ_LONG_TESTS=1")
@pytest.mark.timeout(LONG_FUZZ_S + 300)
@pytest.mark.parametrize("target", TARGETS)
def test_a_long_fuzzing_run_finds_nothing(target: str, tmp_path: Path) -> None:
    run_fuzzer(target, LONG_FUZZ_S, tmp_path)


@pytest.mark.parametrize(
    ("target", "path"),
    kept_inputs(),
    ids=[f"{t}/{p.parent.name}/{p.name}" for t, p in kept_inputs()],
)
def test_kept_crashers_and_seeds_replay_cleanly(target: str, path: Path) -> None:
    module = importlib.import_module(f"tests.fuzz.fuzz_{target}")
    module.TestOneInput(path.read_bytes())


def test_the_seeds_are_valid_inputs_of_their_parsers() -> None:
    """The seed corpora hold real shapes of each format (not just bytes the parser
    refuses), so the fuzzers start inside the formats."""
    from ingest.body import decode_content, split_records
    from ingest.manifest import parse_manifest
    from tests.fuzz import fuzz_records
    from tests.fuzz.seeds import SEEDS
    from wal.reader import iter_frames

    for name, data in SEEDS["frames"]().items():
        if name != "torn-tail":
            assert list(iter_frames(data)), name
    for data in SEEDS["manifest"]().values():
        parse_manifest(data)
    for name, data in SEEDS["records"]().items():
        kind = fuzz_records.KINDS[data[0] % len(fuzz_records.KINDS)]
        coding = fuzz_records.CODINGS[(data[0] >> 2) % len(fuzz_records.CODINGS)]
        body = data[2 + data[1] % 64 :]
        assert split_records(
            decode_content(body, coding, fuzz_records.LIMITS), kind, fuzz_records.LIMITS
        ), name
    for target, make in SEEDS.items():
        for name, data in make().items():
            assert (CORPUS / target / f"seed-{name}").read_bytes() == data, (
                f"corpus/{target}/seed-{name} is stale: python -m tests.fuzz.seeds"
            )
