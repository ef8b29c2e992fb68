"""ingest.manifest: build, encode, and a strict, total parser."""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingest.artifacts import Artifact, SegmentArtifacts, ViewOutcome
from ingest.manifest import (
    MANIFEST_BYTES_MAX,
    Manifest,
    ManifestError,
    build_manifest,
    encode_manifest,
    parse_manifest,
    utc_ms,
)

SHA = "ab" * 32
COMMITTED_AT = "2025-11-30T00:00:01.234Z"


def _artifact(kind: str, key: str, rows: int | None, view_id: str | None = None) -> Artifact:
    return Artifact(
        kind=kind,
        key=key,
        path=f"/work/{kind}",
        bytes=1234,
        rows=rows,
        sha256=SHA,
        content_type="application/vnd.apache.parquet",
        metadata={"sha256": SHA, "source": "seg-00000012.wal"},
        view_id=view_id,
    )


BUILT = SegmentArtifacts(
    artifacts=(
        _artifact("segment", "iad/ep-1/segments/node-a/3/seg-00000012.wal.zst", 9),
        _artifact("parquet", "iad/ep-1/parquet/dt=2025-11-29/node-a-3-00000012.parquet", 9),
        _artifact("view", "views/r/v2/at_day=2025-11-29/ep-1-node-a-3-00000012.parquet", 3, "v1"),
        _artifact("dlq", "dlq/r/v2/ep-1-node-a-3-00000012.parquet", 5, "v1"),
    ),
    views=(
        ViewOutcome("v1", "r", 2, True, 9, 3, 1, 5, dlq_key="dlq/r/v2/x.parquet", dlq_bytes=1),
        ViewOutcome("v2", "broken", 1, False, 0, 0, 0, 0, "definition_invalid", "bad columns"),
    ),
    frames=9,
    first_ts_ms=1_764_460_799_998,
    last_ts_ms=1_764_460_800_005,
    wal_bytes=4096,
    timings_ms={"decode": 1.5, "views": 20.25},
    work_path="/work",
)


def _manifest(**overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "endpoint_id": "ep-1",
        "node_id": "node-a",
        "region": "iad",
        "epoch": 3,
        "seq": 12,
        "built": BUILT,
        "committed_at": COMMITTED_AT,
        "timings_ms": {"upload": 7.0},
    }
    fields.update(overrides)
    return build_manifest(**fields)


def test_a_manifest_round_trips_through_its_bytes() -> None:
    manifest = _manifest()
    data = encode_manifest(manifest)
    parsed = parse_manifest(data)
    assert isinstance(parsed, Manifest)
    assert json.loads(msgspec.json.encode(parsed)) == json.loads(data) == manifest
    assert (parsed.version, parsed.epoch, parsed.seq, parsed.frames) == (1, 3, 12, 9)
    assert parsed.keys("dlq") == ("dlq/r/v2/ep-1-node-a-3-00000012.parquet",)
    assert len(parsed.keys()) == 4
    assert parsed.timings_ms == {"decode": 1.5, "upload": 7.0, "views": 20.25}
    assert parsed.views[1].error_code == "definition_invalid"


def test_view_ids_appear_only_on_view_and_dlq_artifacts() -> None:
    kinds = {a["kind"]: "view_id" in a for a in _manifest()["artifacts"]}
    assert kinds == {"segment": False, "parquet": False, "view": True, "dlq": True}


def test_encoding_is_deterministic_with_sorted_keys() -> None:
    data = encode_manifest(_manifest())
    assert data == encode_manifest(_manifest())
    assert data.endswith(b"}\n")
    assert b"\n" not in data[:-1]
    top = list(json.loads(data))
    assert top == sorted(top)


def test_a_retry_differs_only_in_committed_at_and_timings() -> None:
    first = json.loads(encode_manifest(_manifest()))
    retry = json.loads(
        encode_manifest(
            _manifest(committed_at="2025-11-30T00:05:00.000Z", timings_ms={"upload": 9.0})
        )
    )
    changed = {k for k in first if first[k] != retry[k]}
    assert changed == {"committed_at", "timings_ms"}


def test_utc_ms_formats_milliseconds_with_a_z() -> None:
    assert utc_ms(1_764_460_801_234) == COMMITTED_AT
    assert utc_ms(0) == "1970-01-01T00:00:00.000Z"


def test_encoding_an_invalid_manifest_raises_manifest_error() -> None:
    with pytest.raises(ManifestError):
        encode_manifest(_manifest(committed_at="yesterday"))
    with pytest.raises(ManifestError):
        encode_manifest({"version": 1, "stuff": object()})


Mutation = Callable[[dict[str, Any]], None]


def _set(path: tuple[Any, ...], value: Any) -> Mutation:
    def apply(m: dict[str, Any]) -> None:
        target: Any = m
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return apply


def _drop(path: tuple[Any, ...]) -> Mutation:
    def apply(m: dict[str, Any]) -> None:
        target: Any = m
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]

    return apply


MALFORMED: dict[str, Mutation] = {
    "missing committed_at": _drop(("committed_at",)),
    "missing artifact sha256": _drop(("artifacts", 0, "sha256")),
    "missing view counts": _drop(("views", 0, "dlq")),
    "missing rows": _drop(("artifacts", 1, "rows")),
    "unknown top-level field": _set(("extra",), 1),
    "unknown artifact field": _set(("artifacts", 0, "etag"), "x"),
    "version 2": _set(("version",), 2),
    "epoch as a string": _set(("epoch",), "3"),
    "seq as a bool": _set(("seq",), True),
    "frames as a float": _set(("frames",), 9.0),
    "no frames": _set(("frames",), 0),
    "negative wal bytes": _set(("wal_bytes",), -1),
    "negative artifact bytes": _set(("artifacts", 0, "bytes"), -5),
    "negative rows": _set(("artifacts", 0, "rows"), -1),
    "count past int64": _set(("first_ts_ms",), 2**63),
    "unknown kind": _set(("artifacts", 0, "kind"), "csv"),
    "key climbing out with ..": _set(("artifacts", 0, "key"), "iad/../../etc/passwd"),
    "key with an empty part": _set(("artifacts", 0, "key"), "iad//x"),
    "key with a leading slash": _set(("artifacts", 0, "key"), "/iad/x"),
    "empty key": _set(("artifacts", 0, "key"), ""),
    "sha256 not hex": _set(("artifacts", 0, "sha256"), "z" * 64),
    "sha256 upper case": _set(("artifacts", 0, "sha256"), "AB" * 32),
    "segment naming a view": _set(("artifacts", 0, "view_id"), "v1"),
    "view artifact without view_id": _drop(("artifacts", 2, "view_id")),
    "artifact of an unlisted view": _set(("artifacts", 2, "view_id"), "v9"),
    "duplicate artifact keys": _set(
        ("artifacts", 1, "key"), "dlq/r/v2/ep-1-node-a-3-00000012.parquet"
    ),
    "view listed twice": _set(("views", 1, "view_id"), "v1"),
    "counts that do not add up": _set(("views", 0, "processed"), 10),
    "is_required as an int": _set(("views", 0, "is_required"), 1),
    "negative timing": _set(("timings_ms", "decode"), -1.0),
    "timing as a string": _set(("timings_ms", "decode"), "1"),
    "committed_at without ms": _set(("committed_at",), "2025-11-30T00:00:01Z"),
    "committed_at not a date": _set(("committed_at",), "2025-13-40T00:00:01.000Z"),
    "node id with a slash": _set(("node_id",), "a/b"),
    "region ..": _set(("region",), ".."),
    "artifacts not a list": _set(("artifacts",), {}),
    "views null": _set(("views",), None),
}


@pytest.mark.parametrize("mutate", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_malformed_manifest_is_rejected(mutate: Mutation) -> None:
    manifest = copy.deepcopy(_manifest())
    mutate(manifest)
    with pytest.raises(ManifestError):
        parse_manifest(json.dumps(manifest).encode())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"null",
        b"[]",
        b"{}",
        b"{",
        b"\xff\xfe",
        b'"manifest"',
        b"[" * 100_000,
        b" " * (MANIFEST_BYTES_MAX + 1),
    ],
    ids=[
        "empty",
        "null",
        "array",
        "empty object",
        "truncated",
        "not utf-8",
        "string",
        "deep",
        "huge",
    ],
)
def test_bytes_that_are_no_manifest_are_rejected(data: bytes) -> None:
    with pytest.raises(ManifestError):
        parse_manifest(data)


def test_unicode_in_free_text_is_kept() -> None:
    manifest = _manifest()
    manifest["views"][1]["error_message"] = "colonne «température» — ✗"
    assert parse_manifest(encode_manifest(manifest)).views[1].error_message == (
        "colonne «température» — ✗"
    )


# -------------------------------------------------------------------- fuzzing
# derandomize=True: the examples come from a fixed seed, so every run (and every
# failure) is reproducible as is.
FUZZ = settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            found += _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _paths(v, (*prefix, i))
    return found


VALID = _manifest()
VALID_PATHS = _paths(VALID)


def _parses_or_rejects(data: bytes) -> None:
    with contextlib.suppress(ManifestError):
        parse_manifest(data)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_raise_nothing_but_manifest_error(data: bytes) -> None:
    _parses_or_rejects(data)


@FUZZ
@given(JSON)
def test_random_json_raises_nothing_but_manifest_error(value: Any) -> None:
    _parses_or_rejects(json.dumps(value).encode())


@FUZZ
@given(st.sampled_from(VALID_PATHS), JSON, st.booleans())
def test_a_valid_manifest_with_one_part_replaced_raises_nothing_but_manifest_error(
    path: tuple[Any, ...], value: Any, delete: bool
) -> None:
    manifest = copy.deepcopy(VALID)
    (_drop(path) if delete else _set(path, value))(manifest)
    _parses_or_rejects(json.dumps(manifest).encode())


@FUZZ
@given(st.data())
def test_a_valid_manifest_with_bytes_flipped_raises_nothing_but_manifest_error(
    data: st.DataObject,
) -> None:
    raw = bytearray(encode_manifest(VALID))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _parses_or_rejects(bytes(raw))
