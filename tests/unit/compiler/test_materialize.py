import io
import json

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compiler.definition import parse_definition
from compiler.materialize import HIVE_NULL, materialize_view
from compiler.parquet import parquet_bytes, raw_table, segment_table
from compiler.sandbox import SandboxLimits

LIMITS = SandboxLimits(memory_limit_mib=256, threads=1, deadline_s=10)


def _segment(payloads: list[bytes], topics: list[str | None] | None = None):  # type: ignore[no-untyped-def]
    n = len(payloads)
    return segment_table(
        messages=payloads,
        ts_ms=[1_705_312_600_000 + i for i in range(n)],
        topics=topics or [None] * n,
        tenants=[42] * n,
        fmts=[0 if topics is None else 1] * n,
        segment_seq=17,
    )


DEFINITION = parse_definition(
    {
        "columns": [
            {"name": "user_id", "type": "VARCHAR", "path": "$.userId", "required": True},
            {"name": "event_type", "type": "VARCHAR", "path": "$.event"},
            {"name": "amount", "type": "DOUBLE", "path": "$.amount", "cast_failures": "dlq"},
            {"name": "qty", "type": "INTEGER", "path": "$.qty", "cast_failures": "drop"},
            {"name": "n", "type": "INTEGER", "path": "$.n"},
        ],
        "filters": [{"condition": "event_type != 'heartbeat'"}],
    }
)


def test_every_row_gets_exactly_one_outcome() -> None:
    payloads = [
        b'{"userId":"u1","event":"buy","amount":"9.5","qty":2,"n":"x"}',  # accepted, n null
        b'{"userId":"u2","event":"heartbeat"}',  # dropped: filter
        b"not json",  # dlq: invalid_json
        b'{"event":"buy"}',  # dlq: required_missing
        b'{"userId":"u3","amount":"lots"}',  # dlq: cast_failed amount
        b'{"userId":"u4","qty":"many"}',  # dropped: cast_failed qty
        b'{"userId":null}',  # dlq: required_missing (null)
        b"\xff\xfe",  # dlq: invalid_json (not UTF-8)
    ]
    result = materialize_view(DEFINITION, _segment(payloads), LIMITS)
    assert (result.counts.processed, result.counts.accepted) == (8, 1)
    assert (result.counts.dropped, result.counts.dlq) == (2, 5)
    [file] = result.files
    assert file.folders == ()
    assert file.table.to_pylist() == [
        {"user_id": "u1", "event_type": "buy", "amount": 9.5, "qty": 2, "n": None}
    ]
    reasons = [
        (r["frame_index"], r["reason"]["code"], r["reason"]["column"])
        for r in result.dlq.to_pylist()
    ]
    assert reasons == [
        (2, "invalid_json", None),
        (3, "required_missing", "user_id"),
        (4, "cast_failed", "amount"),
        (6, "required_missing", "user_id"),
        (7, "invalid_json", None),
    ]
    dlq = {r["frame_index"]: r for r in result.dlq.to_pylist()}
    assert dlq[2]["payload"] == "not json"
    assert dlq[7]["payload"] is None
    assert dlq[7]["payload_bytes"] == b"\xff\xfe"
    assert dlq[4]["segment_seq"] == 17
    assert dlq[4]["ts"].year == 2024


def test_partitions_write_one_file_per_value_in_hive_folders() -> None:
    definition = parse_definition(
        {
            "columns": [
                {"name": "at", "type": "TIMESTAMP", "path": "$.at"},
                {"name": "site", "type": "VARCHAR", "path": "$.site"},
            ],
            "partitions": [{"column": "at", "transform": "day"}, {"column": "site"}],
        }
    )
    payloads = [
        json.dumps({"at": "2026-01-15T23:59:00Z", "site": "a/b"}).encode(),
        json.dumps({"at": "2026-01-16T00:30:00+02:00", "site": "a/b"}).encode(),
        json.dumps({"at": "2026-01-16T09:00:00Z", "site": None}).encode(),
    ]
    result = materialize_view(definition, _segment(payloads), LIMITS)
    folders = {f.folders: f.table.num_rows for f in result.files}
    assert folders == {
        ("at_day=2026-01-15", "site=a%2Fb"): 2,  # 00:30+02:00 is 22:30 UTC on the 15th
        ("at_day=2026-01-16", f"site={HIVE_NULL}"): 1,
    }


def test_topics_are_a_virtual_column_for_filters_and_outputs() -> None:
    definition = parse_definition(
        {
            "columns": [
                {"name": "t", "type": "VARCHAR", "source": "topic"},
                {"name": "temp", "type": "DOUBLE", "path": "$.temp"},
                {"name": "seq", "type": "UBIGINT", "source": "segment_seq"},
            ],
            "filters": [{"condition": "topic LIKE 'sensors/%'"}],
        }
    )
    result = materialize_view(
        definition,
        _segment([b'{"temp":1}', b'{"temp":2}'], topics=["sensors/a", "other/b"]),
        LIMITS,
    )
    assert result.files[0].table.to_pylist() == [{"t": "sensors/a", "temp": 1.0, "seq": 17}]
    assert (result.counts.accepted, result.counts.dropped) == (1, 1)


def test_view_and_raw_parquet_are_readable_by_duckdb() -> None:
    segment = _segment([b'{"userId":"u1","event":"e"}', b"\x00\xff"])
    raw = raw_table(segment, endpoint_id="ep1", node_id="node-a")
    data = parquet_bytes(raw)
    assert pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0).column(0).compression == "ZSTD"
    table = pq.read_table(io.BytesIO(data))
    con = duckdb.connect()
    con.register("raw_rows", table)
    rows = con.execute(
        "SELECT payload, payload_bytes, tenant, fmt, segment_seq, frame_index, endpoint_id, "
        "node_id FROM raw_rows ORDER BY frame_index"
    ).fetchall()
    assert rows == [
        ('{"userId":"u1","event":"e"}', None, 42, 0, 17, 0, "ep1", "node-a"),
        (None, b"\x00\xff", 42, 0, 17, 1, "ep1", "node-a"),
    ]
    assert table.schema.field("ts").type == pa.timestamp("ms", tz="UTC")


def test_the_publish_check_runs_a_probe_row_through_the_view() -> None:
    from compiler.errors import DefinitionInvalid
    from compiler.materialize import check_runs

    with pytest.raises(DefinitionInvalid, match="not a valid TIMESTAMP literal"):
        parse_definition(
            {
                "columns": [{"name": "timestamp", "type": "TIMESTAMP", "path": "$.ts"}],
                "filters": [{"condition": "timestamp > 'not a date'"}],
            }
        )
    good = parse_definition(
        {
            "columns": [{"name": "timestamp", "type": "TIMESTAMP", "path": "$.ts"}],
            "filters": [{"condition": "timestamp > '2026-01-01'"}],
        }
    )
    check_runs(good, LIMITS)


def test_a_filter_that_fails_on_one_row_drops_that_row_only() -> None:
    definition = parse_definition(
        {
            "columns": [{"name": "b", "type": "BIGINT", "path": "$.b"}],
            "filters": [{"condition": "round(b, -1) > 0"}],
        }
    )
    result = materialize_view(
        definition, _segment([b'{"b": 9223372036854775807}', b'{"b": 15}']), LIMITS
    )
    assert (result.counts.accepted, result.counts.dropped) == (1, 1)
