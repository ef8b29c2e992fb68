"""Commit manifests: the JSON object that closes a segment's delivery (DESIGN.md §6).

Written LAST, after every artifact it names is stored: a reader that finds a manifest
may read every object it lists ("safe to read"). Schema version 1::

    {"version": 1, "endpoint_id", "node_id", "region", "epoch", "seq",
     "frames", "first_ts_ms", "last_ts_ms", "wal_bytes",
     "artifacts": [{"kind", "key", "bytes", "rows", "sha256", "view_id"?}],
     "views": [{"view_id", "view_name", "view_version", "is_required",
                "processed", "accepted", "dropped", "dlq",
                "error_code", "error_message"}],
     "timings_ms": {"<stage>": <ms>, ...},
     "committed_at": "YYYY-MM-DDTHH:MM:SS.mmmZ"}

`kind` is `segment | parquet | view | dlq`; `view_id` is present exactly on `view`
and `dlq` artifacts and names one of `views`. `first_ts_ms`/`last_ts_ms` are the
timestamps of the segment's first and last frames. A new field means a new version:
version 1 readers reject unknown fields.

Encoding is deterministic (sorted keys, compact, one trailing newline), but a retried
delivery usually writes different bytes for the same segment because `committed_at`
and the timings change. That is fine: the manifest is written last, an object PUT
replaces it atomically, and every artifact key it names is the same on every retry.

`parse_manifest` is strict and total: on any input it returns a `Manifest` or raises
`ManifestError` (a ValueError), never anything else (fuzzed by
tests/unit/ingest_delivery/test_manifest.py).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec

from .artifacts import SegmentArtifacts
from .layout import check_component, is_safe_key

MANIFEST_VERSION = 1
MANIFEST_BYTES_MAX = 16 * 1024 * 1024
CONTENT_TYPE = "application/json"
VIEW_KINDS = frozenset({"view", "dlq"})

Kind = Literal["segment", "parquet", "view", "dlq"]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
Text = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
Sha256 = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]{64}$")]
UtcMs = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")]


class ManifestError(ValueError):
    """The bytes are not a valid version 1 commit manifest."""


class ManifestArtifact(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    kind: Kind
    key: Key
    bytes: Count
    rows: Count | None
    sha256: Sha256
    view_id: Text | None = None

    def __post_init__(self) -> None:
        if not is_safe_key(self.key):
            raise ValueError(f"artifact key {self.key!r} has an empty, '.' or '..' part")
        if (self.kind in VIEW_KINDS) != (self.view_id is not None):
            raise ValueError(
                f"a {self.kind} artifact must {'' if self.kind in VIEW_KINDS else 'not '}name a view_id"
            )


class ManifestView(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    view_id: Text
    view_name: Text
    view_version: Count
    is_required: bool
    processed: Count
    accepted: Count
    dropped: Count
    dlq: Count
    error_code: Text | None
    error_message: str | None

    def __post_init__(self) -> None:
        if self.processed != self.accepted + self.dropped + self.dlq:
            raise ValueError("view outcome: processed != accepted + dropped + dlq")


class Manifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    version: Literal[1]
    endpoint_id: Text
    node_id: Text
    region: Text
    epoch: Count
    seq: Count
    frames: Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
    first_ts_ms: Count
    last_ts_ms: Count
    wal_bytes: Count
    artifacts: tuple[ManifestArtifact, ...]
    views: tuple[ManifestView, ...]
    timings_ms: dict[Text, float]
    committed_at: UtcMs

    def __post_init__(self) -> None:
        for name in ("endpoint_id", "node_id", "region"):
            check_component(name, getattr(self, name))
        dt.datetime.strptime(self.committed_at, "%Y-%m-%dT%H:%M:%S.%fZ")  # a real date
        keys = [a.key for a in self.artifacts]
        if len(set(keys)) != len(keys):
            raise ValueError("two artifacts share a key")
        view_ids = [v.view_id for v in self.views]
        if len(set(view_ids)) != len(view_ids):
            raise ValueError("a view is listed twice")
        for artifact in self.artifacts:
            if artifact.view_id is not None and artifact.view_id not in view_ids:
                raise ValueError(f"artifact {artifact.key!r} names an unlisted view")
        if any(not (math.isfinite(ms) and ms >= 0) for ms in self.timings_ms.values()):
            raise ValueError("timings must be finite and non-negative")

    def keys(self, kind: str | None = None) -> tuple[str, ...]:
        """The keys of the listed artifacts, of one kind or of all."""
        return tuple(a.key for a in self.artifacts if kind is None or a.kind == kind)


_DECODER = msgspec.json.Decoder(Manifest)


def utc_ms(ts_ms: int) -> str:
    """A millisecond timestamp as ISO-8601 UTC with milliseconds: `...T10:30:00.000Z`."""
    moment = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ts_ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def build_manifest(
    *,
    endpoint_id: str,
    node_id: str,
    region: str,
    epoch: int,
    seq: int,
    built: SegmentArtifacts,
    committed_at: str,
    timings_ms: Mapping[str, float],
) -> dict[str, Any]:
    """The manifest of a built segment; `timings_ms` (e.g. upload times) are merged
    over the build's own stage timings."""
    timings = {**built.timings_ms, **timings_ms}
    return {
        "version": MANIFEST_VERSION,
        "endpoint_id": endpoint_id,
        "node_id": node_id,
        "region": region,
        "epoch": epoch,
        "seq": seq,
        "frames": built.frames,
        "first_ts_ms": built.first_ts_ms,
        "last_ts_ms": built.last_ts_ms,
        "wal_bytes": built.wal_bytes,
        "artifacts": [
            {
                "kind": a.kind,
                "key": a.key,
                "bytes": a.bytes,
                "rows": a.rows,
                "sha256": a.sha256,
                **({"view_id": a.view_id} if a.view_id is not None else {}),
            }
            for a in built.artifacts
        ],
        "views": [
            {
                "view_id": v.view_id,
                "view_name": v.view_name,
                "view_version": v.view_version,
                "is_required": v.is_required,
                "processed": v.processed,
                "accepted": v.accepted,
                "dropped": v.dropped,
                "dlq": v.dlq,
                "error_code": v.error_code,
                "error_message": v.error_message,
            }
            for v in built.views
        ],
        "timings_ms": {k: round(float(v), 3) for k, v in sorted(timings.items())},
        "committed_at": committed_at,
    }


def encode_manifest(manifest: Mapping[str, Any]) -> bytes:
    """Sorted-key compact JSON plus a newline. The result is parsed back before it is
    returned, so an invalid manifest raises ManifestError here, never reaches a bucket."""
    try:
        data = msgspec.json.encode(manifest, order="sorted") + b"\n"
    except (msgspec.MsgspecError, TypeError, ValueError) as err:
        raise ManifestError(f"cannot encode the manifest: {err}") from err
    parse_manifest(data)
    return data


def parse_manifest(data: bytes) -> Manifest:
    """A version 1 manifest from its bytes; ManifestError for anything else."""
    try:
        if len(data) > MANIFEST_BYTES_MAX:
            raise ManifestError(f"manifest of {len(data)} bytes exceeds {MANIFEST_BYTES_MAX}")
        return _DECODER.decode(data)
    except ManifestError:
        raise
    except (msgspec.MsgspecError, ValueError, TypeError, RecursionError) as err:
        raise ManifestError(f"invalid commit manifest: {err}") from err
