"""Preview: run a definition over sample payloads, shaped exactly like the reference's
`POST /v1/views/preview` response (camelCase keys)."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal
from typing import Any

import pyarrow as pa

from .definition import ViewDefinition, parse_definition
from .errors import DefinitionInvalid, Problem, ViewExecutionError
from .materialize import materialize_view
from .parquet import segment_table
from .sandbox import PREVIEW_LIMITS, SandboxLimits
from .sql import display_sql

SAMPLES_MAX = 100
SAMPLE_BYTES_MAX = 64 * 1024
SAMPLE_VALUES_MAX = 5


def check_samples(samples: Any) -> list[str]:
    if not isinstance(samples, list):
        raise DefinitionInvalid([Problem("samples", "must be an array of strings")])
    problems: list[Problem] = []
    if len(samples) > SAMPLES_MAX:
        problems.append(Problem("samples", f"at most {SAMPLES_MAX} samples"))
    for index, sample in enumerate(samples[:SAMPLES_MAX]):
        if not isinstance(sample, str):
            problems.append(Problem(f"samples[{index}]", "must be a string"))
        elif len(sample.encode("utf-8")) > SAMPLE_BYTES_MAX:
            problems.append(Problem(f"samples[{index}]", f"larger than {SAMPLE_BYTES_MAX} bytes"))
    if problems:
        raise DefinitionInvalid(problems)
    return samples


def json_value(value: Any) -> Any:
    """A DuckDB/Arrow value as the preview shows it."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)  # exact: JSON numbers would round
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, float) and value != value:  # NaN has no JSON form
        return None
    if hasattr(value, "hex") and type(value).__name__ == "UUID":
        return str(value)
    return value


def _rate(nulls: int, total: int) -> float | int:
    if total == 0 or nulls == 0:
        return 0
    if nulls == total:
        return 1
    return round(nulls / total, 4)


def run_preview(
    raw_definition: Any, samples: Any, *, limits: SandboxLimits = PREVIEW_LIMITS
) -> dict[str, Any]:
    """Blocking. DefinitionInvalid for a bad request (the API's 422); execution problems
    come back as `success: false` with `errors`."""
    definition: ViewDefinition = parse_definition(raw_definition)
    texts = check_samples(samples)
    compiled = display_sql(definition)
    started = time.perf_counter()
    now_ms = int(time.time() * 1000)
    segment = segment_table(
        messages=[t.encode("utf-8") for t in texts],
        ts_ms=[now_ms] * len(texts),
        topics=[None] * len(texts),
        tenants=[0] * len(texts),
        fmts=[0] * len(texts),
        segment_seq=0,
    )
    try:
        result = materialize_view(definition, segment, limits)
    except ViewExecutionError as err:
        return {
            "success": False,
            "rows": [],
            "columns": [],
            "rowCount": 0,
            "compiledSql": compiled,
            "warnings": [],
            "errors": [str(err)],
            "executionTimeMs": round((time.perf_counter() - started) * 1000, 1),
        }
    accepted = pa.concat_tables([f.table for f in result.files]) if result.files else None
    rows = (
        [{k: json_value(v) for k, v in row.items()} for row in accepted.to_pylist()]
        if accepted is not None
        else []
    )
    columns = []
    warnings: list[str] = []
    for column in definition.columns:
        values = [row[column.name] for row in rows]
        non_null = [v for v in values if v is not None]
        samples_seen: list[Any] = []
        for value in non_null:
            if value not in samples_seen:
                samples_seen.append(value)
            if len(samples_seen) == SAMPLE_VALUES_MAX:
                break
        nulls = len(values) - len(non_null)
        columns.append(
            {
                "name": column.name,
                "type": column.type.sql,
                "nullCount": nulls,
                "totalCount": len(values),
                "nullRate": _rate(nulls, len(values)),
                "sampleValues": samples_seen,
            }
        )
        if values and not non_null:
            warnings.append(f"column {column.name!r} is null in every accepted row")
    counts = result.counts
    filtered = sum(
        1
        for rule in result.classified["__rule"].to_pylist()
        if rule and result.plan.rule(rule).code == "filtered"
    )
    if counts.processed and filtered == counts.processed:
        warnings.append("the filters drop every sample")
    for row in result.dlq.to_pylist():
        reason = row["reason"]
        where = f" ({reason['column']})" if reason["column"] else ""
        warnings.append(
            f"sample {row['frame_index']} goes to the DLQ: {reason['code']}{where}: "
            f"{reason['message']}"
        )
    for rule in result.plan.rules:
        if rule.code == "cast_failed" and rule.outcome == "dropped":
            dropped = sum(1 for r in result.classified["__rule"].to_pylist() if r == rule.number)
            if dropped:
                warnings.append(f"{dropped} sample(s) dropped: {rule.message}")
    return {
        "success": True,
        "rows": rows,
        "columns": columns,
        "rowCount": len(rows),
        "compiledSql": compiled,
        "warnings": warnings,
        "errors": [],
        "executionTimeMs": round((time.perf_counter() - started) * 1000, 1),
    }
