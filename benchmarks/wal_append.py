#!/usr/bin/env python
"""W1 — WAL append throughput with durable acks, against a plain write + fdatasync loop.

System under test: `wal.WriteAheadLog`. `--producers` asyncio tasks each append
`--records-per-append` records of 300 bytes (`wal.append(records, tenant=1)`, which
encodes the frames) and await the durable ack before appending again. The WAL's
`batch_bytes_max` is the group size (`--group-kib`), its `segment_bytes` is
`--segment-mib`, so rotation (seal + new segment + directory fsync) is included.

Baseline, in the same script run: a plain loop of `os.write` + `os.fdatasync` on one
file (opened like the WAL's segments: O_WRONLY | O_APPEND | O_CREAT) writing the same
encoded frames in the same group sizes: groups of whole appends up to the group size,
exactly how the WAL's writer forms its batches. If the producers cannot fill a group
(e.g. one record per append, few producers), the baseline uses the WAL's measured
mean batch size from the warm-up instead, and says so.

Each round writes `--mib` MiB on each side; rounds alternate the order (baseline
first, then WAL first, ...). Reported: median MB/s (1 MB = 10^6 bytes) and records/s
of each side, the ratio WAL/baseline of the median MB/s, and the WAL's ack latency
(time from `append()` to the resolution of its future, every append timed, pooled
over the measured rounds). Method: shared/docs/BENCHMARKS.md; target: ratio >= 0.90.

Diagnostics (cheap, always on): the WAL's segments are opened through a FileOps that
times each write and fdatasync in the writer thread (two perf_counter calls per batch),
which gives the WAL's batch count and size, its write and sync time and the gap between
the end of one fdatasync and the start of the next write (the writer's per-batch
overhead on the critical path). `--profile` adds one cProfile'd WAL round (event-loop
thread only) after the measured rounds; it is not part of the figures.

    .venv/bin/python benchmarks/wal_append.py --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from wal import WalSettings, WriteAheadLog, encode_records
from wal.fileops import OsAppendFile, OsFileOps

KIB = 1024
MIB = 1024 * 1024
RECORD_BYTES = 300
TENANT = 1
POOL_BATCHES = 256  # distinct record batches the producers cycle through
BASELINE_DISTINCT_GROUPS = 256  # the baseline cycles through this many prebuilt groups
_OPEN_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC


# --------------------------------------------------------------------------- data
def make_records(count: int, seed: int) -> list[bytes]:
    """`count` distinct JSON objects of exactly RECORD_BYTES bytes."""
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    out = []
    for i in range(count):
        head = (
            f'{{"ts":{1_700_000_000_000 + i},"device":"dev-{rng.randrange(100000):05d}",'
            f'"temp":{rng.uniform(-20, 40):.2f},"ok":true,"msg":"'
        )
        pad = RECORD_BYTES - len(head) - 2
        rec = (head + "".join(rng.choice(alphabet) for _ in range(pad)) + '"}').encode()
        assert len(rec) == RECORD_BYTES
        out.append(rec)
    return out


def make_batches(per_append: int, seed: int) -> list[list[bytes]]:
    records = make_records(POOL_BATCHES * per_append, seed)
    return [records[i * per_append : (i + 1) * per_append] for i in range(POOL_BATCHES)]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(q / 100 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def fs_type(path: str) -> str:
    """File system type of `path` from /proc/self/mountinfo (longest mount prefix)."""
    path = os.path.realpath(path)
    best, kind = "", "?"
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mount = left.split()[4]
            prefix = mount.rstrip("/") + "/"
            if (path == mount or path.startswith(prefix)) and len(mount) > len(best):
                best, kind = mount, right.split()[0]
    return kind


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------- instrumented WAL file ops
@dataclass
class IoStats:
    writes: int = 0
    bytes: int = 0
    write_s: float = 0.0
    sync_s: float = 0.0
    gap_s: float = 0.0  # sync end -> next write start (same file); writer-side overhead
    gaps: int = 0
    last_sync_end: float | None = None

    def reset(self) -> None:
        self.writes = self.bytes = self.gaps = 0
        self.write_s = self.sync_s = self.gap_s = 0.0
        self.last_sync_end = None


class TimedAppendFile(OsAppendFile):
    """OsAppendFile timing its write and sync calls (writer thread only)."""

    __slots__ = ("_stats",)

    def __init__(self, path: str, stats: IoStats) -> None:
        super().__init__(path)
        self._stats = stats

    def write(self, data: bytes | memoryview) -> None:
        s = self._stats
        t0 = time.perf_counter()
        if s.last_sync_end is not None:
            s.gap_s += t0 - s.last_sync_end
            s.gaps += 1
        super().write(data)
        s.write_s += time.perf_counter() - t0
        s.writes += 1
        s.bytes += len(data)

    def sync(self) -> None:
        t0 = time.perf_counter()
        super().sync()
        t1 = time.perf_counter()
        self._stats.sync_s += t1 - t0
        self._stats.last_sync_end = t1

    def close(self) -> None:
        self._stats.last_sync_end = None  # a rotation's gap is not a batch gap
        super().close()


class TimedFileOps(OsFileOps):
    def __init__(self) -> None:
        self.stats = IoStats()

    def open_append(self, path: str) -> TimedAppendFile:
        return TimedAppendFile(path, self.stats)


# ------------------------------------------------------------------- results
@dataclass
class SideResult:
    side: str
    bytes: int
    records: int
    elapsed_s: float
    groups: int  # fdatasyncs of data (the WAL's rotations add directory fsyncs)
    mean_group_bytes: float
    write_ms_mean: float
    sync_ms_mean: float
    gap_ms_mean: float
    cpu_s: float  # process user+sys CPU during the timed part
    loop_thread_cpu_s: float  # CPU of the event-loop thread (the baseline runs there too)
    segments: int = 1
    lat_p50_ms: float | None = None
    lat_p99_ms: float | None = None
    latencies_s: list[float] = field(default_factory=list, repr=False)

    @property
    def mb_s(self) -> float:
        return self.bytes / self.elapsed_s / 1e6

    @property
    def records_s(self) -> float:
        return self.records / self.elapsed_s

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("latencies_s")
        d["mb_s"] = round(self.mb_s, 2)
        d["records_s"] = round(self.records_s, 1)
        return d


def _cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


# ------------------------------------------------------------------ baseline
def build_groups(
    frames: list[bytes], appends_per_group: int, total_appends: int
) -> tuple[list[bytes], list[int]]:
    """Distinct group buffers and the order to write them in (cycling over them)."""
    n_groups = -(-total_appends // appends_per_group)
    distinct: dict[int, bytes] = {}
    order: list[int] = []
    left = total_appends
    for g in range(n_groups):
        take = min(appends_per_group, left)
        left -= take
        key = (g % BASELINE_DISTINCT_GROUPS) if take == appends_per_group else -1
        if key not in distinct:
            start = g * appends_per_group
            distinct[key] = b"".join(frames[(start + i) % len(frames)] for i in range(take))
        order.append(key)
    keys = sorted(distinct)
    index = {k: i for i, k in enumerate(keys)}
    return [distinct[k] for k in keys], [index[k] for k in order]


def run_baseline(
    directory: str, groups: list[bytes], order: list[int], records_per_byte: float
) -> SideResult:
    path = os.path.join(directory, "baseline.dat")
    fd = os.open(path, _OPEN_FLAGS, 0o644)
    fsync_dir(directory)
    write, fdatasync, pc = os.write, os.fdatasync, time.perf_counter
    write_s = sync_s = gap_s = 0.0
    total = 0
    cpu0, tcpu0 = _cpu(), time.thread_time()
    t_start = last = pc()
    try:
        for i in order:
            buf = groups[i]
            t0 = pc()
            gap_s += t0 - last
            n = write(fd, buf)
            if n != len(buf):  # regular files write fully; stay correct anyway
                view = memoryview(buf)[n:]
                while view:
                    view = view[write(fd, view) :]
            t1 = pc()
            fdatasync(fd)
            last = pc()
            write_s += t1 - t0
            sync_s += last - t1
            total += len(buf)
        elapsed = pc() - t_start
    finally:
        os.close(fd)
    cpu, tcpu = _cpu() - cpu0, time.thread_time() - tcpu0
    n = len(order)
    return SideResult(
        side="baseline",
        bytes=total,
        records=round(total * records_per_byte),
        elapsed_s=elapsed,
        groups=n,
        mean_group_bytes=total / n,
        write_ms_mean=write_s / n * 1e3,
        sync_ms_mean=sync_s / n * 1e3,
        gap_ms_mean=gap_s / n * 1e3,
        cpu_s=cpu,
        loop_thread_cpu_s=tcpu,
    )


# ----------------------------------------------------------------------- WAL
async def _producer(
    append: Callable[..., asyncio.Future[Any]],
    batches: list[list[bytes]],
    encoded: list[bytes] | None,
    first: int,
    count: int,
    lat: list[float],
) -> None:
    pc = time.perf_counter
    nb = len(batches)
    record = lat.append
    if encoded is None:
        for j in range(count):
            recs = batches[(first + j) % nb]
            t0 = pc()
            await append(recs, tenant=TENANT)
            record(pc() - t0)
    else:
        k = len(batches[0])
        for j in range(count):
            data = encoded[(first + j) % nb]
            t0 = pc()
            await append(data, k)
            record(pc() - t0)


async def run_wal(
    directory: str,
    *,
    batches: list[list[bytes]],
    encoded: list[bytes] | None,
    producers: int,
    total_appends: int,
    append_bytes: int,
    group_bytes: int,
    segment_bytes: int,
    timeout_s: float,
    profiler: cProfile.Profile | None = None,
) -> SideResult:
    fileops = TimedFileOps()
    outstanding = producers * append_bytes
    settings = WalSettings(
        segment_bytes=segment_bytes,
        batch_bytes_max=group_bytes,
        pending_bytes_max=max(64 * MIB, 4 * outstanding),
        segment_max_age_s=3600.0,
    )
    wal = await WriteAheadLog.open(directory, settings=settings, fileops=fileops)
    fileops.stats.reset()
    sealed_before = len(wal.sealed_segments())
    per, extra = divmod(total_appends, producers)
    lats: list[list[float]] = [[] for _ in range(producers)]
    append = wal.append if encoded is None else wal.append_encoded
    records_per_append = len(batches[0])
    try:
        cpu0, tcpu0 = _cpu(), time.thread_time()
        if profiler is not None:
            profiler.enable()
        t_start = time.perf_counter()
        tasks = [
            asyncio.create_task(
                _producer(append, batches, encoded, p * 7, per + (p < extra), lats[p])
            )
            for p in range(producers)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*tasks), timeout_s)
        except TimeoutError:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise SystemExit(f"WAL round did not finish within {timeout_s} s") from None
        elapsed = time.perf_counter() - t_start
        if profiler is not None:
            profiler.disable()
        cpu, tcpu = _cpu() - cpu0, time.thread_time() - tcpu0
        stats = fileops.stats
        segments = len(wal.sealed_segments()) - sealed_before + 1
    finally:
        await wal.close()
    latencies = [x for lst in lats for x in lst]
    latencies.sort()
    total = total_appends * append_bytes
    if stats.bytes != total:
        raise SystemExit(f"WAL wrote {stats.bytes} bytes, expected {total}")
    n = max(stats.writes, 1)
    return SideResult(
        side="wal",
        bytes=total,
        records=total_appends * records_per_append,
        elapsed_s=elapsed,
        groups=stats.writes,
        mean_group_bytes=stats.bytes / n,
        write_ms_mean=stats.write_s / n * 1e3,
        sync_ms_mean=stats.sync_s / n * 1e3,
        gap_ms_mean=(stats.gap_s / stats.gaps * 1e3) if stats.gaps else 0.0,
        cpu_s=cpu,
        loop_thread_cpu_s=tcpu,
        segments=segments,
        lat_p50_ms=percentile(latencies, 50) * 1e3,
        lat_p99_ms=percentile(latencies, 99) * 1e3,
        latencies_s=latencies,
    )


# ---------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="measured rounds (default 5)")
    p.add_argument("--mib", type=float, default=64, help="MiB per side per round (default 64)")
    p.add_argument("--producers", type=int, default=64, help="concurrent producers (default 64)")
    p.add_argument(
        "--records-per-append", type=int, default=16, help="records per append (default 16)"
    )
    p.add_argument("--group-kib", type=int, default=64, help="group / batch_bytes_max (64)")
    p.add_argument("--segment-mib", type=float, default=32, help="WAL segment size (32)")
    p.add_argument("--dir", default=None, help="parent directory for the temp dir (cwd)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write results as JSON")
    p.add_argument("--no-uvloop", action="store_true", help="use the default asyncio loop")
    p.add_argument(
        "--pre-encoded",
        action="store_true",
        help="producers call append_encoded() with pre-encoded frames (isolates encoding)",
    )
    p.add_argument("--profile", action="store_true", help="one extra cProfile'd WAL round")
    p.add_argument("--round-timeout", type=float, default=300.0, help="per side, seconds")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.mib <= 0 or args.producers < 1 or args.records_per_append < 1:
        p.error("--rounds, --mib, --producers and --records-per-append must be positive")
    if args.group_kib < 1 or args.segment_mib <= 0:
        p.error("--group-kib and --segment-mib must be positive")
    return args


def _fmt_side(r: SideResult) -> str:
    s = (
        f"{r.side:8s} {r.mb_s:7.1f} MB/s {r.records_s:10.0f} rec/s  {r.elapsed_s:6.3f} s  "
        f"{r.groups:5d} groups of {r.mean_group_bytes / KIB:5.1f} KiB  "
        f"write {r.write_ms_mean:.3f} ms sync {r.sync_ms_mean:.3f} ms "
        f"gap {r.gap_ms_mean:.3f} ms  cpu {r.cpu_s:.2f} s (loop thread {r.loop_thread_cpu_s:.2f})"
    )
    if r.lat_p50_ms is not None:
        s += f"  p50 {r.lat_p50_ms:.2f} ms p99 {r.lat_p99_ms:.2f} ms"
    return s


async def amain(args: argparse.Namespace, root: str) -> dict[str, Any]:
    kind = fs_type(root)
    if kind in ("tmpfs", "ramfs"):
        print(f"warning: {root} is on {kind}; fdatasync costs nothing there", file=sys.stderr)

    k = args.records_per_append
    group_bytes = args.group_kib * KIB
    segment_bytes = int(args.segment_mib * MIB)
    batches = make_batches(k, args.seed)
    frames = [encode_records(b, tenant=TENANT, ts_ms=time.time_ns() // 1_000_000) for b in batches]
    append_bytes = len(frames[0])
    total_appends = max(1, round(args.mib * MIB / append_bytes))
    encoded = frames if args.pre_encoded else None
    records_per_byte = k / append_bytes
    apg_config = max(1, group_bytes // append_bytes)  # how the WAL's _take_batch fills a batch

    loop_name = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(
        f"W1 setup: {args.producers} producers x {k} records of {RECORD_BYTES} B "
        f"({append_bytes} B/append), group {args.group_kib} KiB "
        f"(= {apg_config} appends, {apg_config * append_bytes} B), segment {args.segment_mib} MiB, "
        f"{args.mib} MiB/side/round = {total_appends} appends, {args.rounds} rounds, "
        f"loop {loop_name}, {'append_encoded' if encoded else 'append'}, dir {root} ({kind})",
        flush=True,
    )

    counter = 0

    def fresh_dir() -> str:
        nonlocal counter
        counter += 1
        d = os.path.join(root, f"r{counter:03d}")
        os.mkdir(d)
        return d

    def drop(d: str) -> None:
        shutil.rmtree(d)
        fsync_dir(root)

    async def wal_round(appends: int, profiler: cProfile.Profile | None = None) -> SideResult:
        d = fresh_dir()
        try:
            return await run_wal(
                d,
                batches=batches,
                encoded=encoded,
                producers=args.producers,
                total_appends=appends,
                append_bytes=append_bytes,
                group_bytes=group_bytes,
                segment_bytes=segment_bytes,
                timeout_s=args.round_timeout,
                profiler=profiler,
            )
        finally:
            drop(d)

    def baseline_round(groups: list[bytes], order: list[int]) -> SideResult:
        d = fresh_dir()
        try:
            return run_baseline(d, groups, order, records_per_byte)
        finally:
            drop(d)

    # Warm-up (not measured): page cache, allocator, and the WAL's real batch size.
    warm_appends = max(1, min(total_appends, round(16 * MIB / append_bytes)))
    warm = await wal_round(warm_appends)
    apg = apg_config
    note = ""
    warm_apg = warm.mean_group_bytes / append_bytes
    if warm_apg < 0.9 * apg_config:
        apg = max(1, round(warm_apg))
        note = (
            f"note: the producers cannot fill {args.group_kib} KiB groups "
            f"(at most {args.producers * append_bytes} B outstanding; WAL batches "
            f"{warm.mean_group_bytes:.0f} B in the warm-up), so the baseline writes "
            f"groups of {apg} appends ({apg * append_bytes} B)"
        )
        print(note, flush=True)
    groups, order = build_groups(frames, apg, total_appends)
    baseline_round(groups, order[: max(1, len(order) // 4)])

    rounds: list[dict[str, Any]] = []
    base_rs: list[SideResult] = []
    wal_rs: list[SideResult] = []
    for r in range(args.rounds):
        sides = ("baseline", "wal") if r % 2 == 0 else ("wal", "baseline")
        pair: dict[str, SideResult] = {}
        for side in sides:
            if side == "baseline":
                pair[side] = baseline_round(groups, order)
            else:
                pair[side] = await wal_round(total_appends)
        b, w = pair["baseline"], pair["wal"]
        base_rs.append(b)
        wal_rs.append(w)
        print(f"round {r + 1}/{args.rounds}: ratio {w.mb_s / b.mb_s:.3f}", flush=True)
        print("  " + _fmt_side(b), flush=True)
        print("  " + _fmt_side(w), flush=True)
        rounds.append({"baseline": b.summary(), "wal": w.summary(), "ratio": w.mb_s / b.mb_s})

    profile_text = None
    if args.profile:
        prof = cProfile.Profile()
        pr = await wal_round(total_appends, profiler=prof)
        buf = io.StringIO()
        stats = pstats.Stats(prof, stream=buf).strip_dirs().sort_stats("tottime")
        stats.print_stats(25)
        profile_text = buf.getvalue()
        print(f"\nprofiled WAL round (not in the figures): {_fmt_side(pr)}")
        print(profile_text)

    base_mb = statistics.median(x.mb_s for x in base_rs)
    wal_mb = statistics.median(x.mb_s for x in wal_rs)
    ratio = wal_mb / base_mb
    group_label = f"{args.group_kib} KiB"
    if apg != apg_config:
        group_label = f"{apg * append_bytes / KIB:.1f} KiB (measured WAL batch)"
    lat = sorted(x for w in wal_rs for x in w.latencies_s)
    p50, p99 = percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3
    results = {
        "benchmark": "W1 wal_append",
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "config": {
            "producers": args.producers,
            "records_per_append": k,
            "record_bytes": RECORD_BYTES,
            "append_bytes": append_bytes,
            "group_kib": args.group_kib,
            "baseline_appends_per_group": apg,
            "baseline_group_bytes": apg * append_bytes,
            "segment_mib": args.segment_mib,
            "mib_per_side_per_round": args.mib,
            "rounds": args.rounds,
            "loop": loop_name,
            "pre_encoded": bool(encoded),
            "fs_type": kind,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "note": note,
        },
        "median": {
            "baseline_mb_s": base_mb,
            "wal_mb_s": wal_mb,
            "baseline_records_s": statistics.median(x.records_s for x in base_rs),
            "wal_records_s": statistics.median(x.records_s for x in wal_rs),
            "ratio_of_medians": ratio,
            "median_of_round_ratios": statistics.median(x["ratio"] for x in rounds),
            "wal_lat_p50_ms": p50,
            "wal_lat_p99_ms": p99,
            "wal_mean_group_bytes": statistics.median(x.mean_group_bytes for x in wal_rs),
            "wal_gap_ms": statistics.median(x.gap_ms_mean for x in wal_rs),
            "wal_sync_ms": statistics.median(x.sync_ms_mean for x in wal_rs),
            "baseline_sync_ms": statistics.median(x.sync_ms_mean for x in base_rs),
        },
        "target_ratio": 0.90,
        "rounds": rounds,
    }
    if profile_text is not None:
        results["profile_top"] = profile_text
    print(
        f"medians: baseline {base_mb:.1f} MB/s "
        f"{results['median']['baseline_records_s']:.0f} rec/s, "
        f"wal {wal_mb:.1f} MB/s {results['median']['wal_records_s']:.0f} rec/s; "
        f"median of per-round ratios {results['median']['median_of_round_ratios']:.3f}"
    )
    print(
        f"W1 wal_append: ratio {ratio:.2f} (wal {wal_mb:.1f} MB/s vs baseline {base_mb:.1f} MB/s, "
        f"{group_label} groups, {args.producers} producers, {k} rec/append) "
        f"p50 {p50:.1f} ms p99 {p99:.1f} ms"
    )
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    loop_factory = None
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            print("uvloop not importable; using asyncio's default loop", file=sys.stderr)
        else:
            loop_factory = uvloop.new_event_loop
    parent = os.path.abspath(args.dir or os.getcwd())
    root = tempfile.mkdtemp(prefix=".w1-wal-append-", dir=parent)
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            results = runner.run(amain(args, root))
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
