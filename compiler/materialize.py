"""Run a view over one segment: typed rows (per partition), DLQ rows and counts.

Outcomes per row (processed = accepted + dropped + dlq), first matching rule wins:
1. the view reads JSON and the payload is not valid JSON → dlq `invalid_json`;
2. per column, in definition order: a `required` value missing or null (and no
   default) → dlq `required_missing`; a value that does not cast to the column type →
   dlq or dropped per `cast_failures` (`cast_failed`; with `null` the value becomes
   NULL, except on a required column, which goes to the DLQ);
3. the filters (ANDed) are not true → dropped `filtered`;
4. otherwise accepted.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from .definition import PartitionSpec, ViewDefinition
from .errors import ViewExecutionError
from .parquet import SegmentTable
from .sandbox import SandboxLimits, run_query
from .sql import ClassifyPlan, classify_sql

HIVE_NULL = "__HIVE_DEFAULT_PARTITION__"
PARTITIONS_PER_SEGMENT_MAX = 1000
_STRFTIME = {"year": "%Y", "month": "%Y-%m", "day": "%Y-%m-%d", "hour": "%Y-%m-%dT%H"}

DLQ_REASON = pa.struct(
    [
        pa.field("column", pa.string()),
        pa.field("code", pa.string()),
        pa.field("message", pa.string()),
    ]
)
DLQ_SCHEMA = pa.schema(
    [
        pa.field("payload", pa.string()),
        pa.field("payload_bytes", pa.binary()),
        pa.field("ts", pa.timestamp("ms", tz="UTC")),
        pa.field("topic", pa.string()),
        pa.field("tenant", pa.uint32()),
        pa.field("segment_seq", pa.uint64()),
        pa.field("frame_index", pa.uint64()),
        pa.field("reason", DLQ_REASON),
    ]
)


@dataclass(frozen=True, slots=True)
class ViewCounts:
    processed: int
    accepted: int
    dropped: int
    dlq: int


@dataclass(frozen=True, slots=True)
class PartitionFile:
    """Accepted rows of one partition; `folders` are Hive `key=value` path parts."""

    folders: tuple[str, ...]
    table: pa.Table


@dataclass(frozen=True, slots=True)
class ViewResult:
    files: tuple[PartitionFile, ...]
    dlq: pa.Table
    counts: ViewCounts
    classified: pa.Table  # every row with its outputs and `__rule` (preview uses it)
    plan: ClassifyPlan


def _rule_lookup(plan: ClassifyPlan) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
    """Arrays indexed by rule number (0 = accepted): outcome, column, code, message."""
    outcome = pa.array(["accepted", *(r.outcome for r in plan.rules)])
    column = pa.array([None, *(r.column for r in plan.rules)], pa.string())
    code = pa.array([None, *(r.code for r in plan.rules)], pa.string())
    message = pa.array([None, *(r.message for r in plan.rules)], pa.string())
    return outcome, column, code, message


def classify(
    definition: ViewDefinition, segment: SegmentTable, limits: SandboxLimits
) -> tuple[ClassifyPlan, pa.Table]:
    plan = classify_sql(definition)
    table = run_query(plan.sql, {"source": segment.source}, limits)
    if table.num_rows != segment.rows:
        raise ViewExecutionError(f"view returned {table.num_rows} rows for {segment.rows} frames")
    return plan, table


def materialize_view(
    definition: ViewDefinition, segment: SegmentTable, limits: SandboxLimits
) -> ViewResult:
    """Blocking (DuckDB + Arrow): run it off the event loop."""
    plan, table = classify(definition, segment, limits)
    outcome_of, column_of, code_of, message_of = _rule_lookup(plan)
    rules = table["__rule"].cast(pa.int32())
    outcome = pc.take(outcome_of, rules)
    accepted_mask = pc.equal(outcome, "accepted")
    dlq_mask = pc.equal(outcome, "dlq")
    accepted = table.select(list(plan.output_columns)).filter(accepted_mask)
    dlq_rows = table.select(
        ["raw", "ts", "topic", "tenant", "segment_seq", "frame_index", "__rule"]
    )
    dlq_rows = dlq_rows.filter(dlq_mask)
    dlq_rules = dlq_rows["__rule"].cast(pa.int32()).combine_chunks()
    frame_index = dlq_rows["frame_index"]
    dlq = pa.Table.from_arrays(
        [
            dlq_rows["raw"],
            pc.take(segment.payload_bytes, frame_index),
            dlq_rows["ts"].cast(pa.timestamp("ms")).cast(pa.timestamp("ms", tz="UTC")),
            dlq_rows["topic"],
            dlq_rows["tenant"],
            dlq_rows["segment_seq"],
            frame_index,
            pa.StructArray.from_arrays(
                [
                    pc.take(column_of, dlq_rules),
                    pc.take(code_of, dlq_rules),
                    pc.take(message_of, dlq_rules),
                ],
                fields=list(DLQ_REASON),
            ),
        ],
        schema=DLQ_SCHEMA,
    )
    n_accepted, n_dlq = accepted.num_rows, dlq.num_rows
    counts = ViewCounts(
        processed=table.num_rows,
        accepted=n_accepted,
        dropped=table.num_rows - n_accepted - n_dlq,
        dlq=n_dlq,
    )
    files = split_partitions(accepted, definition.partitions)
    return ViewResult(files, dlq, counts, table, plan)


def _partition_values(column: pa.ChunkedArray, spec: PartitionSpec) -> pa.ChunkedArray:
    if spec.transform == "identity":
        if pa.types.is_timestamp(column.type):
            seconds = column.cast(pa.timestamp("s", tz=column.type.tz), safe=False)
            return pc.strftime(seconds, "%Y-%m-%dT%H:%M:%S")
        return column.cast(pa.string())
    if pa.types.is_date(column.type):
        column = column.cast(pa.timestamp("s"))
    return pc.strftime(column, _STRFTIME[spec.transform])


def hive_folder(name: str, value: str | None) -> str:
    if value is None or value == "":
        return f"{name}={HIVE_NULL}"
    return f"{name}={urllib.parse.quote(value, safe='-_.')}"


def split_partitions(
    accepted: pa.Table, partitions: tuple[PartitionSpec, ...]
) -> tuple[PartitionFile, ...]:
    """One file per distinct partition value (Hive-style folders), in first-seen order."""
    if not partitions:
        return (PartitionFile((), accepted),) if accepted.num_rows else ()
    keys = [f"__p{i}" for i in range(len(partitions))]
    keyed = accepted
    for key, spec in zip(keys, partitions, strict=True):
        keyed = keyed.append_column(key, _partition_values(accepted[spec.column], spec))
    groups = keyed.group_by(keys, use_threads=False).aggregate([])
    if groups.num_rows > PARTITIONS_PER_SEGMENT_MAX:
        raise ViewExecutionError(
            f"segment spans {groups.num_rows} partitions (max {PARTITIONS_PER_SEGMENT_MAX})"
        )
    files: list[PartitionFile] = []
    for row in groups.to_pylist():
        mask = None
        for key in keys:
            value = row[key]
            part = pc.is_null(keyed[key]) if value is None else pc.equal(keyed[key], value)
            part = pc.fill_null(part, False)
            mask = part if mask is None else pc.and_(mask, part)
        folders = tuple(
            hive_folder(spec.folder_name, row[key])
            for key, spec in zip(keys, partitions, strict=True)
        )
        files.append(PartitionFile(folders, accepted.filter(mask)))
    return tuple(files)


def check_runs(definition: ViewDefinition, limits: SandboxLimits) -> None:
    """Run the view over a one-row segment (`{}`): catches what only the engine can,
    such as a timestamp literal it cannot parse, which DuckDB evaluates only when a row
    reaches the filter. Raises ViewExecutionError."""
    from .parquet import segment_table

    probe = segment_table(
        messages=[b"{}"], ts_ms=[0], topics=[None], tenants=[0], fmts=[0], segment_seq=0
    )
    materialize_view(definition, probe, limits)
