#!/usr/bin/env python
"""V1 — materialise a 32 MiB segment (raw Parquet + one 5-column view + DLQ), against
DuckDB read_json + COPY TO parquet on the same NDJSON.

System under test, timed end to end from the segment file to the Parquet files: read
the segment file (page cache) → `wal.columns.decode_columns` →
`compiler.parquet.segment_table` + `raw_table` → raw Parquet written to a file with
`write_parquet` (zstd) → `compiler.materialize.materialize_view` with a 5-column
definition (VARCHAR, DOUBLE, INTEGER, TIMESTAMP, BOOLEAN; one filter), run in the
DuckDB sandbox with `SandboxLimits()` (its threads and memory limit) → the view's
Parquet file(s) and the DLQ Parquet file written with `write_parquet`.

Baseline, in the same script run: a DuckDB connection with the sandbox's thread count
and memory limit running `COPY (SELECT * FROM read_json('<ndjson>',
format='newline_delimited', ignore_errors=true)) TO '<out>.parquet' (FORMAT parquet,
COMPRESSION zstd)` on the same records as NDJSON. `ignore_errors=true` is needed
because ~1 % of the lines are deliberately not valid JSON (DuckDB turns them into
all-NULL rows). Opening and closing the connection is inside the timed part on both
sides (the sandbox opens a fresh connection per query).

Data: a deterministic (seeded) segment of ~300-byte JSON events, encoded with
`wal.frame.encode_records` (16 records per call, like HTTP ingest) up to
`--segment-mib` MiB, and the same records as an NDJSON file. `--invalid-pct` of the
rows (default 1 %) are DLQ rows: half not JSON (truncated), a quarter with the
required `device` null, a quarter with `temp` not a number (`cast_failures: dlq`);
the filter `temp < 40` drops ~8 % more. Row counts of every output are checked
against the expected outcomes after each round (outside the timed part).

Each round runs both sides once, alternating which goes first; one untimed warm-up
of each side comes first. MB/s = segment bytes / elapsed (1 MB = 10^6 B) for both
sides, so both are credited with the same work; `ratio` = median system MB/s ÷ median
baseline MB/s. The system side also reports a per-stage breakdown (wall and process
CPU, all threads): read, decode, Arrow build, raw Parquet, DuckDB classify, Arrow
post-processing (filter/take/DLQ table/partition split), view + DLQ Parquet write.
To split `materialize_view` the script wraps `compiler.materialize.classify` (the
module attribute, at run time; two perf_counter calls) while it runs.
Method: shared/docs/BENCHMARKS.md; target: ratio >= 0.90.

    .venv/bin/python benchmarks/view_materialize.py --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

import compiler.materialize as materialize_module
from compiler.definition import ViewDefinition, parse_definition
from compiler.materialize import materialize_view
from compiler.parquet import raw_table, segment_table, write_parquet
from compiler.sandbox import SandboxLimits
from wal.columns import decode_columns
from wal.frame import encode_records

MIB = 1024 * 1024
RECORD_BYTES = 300
RECORDS_PER_FRAME_BATCH = 16  # records per encode_records call (one HTTP body's worth)
TENANT = 1
SEGMENT_SEQ = 7
TS_BASE_MS = 1_764_460_800_000  # 2025-11-30T00:00:00Z; fixed so the data is deterministic
TS_STEP_MS = 7
FILTER_TEMP_MAX = 40.0

DEFINITION: dict[str, Any] = {
    "columns": [
        {"name": "device", "type": "VARCHAR", "path": "$.device", "required": True},
        {"name": "temp", "type": "DOUBLE", "path": "$.temp", "cast_failures": "dlq"},
        {"name": "count", "type": "INTEGER", "path": "$.count"},
        {"name": "at", "type": "TIMESTAMP", "path": "$.ts"},
        {"name": "ok", "type": "BOOLEAN", "path": "$.ok"},
    ],
    "filters": [{"condition": f"temp < {FILTER_TEMP_MAX:g}"}],
}

STAGES = ("read", "decode", "arrow", "raw_parquet", "classify", "post", "view_dlq_write")
STAGE_LABELS = {
    "read": "read segment file",
    "decode": "decode_columns",
    "arrow": "Arrow build (segment_table + raw_table)",
    "raw_parquet": "raw Parquet write (zstd)",
    "classify": "DuckDB classify (sandbox query → Arrow)",
    "post": "Arrow post-processing (filter, take, DLQ table)",
    "view_dlq_write": "view + DLQ Parquet write (zstd)",
}


# --------------------------------------------------------------------------- data
@dataclass
class Dataset:
    segment_path: str
    ndjson_path: str
    segment_bytes: int
    ndjson_bytes: int
    rows: int
    expect_dlq: int
    expect_dropped: int

    @property
    def expect_accepted(self) -> int:
        return self.rows - self.expect_dlq - self.expect_dropped


def make_records(
    target_segment_bytes: int, invalid_pct: float, seed: int
) -> tuple[list[bytes], int, int]:
    """Records (mostly exactly RECORD_BYTES) whose frames fill at most the target size;
    also the expected DLQ and filtered counts."""
    rng = random.Random(seed)
    invalid = invalid_pct / 100
    records: list[bytes] = []
    frames_bytes = 0
    dlq = dropped = 0
    i = 0
    while True:
        ts = TS_BASE_MS + i * TS_STEP_MS
        seconds, ms = divmod(ts, 1000)
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{ms:03d}Z"
        device = f"dev-{rng.randrange(100_000):05d}"
        temp = f"{rng.uniform(-20, 45):.2f}"
        ok = "true" if rng.random() < 0.9 else "false"
        head = (
            f'{{"ts":"{iso}","device":"{device}","site":"site-{rng.randrange(64):02d}",'
            f'"temp":{temp},"count":{rng.randrange(1_000_000)},"ok":{ok},"msg":"'
        )
        pad = RECORD_BYTES - len(head) - 2
        text = head + rng.randbytes(pad // 2 + 1).hex()[:pad] + '"}'
        kind = rng.random()
        outcome = "accepted"
        if kind < invalid / 2:
            text = text[: RECORD_BYTES // 2]  # truncated: not valid JSON
            outcome = "dlq"
        elif kind < invalid * 3 / 4:
            text = text.replace(f'"device":"{device}"', '"device":null')  # required missing
            outcome = "dlq"
        elif kind < invalid:
            text = text.replace(f'"temp":{temp}', '"temp":"n/a"')  # cast failure → DLQ
            outcome = "dlq"
        elif float(temp) >= FILTER_TEMP_MAX:
            outcome = "dropped"
        record = text.encode()
        size = 21 + len(record)  # current frame header: 21 bytes
        if frames_bytes + size > target_segment_bytes:
            break
        records.append(record)
        frames_bytes += size
        dlq += outcome == "dlq"
        dropped += outcome == "dropped"
        i += 1
    return records, dlq, dropped


def build_dataset(root: str, segment_mib: float, invalid_pct: float, seed: int) -> Dataset:
    records, dlq, dropped = make_records(int(segment_mib * MIB), invalid_pct, seed)
    k = RECORDS_PER_FRAME_BATCH
    segment = b"".join(
        encode_records(records[i : i + k], tenant=TENANT, ts_ms=TS_BASE_MS + i * TS_STEP_MS)
        for i in range(0, len(records), k)
    )
    ndjson = b"\n".join(records) + b"\n"
    segment_path = os.path.join(root, "segment.wal")
    ndjson_path = os.path.join(root, "events.ndjson")
    for path, data in ((segment_path, segment), (ndjson_path, ndjson)):
        with open(path, "wb") as f:
            f.write(data)
    return Dataset(segment_path, ndjson_path, len(segment), len(ndjson), len(records), dlq, dropped)


# ------------------------------------------------------------------- results
@dataclass
class SideResult:
    side: str
    bytes: int
    elapsed_s: float
    cpu_s: float  # process CPU (all threads) during the timed part
    stages_s: dict[str, float] = field(default_factory=dict)
    stages_cpu_s: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    output_bytes: int = 0

    @property
    def mb_s(self) -> float:
        return self.bytes / self.elapsed_s / 1e6

    def summary(self) -> dict[str, Any]:
        return {
            "side": self.side,
            "elapsed_s": round(self.elapsed_s, 4),
            "mb_s": round(self.mb_s, 2),
            "cpu_s": round(self.cpu_s, 3),
            "output_bytes": self.output_bytes,
            "counts": self.counts,
            "stages_s": {k: round(v, 4) for k, v in self.stages_s.items()},
            "stages_cpu_s": {k: round(v, 4) for k, v in self.stages_cpu_s.items()},
        }


def _tree_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(d, name)) for d, _, names in os.walk(path) for name in names
    )


def _parquet_rows(path: str) -> int:
    return int(pq.read_metadata(path).num_rows)


# ------------------------------------------------------------------ baseline
def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def run_baseline(
    data: Dataset, out_dir: str, limits: SandboxLimits, timeout_s: float
) -> SideResult:
    out = os.path.join(out_dir, "baseline.parquet")
    sql = (
        "COPY (SELECT * FROM read_json("
        f"{_sql_str(data.ndjson_path)}, format='newline_delimited', ignore_errors=true)) "
        f"TO {_sql_str(out)} (FORMAT parquet, COMPRESSION zstd)"
    )
    config: dict[str, str | bool | int | float | list[str]] = {
        "threads": limits.threads,
        "memory_limit": f"{limits.memory_limit_mib}MB",
    }
    gc.collect()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    con = duckdb.connect(":memory:", config=config)
    timer = threading.Timer(timeout_s, con.interrupt)
    timer.daemon = True
    timer.start()
    try:
        con.execute(sql)
    except duckdb.InterruptException:
        raise SystemExit(f"baseline round did not finish within {timeout_s} s") from None
    finally:
        timer.cancel()
        con.close()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    rows = _parquet_rows(out)
    if rows != data.rows:
        raise SystemExit(f"baseline wrote {rows} rows, expected {data.rows}")
    return SideResult(
        side="duckdb",
        bytes=data.segment_bytes,
        elapsed_s=elapsed,
        cpu_s=cpu,
        counts={"rows": rows},
        output_bytes=os.path.getsize(out),
    )


# ------------------------------------------------------------------- system
class _ClassifyTimer:
    """Wraps compiler.materialize.classify to time the DuckDB part of materialize_view."""

    def __init__(self) -> None:
        self.wall_s = 0.0
        self.cpu_s = 0.0

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        original: Callable[..., Any] = materialize_module.classify

        def timed(*args: Any, **kwargs: Any) -> Any:
            c0, t0 = time.process_time(), time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.wall_s += time.perf_counter() - t0
                self.cpu_s += time.process_time() - c0

        materialize_module.classify = timed  # type: ignore[assignment]
        try:
            yield
        finally:
            materialize_module.classify = original  # type: ignore[assignment]


def run_system(
    data: Dataset,
    out_dir: str,
    definition: ViewDefinition,
    limits: SandboxLimits,
    *,
    serial: bool = False,
) -> SideResult:
    raw_path = os.path.join(out_dir, "raw.parquet")
    dlq_path = os.path.join(out_dir, "dlq.parquet")
    view_root = os.path.join(out_dir, "view")
    timer = _ClassifyTimer()
    marks: list[tuple[str, float, float]] = []
    pc, cpu = time.perf_counter, time.process_time

    def mark(stage: str) -> None:
        marks.append((stage, pc(), cpu()))

    gc.collect()
    with timer.installed():
        marks.append(("start", pc(), cpu()))
        with open(data.segment_path, "rb") as f:
            segment_buf = f.read()
        mark("read")
        cols = decode_columns(segment_buf)
        mark("decode")
        segment = segment_table(
            messages=cols.message,
            ts_ms=cols.ts_ms,
            topics=cols.topic,
            tenants=cols.tenant,
            fmts=cols.fmt,
            segment_seq=SEGMENT_SEQ,
        )
        raw = raw_table(segment, endpoint_id="bench-endpoint", node_id="bench-node")
        mark("arrow")
        # As the node's delivery does: the raw Parquet is written in a worker thread
        # while DuckDB runs the view (both release the GIL). With --serial, one after
        # the other; the "raw Parquet" stage is then its full time, otherwise only the
        # wait for it after the view is done.
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="raw-parquet")
        raw_done = None
        if serial:
            write_parquet(raw, raw_path)
            mark("raw_parquet")
        else:
            raw_done = pool.submit(write_parquet, raw, raw_path)
        result = materialize_view(definition, segment, limits)
        mark("materialize")
        view_paths = []
        for part in result.files:
            directory = os.path.join(view_root, *part.folders)
            os.makedirs(directory, exist_ok=True)
            path = os.path.join(directory, "part-0.parquet")
            write_parquet(part.table, path)
            view_paths.append(path)
        write_parquet(result.dlq, dlq_path)
        mark("view_dlq_write")
        if raw_done is not None:
            raw_done.result()
            mark("raw_parquet")
        pool.shutdown()
    t_start, c_start = marks[0][1], marks[0][2]
    elapsed, total_cpu = marks[-1][1] - t_start, marks[-1][2] - c_start
    stages: dict[str, float] = {}
    stages_cpu: dict[str, float] = {}
    for (_, t_prev, c_prev), (name, t, c) in itertools.pairwise(marks):
        stages[name] = t - t_prev
        stages_cpu[name] = c - c_prev
    mat, mat_cpu = stages.pop("materialize"), stages_cpu.pop("materialize")
    stages["classify"], stages_cpu["classify"] = timer.wall_s, timer.cpu_s
    stages["post"], stages_cpu["post"] = mat - timer.wall_s, mat_cpu - timer.cpu_s
    stages = {k: stages[k] for k in STAGES}
    stages_cpu = {k: stages_cpu[k] for k in STAGES}

    counts = result.counts
    got = {
        "raw_rows": _parquet_rows(raw_path),
        "view_rows": sum(_parquet_rows(p) for p in view_paths),
        "dlq_rows": _parquet_rows(dlq_path),
        "view_files": len(view_paths),
        "dropped": counts.dropped,
    }
    want = {
        "raw_rows": data.rows,
        "view_rows": data.expect_accepted,
        "dlq_rows": data.expect_dlq,
        "view_files": 1,
        "dropped": data.expect_dropped,
    }
    if got != want:
        raise SystemExit(f"system outputs {got} differ from the expected {want}")
    return SideResult(
        side="edgemq",
        bytes=data.segment_bytes,
        elapsed_s=elapsed,
        cpu_s=total_cpu,
        stages_s=stages,
        stages_cpu_s=stages_cpu,
        counts=got,
        output_bytes=_tree_bytes(out_dir),
    )


# ---------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="measured rounds (default 5)")
    p.add_argument("--segment-mib", type=float, default=32, help="segment size (default 32)")
    p.add_argument("--invalid-pct", type=float, default=1.0, help="DLQ rows, percent (default 1)")
    defaults = SandboxLimits()
    p.add_argument(
        "--threads",
        type=int,
        default=defaults.threads,
        help=f"DuckDB threads, both sides (default: the sandbox's, {defaults.threads})",
    )
    p.add_argument(
        "--memory-mib",
        type=int,
        default=defaults.memory_limit_mib,
        help=f"DuckDB memory limit, both sides (default {defaults.memory_limit_mib})",
    )
    p.add_argument(
        "--serial",
        action="store_true",
        help="write the raw Parquet before running the view instead of concurrently",
    )
    p.add_argument("--dir", default=None, help="parent directory for the temp dir (cwd)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write results as JSON")
    p.add_argument("--round-timeout", type=float, default=120.0, help="baseline, seconds")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.segment_mib <= 0 or args.threads < 1 or args.memory_mib < 1:
        p.error("--rounds, --segment-mib, --threads and --memory-mib must be positive")
    if not 0 <= args.invalid_pct <= 100:
        p.error("--invalid-pct must be between 0 and 100")
    return args


def _fmt_side(r: SideResult) -> str:
    s = (
        f"{r.side:7s} {r.mb_s:6.1f} MB/s  {r.elapsed_s:6.3f} s  cpu {r.cpu_s:5.2f} s "
        f"({r.cpu_s / r.elapsed_s:.2f} cores)  out {r.output_bytes / MIB:5.1f} MiB"
    )
    if r.stages_s:
        s += "  | " + " ".join(f"{k} {v * 1e3:.0f}" for k, v in r.stages_s.items()) + " ms"
    return s


def run(args: argparse.Namespace, root: str) -> dict[str, Any]:
    limits = SandboxLimits(memory_limit_mib=args.memory_mib, threads=args.threads)
    definition = parse_definition(DEFINITION)
    t0 = time.perf_counter()
    data = build_dataset(root, args.segment_mib, args.invalid_pct, args.seed)
    print(
        f"V1 setup: segment {data.segment_bytes:,} B ({data.segment_bytes / MIB:.2f} MiB), "
        f"{data.rows:,} records of ~{RECORD_BYTES} B, NDJSON {data.ndjson_bytes:,} B; "
        f"expected accepted {data.expect_accepted:,} / dropped {data.expect_dropped:,} / "
        f"dlq {data.expect_dlq:,}; DuckDB threads {limits.threads} (both sides), "
        f"memory {limits.memory_limit_mib} MiB; {args.rounds} rounds; dir {root} "
        f"(data built in {time.perf_counter() - t0:.1f} s)",
        flush=True,
    )

    counter = 0

    def side_round(side: str) -> SideResult:
        nonlocal counter
        counter += 1
        out = os.path.join(root, f"r{counter:03d}-{side}")
        os.mkdir(out)
        try:
            if side == "duckdb":
                return run_baseline(data, out, limits, args.round_timeout)
            return run_system(data, out, definition, limits, serial=args.serial)
        finally:
            shutil.rmtree(out)

    # Warm-up (not measured): page cache, imports, allocator, DuckDB's JSON extension.
    side_round("duckdb")
    side_round("edgemq")

    rounds: list[dict[str, Any]] = []
    base_rs: list[SideResult] = []
    sys_rs: list[SideResult] = []
    for r in range(args.rounds):
        sides = ("duckdb", "edgemq") if r % 2 == 0 else ("edgemq", "duckdb")
        pair = {side: side_round(side) for side in sides}
        b, s = pair["duckdb"], pair["edgemq"]
        base_rs.append(b)
        sys_rs.append(s)
        print(f"round {r + 1}/{args.rounds}: ratio {s.mb_s / b.mb_s:.3f}", flush=True)
        print("  " + _fmt_side(b), flush=True)
        print("  " + _fmt_side(s), flush=True)
        rounds.append({"duckdb": b.summary(), "edgemq": s.summary(), "ratio": s.mb_s / b.mb_s})

    base_mb = statistics.median(x.mb_s for x in base_rs)
    sys_mb = statistics.median(x.mb_s for x in sys_rs)
    ratio = sys_mb / base_mb
    stage_med = {k: statistics.median(x.stages_s[k] for x in sys_rs) for k in STAGES}
    stage_cpu_med = {k: statistics.median(x.stages_cpu_s[k] for x in sys_rs) for k in STAGES}
    sys_time = statistics.median(x.elapsed_s for x in sys_rs)
    base_time = statistics.median(x.elapsed_s for x in base_rs)
    print(
        f"system stages (median over rounds; CPU = process CPU, all threads; "
        f"sum of medians {sum(stage_med.values()) * 1e3:.0f} ms, "
        f"median total {sys_time * 1e3:.0f} ms, baseline total {base_time * 1e3:.0f} ms):"
    )
    for k in STAGES:
        wall, cpu = stage_med[k], stage_cpu_med[k]
        print(
            f"  {STAGE_LABELS[k]:48s} {wall * 1e3:7.1f} ms  {wall / sys_time * 100:5.1f} %  "
            f"cpu {cpu * 1e3:7.1f} ms ({cpu / wall if wall else 0:.2f} cores)"
        )
    print(
        f"medians: duckdb {base_mb:.1f} MB/s ({statistics.median(x.cpu_s for x in base_rs):.2f} "
        f"s CPU), edgemq {sys_mb:.1f} MB/s ({statistics.median(x.cpu_s for x in sys_rs):.2f} "
        f"s CPU); median of per-round ratios "
        f"{statistics.median(x['ratio'] for x in rounds):.3f}"
    )
    results: dict[str, Any] = {
        "benchmark": "V1 view_materialize",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "config": {
            "segment_bytes": data.segment_bytes,
            "ndjson_bytes": data.ndjson_bytes,
            "rows": data.rows,
            "record_bytes": RECORD_BYTES,
            "invalid_pct": args.invalid_pct,
            "expected": {
                "accepted": data.expect_accepted,
                "dropped": data.expect_dropped,
                "dlq": data.expect_dlq,
            },
            "definition": DEFINITION,
            "threads": limits.threads,
            "memory_limit_mib": limits.memory_limit_mib,
            "rounds": args.rounds,
            "seed": args.seed,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "duckdb": duckdb.__version__,
            "pyarrow": pa.__version__,
        },
        "median": {
            "duckdb_mb_s": base_mb,
            "edgemq_mb_s": sys_mb,
            "ratio_of_medians": ratio,
            "median_of_round_ratios": statistics.median(x["ratio"] for x in rounds),
            "edgemq_stages_s": stage_med,
            "edgemq_stages_cpu_s": stage_cpu_med,
        },
        "target_ratio": 0.90,
        "rounds": rounds,
    }
    print(
        f"V1 view_materialize: ratio {ratio:.2f} (edgemq {sys_mb:.0f} MB/s vs duckdb "
        f"read_json+COPY {base_mb:.0f} MB/s, {args.segment_mib:g} MiB segment, "
        f"threads {limits.threads})"
    )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    parent = os.path.abspath(args.dir or os.getcwd())
    root = tempfile.mkdtemp(prefix=".v1-view-materialize-", dir=parent)
    try:
        results = run(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
