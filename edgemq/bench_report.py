"""The benchmark report of `edgemq bench`: turn each benchmark script's JSON output into
rows (target, baseline figure, measured figure, ratio, met), render them as a Markdown
table and put the table between markers in benchmarks/README.md. Pure functions; the
runner is `edgemq.bench_cmd`."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

START = "<!-- bench-table:start -->"
END = "<!-- bench-table:end -->"


@dataclass(frozen=True, slots=True)
class Row:
    """One target of one benchmark, as measured (or not) in one run."""

    id: str
    name: str
    target: str
    status: str = "ok"
    """ok, failed, timeout or missing (the script ran but its JSON lacks this part)."""
    ratio: float | None = None
    ratio_text: str = ""
    baseline: float | None = None
    measured: float | None = None
    unit: str = ""
    absolute: str = ""
    met: bool | None = None
    script: str = ""
    command: str = ""
    duration_s: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in asdict(self).items()
        }


Doc = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Target:
    """One target of shared/docs/BENCHMARKS.md as the report writes it; `ratio_min` is
    the ratio it asks for where the report judges it (the scripts judge M*, R*, C*)."""

    id: str
    name: str
    target: str
    ratio_min: float | None = None


TARGETS: dict[str, Target] = {
    t.id: t
    for t in (
        Target("W1", "WAL append, durable acks", "≥ 0.90 of os.write+fdatasync MB/s", 0.90),
        Target(
            "V1",
            "materialise a segment: raw Parquet + view + DLQ",
            "≥ 0.90 of DuckDB read_json+COPY MB/s",
            0.90,
        ),
        Target("C1", "control API token exchange", "≥ 500 req/s"),
        Target("C2", "control API endpoint list, worst offset", "p99 ≤ 20 ms"),
        Target(
            "H1",
            "HTTP ingest, 64 KiB NDJSON bodies, durable ack",
            "≥ 0.90 of plain aiohttp records/s",
            0.90,
        ),
        Target(
            "H2",
            "HTTP ingest, one record per request, durable ack",
            "≥ 0.90 of plain req/s; p99 ≤ 1.3×",
            0.90,
        ),
        Target(
            "E1",
            "end to end: ingest + seal + artifacts to the local store",
            "≥ 0.70 of H1, backlog bounded",
            0.70,
        ),
        Target("M0", "MQTT QoS 0, 200 B payloads", "≥ 1.0 of Mosquitto msg/s"),
        Target("M1", "MQTT QoS 1, PUBACK after fsync", "≥ 0.80 of Mosquitto msg/s"),
        Target("M2", "MQTT QoS 1 against amqtt", "≥ 10× amqtt msg/s"),
        Target("R1", "memory of idle MQTT connections", "≤ 30 KiB RSS per connection"),
        Target("R2", "restart with unshipped WAL", "ready to ingest in ≤ 2 s"),
    )
}
H2_P99_RATIO_MAX = 1.30
"""H2's second condition: the node's p99 at most this multiple of plain aiohttp's."""


def _row(target_id: str, *, name: str | None = None, **fields: Any) -> Row:
    """A row of TARGETS[target_id] (its name, or `name` when the run adds to it)."""
    t = TARGETS[target_id]
    return Row(t.id, name or t.name, t.target, **fields)


def _min(target_id: str) -> float:
    ratio = TARGETS[target_id].ratio_min
    assert ratio is not None, target_id
    return ratio


def _f(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) else float("nan")


def _k(x: float) -> str:
    return f"{x / 1000:.1f}k" if x >= 1000 else f"{x:.0f}"


def _ratio_row(
    target_id: str, ratio: float, *, baseline: float, measured: float, unit: str, absolute: str
) -> Row:
    """A row whose target is a plain ratio of at least TARGETS[target_id].ratio_min."""
    return _row(
        target_id,
        ratio=ratio,
        ratio_text=f"{ratio:.2f}",
        baseline=baseline,
        measured=measured,
        unit=unit,
        met=not math.isnan(ratio) and ratio >= _min(target_id),
        absolute=absolute,
    )


def _w1(doc: Doc) -> list[Row]:
    m = doc["median"]
    return [
        _ratio_row(
            "W1",
            _f(m["ratio_of_medians"]),
            baseline=_f(m["baseline_mb_s"]),
            measured=_f(m["wal_mb_s"]),
            unit="MB/s",
            absolute=f"WAL {m['wal_mb_s']:.0f} vs baseline {m['baseline_mb_s']:.0f} MB/s; "
            f"ack p99 {m['wal_lat_p99_ms']:.1f} ms",
        )
    ]


def _v1(doc: Doc) -> list[Row]:
    m = doc["median"]
    return [
        _ratio_row(
            "V1",
            _f(m["ratio_of_medians"]),
            baseline=_f(m["duckdb_mb_s"]),
            measured=_f(m["edgemq_mb_s"]),
            unit="MB/s",
            absolute=f"edgemq {m['edgemq_mb_s']:.0f} vs DuckDB {m['duckdb_mb_s']:.0f} MB/s",
        )
    ]


def _http(doc: Doc) -> list[Row]:
    rows: list[Row] = []
    if "h1" in doc:
        m = doc["h1"]["median"]
        rows.append(
            _ratio_row(
                "H1",
                _f(m["ratio_records_s"]),
                baseline=_f(m["plain_records_s"]),
                measured=_f(m["node_records_s"]),
                unit="records/s",
                absolute=f"node {_k(m['node_records_s'])} vs plain "
                f"{_k(m['plain_records_s'])} rec/s",
            )
        )
    if "h2" in doc:
        m = doc["h2"]["median"]
        r, p99 = _f(m["ratio_req_s"]), _f(m["p99_ratio"])
        met = r >= _min("H2") and p99 <= H2_P99_RATIO_MAX
        rows.append(
            _row(
                "H2",
                ratio=r,
                ratio_text=f"{r:.2f}; p99 {p99:.2f}×",
                baseline=_f(m["plain_req_s"]),
                measured=_f(m["node_req_s"]),
                unit="req/s",
                met=met,
                absolute=f"node {_k(m['node_req_s'])} vs plain {_k(m['plain_req_s'])} req/s; "
                f"p99 {m['node_p99_ms']:.1f} vs {m['plain_p99_ms']:.1f} ms",
            )
        )
    if "e1" in doc:
        e = doc["e1"]
        r = _f(e["ratio"])
        bounded = bool(e.get("bounded"))
        rows.append(
            _row(
                "E1",
                ratio=r,
                ratio_text=f"{r:.2f}",
                baseline=_f(e["h1_node_records_s"]),
                measured=_f(e["records_s"]),
                unit="records/s",
                met=r >= _min("E1") and bounded,
                absolute=f"{_k(e['records_s'])} vs H1 {_k(e['h1_node_records_s'])} rec/s; "
                f"backlog {'bounded' if bounded else 'NOT bounded'}",
            )
        )
    return rows


def _mqtt(doc: Doc) -> list[Row]:
    rows: list[Row] = []
    for key in ("m0", "m1", "m2"):
        if key not in doc:
            continue
        m = doc[key]["median"]
        base = "amqtt" if key == "m2" else "mosquitto"
        r = _f(m["ratio"])
        text = f"{r:.1f}×" if key == "m2" else f"{r:.2f}"
        rows.append(
            _row(
                key.upper(),
                ratio=r,
                ratio_text=text,
                baseline=_f(m[f"{base}_msg_s"]),
                measured=_f(m["node_msg_s"]),
                unit="msg/s",
                met=bool(doc[key]["met"]),
                absolute=f"node {_k(m['node_msg_s'])} vs {base} {_k(m[f'{base}_msg_s'])} msg/s",
            )
        )
    if "r1" in doc:
        r1 = doc["r1"]
        node = r1["node"]
        mosq = r1.get("mosquitto") or {}
        context = f" (Mosquitto {mosq['kib_per_connection']:.1f})" if mosq else ""
        rows.append(
            _row(
                "R1",
                ratio_text="—",
                baseline=_f(mosq.get("kib_per_connection")),
                measured=_f(node["kib_per_connection"]),
                unit="KiB/connection",
                met=bool(r1["met"]),
                absolute=f"{node['kib_per_connection']:.1f} KiB/conn{context}, "
                f"{node['connections']} connections",
            )
        )
    return rows


def _r2(doc: Doc) -> list[Row]:
    m = doc["median"]
    wal = doc["config"]["wal_mib"]
    return [
        _row(
            "R2",
            name=f"restart with {wal:g} MiB of unshipped WAL",
            ratio=_f(m["ratio"]),
            ratio_text=f"{m['ratio']:.2f} (vs empty WAL)",
            baseline=_f(m["empty_ingest_s_median"]),
            measured=_f(m["full_ingest_s_median"]),
            unit="s",
            met=bool(doc["met"]),
            absolute=f"first durable ingest {m['full_ingest_s_median']:.2f} s (max "
            f"{m['full_ingest_s_max']:.2f}) vs {m['empty_ingest_s_median']:.2f} s empty",
        )
    ]


def _control(doc: Doc) -> list[Row]:
    rows: list[Row] = []
    for store, s in doc["stores"].items():
        if "error" in s:
            failed = f"failed: {s['error'][:120]}"
            for rid in ("C1", "C2"):
                rows.append(_row(rid, name=f"{TARGETS[rid].name} ({store})", status=failed))
            continue
        ex, t = s["exchange"], s["targets"]
        c, b = ex["control"], ex["baseline"]
        rows.append(
            _row(
                "C1",
                name=f"{TARGETS['C1'].name} ({store})",
                ratio=_f(ex["ratio"]),
                ratio_text=f"{ex['ratio']:.2f}",
                baseline=_f(b["req_s_median"]),
                measured=_f(c["req_s_median"]),
                unit="req/s",
                met=bool(t["exchange_met"]),
                absolute=f"{c['req_s_median']:.0f} vs baseline {b['req_s_median']:.0f} req/s",
            )
        )
        worst = s["worst_list_query"]
        lq = s["list"][worst]
        rows.append(
            _row(
                "C2",
                name=f"{TARGETS['C2'].name} ({store})",
                ratio=_f(lq["p99_ratio"]),
                ratio_text=f"{lq['p99_ratio']:.1f}× p99",
                baseline=_f(lq["baseline"]["p99_ms"]),
                measured=_f(lq["control"]["p99_ms"]),
                unit="ms p99",
                met=bool(t["list_met"]),
                absolute=f"p99 {lq['control']['p99_ms']:.1f} vs baseline "
                f"{lq['baseline']['p99_ms']:.1f} ms",
            )
        )
    return rows


EXTRACTORS: dict[str, Callable[[Doc], list[Row]]] = {
    "wal_append": _w1,
    "view_materialize": _v1,
    "control_api": _control,
    "http_ingest": _http,
    "mqtt_ingest": _mqtt,
    "restart_recovery": _r2,
}


def rows_from(
    script: str,
    expected: Sequence[str],
    doc: Doc | None,
    *,
    status: str,
    command: str,
    duration_s: float,
) -> list[Row]:
    """The rows of one script run, in the order of the `expected` target ids: those
    the run did not produce are reported with its `status` (failed, timeout), or as not
    run when the script succeeded without them (its arguments skipped them)."""
    rows: list[Row] = []
    if doc is not None:  # a failed run may still have written part of its results
        extract = EXTRACTORS[script]
        try:
            rows = extract(doc)
        except (KeyError, TypeError, ValueError) as err:
            if status == "ok":
                status = f"failed (unreadable JSON: {err!r})"
    seen = {r.id for r in rows}
    absent = "not run (not in this profile)" if status == "ok" else status
    rows += [_row(rid, status=absent) for rid in expected if rid not in seen]
    order = {rid: i for i, rid in enumerate(expected)}
    rows.sort(key=lambda r: order.get(r.id, len(order)))
    extra = {"script": script, "command": command, "duration_s": round(duration_s, 1)}
    return [Row(**{**asdict(r), **extra}) for r in rows]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_table(rows: list[Row]) -> str:
    lines = [
        "| Id | Benchmark | Target | Measured ratio | Absolute figures | Met |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.status != "ok":
            ratio, absolute, met = "—", r.status, "n/a"
        else:
            ratio = r.ratio_text or (f"{r.ratio:.2f}" if r.ratio is not None else "—")
            absolute = r.absolute
            met = "yes" if r.met else "**no**"
        cells = [r.id, r.name, r.target, ratio, absolute, met]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def render_block(report: Mapping[str, Any], rows: list[Row]) -> str:
    """The Markdown that goes between the README's markers: a line of context + table."""
    m = report["machine"]
    met = sum(1 for r in rows if r.met)
    head = (
        f"`edgemq bench --{report['profile']}` on {report['date']} (commit "
        f"{m['git_commit'][:10]}{' + local changes' if m.get('git_dirty') else ''}; "
        f"{m['cpu_count']} CPUs, Linux {m['kernel']}, Python {m['python']}; load average "
        f"{m['loadavg_start']} at the start, {m['loadavg_end']} at the end; "
        f"{report['duration_s'] / 60:.1f} min). {met} of {len(rows)} targets met. "
        f"Figures and commands: `benchmarks/results/{report['date']}.json`."
    )
    return f"{head}\n\n{render_table(rows)}"


def replace_block(readme: str, block: str) -> str:
    """`readme` with the text between the markers replaced by `block`; without markers,
    a "Latest report" section holding them goes after the first heading (the top)."""
    wrapped = f"{START}\n{block.rstrip()}\n{END}"
    pattern = re.compile(re.escape(START) + r".*?" + re.escape(END), re.S)
    if pattern.search(readme):
        return pattern.sub(lambda _: wrapped, readme, count=1)
    section = f"## Latest report\n\n{wrapped}\n"
    lines = readme.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith("# "):
            return (
                "".join(lines[: i + 1])
                + "\n"
                + section
                + "\n"
                + "".join(lines[i + 1 :]).lstrip("\n")
            )
    return section + "\n" + readme
