"""Which segments `edgemq read` reads: the endpoint's commit manifests, listed and
parsed strictly, each checked against the key it was found under (docs/adr/0011)."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass

from ingest.layout import manifest_key, segment_key
from ingest.manifest import ManifestError, parse_manifest
from ingest.objectstore.base import ObjectNotFound

from .read_source import Source

MANIFEST_FETCHES = 8
_MANIFEST = re.compile(r"([^/]+)/([^/]+)/commits/([^/]+)/(\d{1,19})/seg-(\d{8,19})\.json")
_NOT_REGIONS = frozenset({"views", "dlq"})


class IntegrityError(Exception):
    """A committed object does not match its manifest (exit 1)."""


@dataclass(frozen=True, slots=True)
class ReadOptions:
    endpoint_id: str
    region: str | None = None
    node_id: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    format: str = "ndjson"
    with_meta: bool = False


@dataclass(frozen=True, slots=True)
class Planned:
    """One committed segment to read (what its manifest promises)."""

    manifest: str
    node_id: str
    epoch: int
    seq: int
    segment: str
    bytes: int
    sha256: str
    frames: int
    first_ts_ms: int
    last_ts_ms: int


def parse_time(value: str) -> int:
    """Milliseconds since the epoch from an integer or an ISO 8601 time with a zone."""
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value!r} is neither milliseconds nor an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise ValueError(f"{value!r} needs a time zone (e.g. Z)")
    return int(moment.timestamp() * 1000)


async def _regions(source: Source, endpoint_id: str) -> list[str]:
    """The regions whose folder holds the endpoint (its id is unique to one region)."""
    found = []
    for name in await source.list_dirs(""):
        if name not in _NOT_REGIONS and endpoint_id in await source.list_dirs(f"{name}/"):
            found.append(name)
    return found


async def _plan_one(source: Source, key: str, opts: ReadOptions) -> Planned | None:
    match = _MANIFEST.fullmatch(key)
    if match is None or match.group(2) != opts.endpoint_id:
        return None  # not a manifest name (a stray file): nothing committed
    region, endpoint_id, node_id = match.group(1), match.group(2), match.group(3)
    epoch, seq = int(match.group(4)), int(match.group(5))
    if manifest_key("", region, endpoint_id, node_id, epoch, seq) != key:
        return None
    try:
        m = parse_manifest(await source.get_bytes(key))
    except ObjectNotFound:
        return None  # deleted between list and get: no longer committed
    except ManifestError as err:
        raise IntegrityError(f"{key}: {err}") from None
    if (m.region, m.endpoint_id, m.node_id, m.epoch, m.seq) != (
        region,
        endpoint_id,
        node_id,
        epoch,
        seq,
    ):
        raise IntegrityError(f"{key}: the manifest describes another segment")
    segments = [a for a in m.artifacts if a.kind == "segment"]
    if len(segments) != 1:
        raise IntegrityError(
            f"{key}: lists no segment object (the endpoint's output formats lack `segments`)"
        )
    artifact = segments[0]
    relative = segment_key("", region, endpoint_id, node_id, epoch, seq)
    if artifact.key != relative and not artifact.key.endswith("/" + relative):
        raise IntegrityError(f"{key}: segment key {artifact.key!r} is not {relative!r}")
    return Planned(
        key,
        node_id,
        epoch,
        seq,
        relative,
        artifact.bytes,
        artifact.sha256,
        m.frames,
        m.first_ts_ms,
        m.last_ts_ms,
    )


async def plan(
    source: Source, opts: ReadOptions, on_manifests: Callable[[int, int], None] | None = None
) -> list[Planned]:
    """The committed segments to read, ordered by (node, epoch, seq);
    `on_manifests(done, total)` follows the manifest reads."""
    regions = [opts.region] if opts.region else await _regions(source, opts.endpoint_id)
    keys: list[str] = []
    for region in regions:
        folder = f"{region}/{opts.endpoint_id}/commits/"
        keys += await source.list_keys(folder + (f"{opts.node_id}/" if opts.node_id else ""))
    planned: list[Planned] = []
    for start in range(0, len(keys), MANIFEST_FETCHES):
        batch = keys[start : start + MANIFEST_FETCHES]
        for p in await asyncio.gather(*(_plan_one(source, k, opts) for k in batch)):
            if p is None:
                continue
            if opts.since_ms is not None and p.last_ts_ms < opts.since_ms:
                continue
            if opts.until_ms is not None and p.first_ts_ms >= opts.until_ms:
                continue
            planned.append(p)
        if on_manifests is not None:
            on_manifests(start + len(batch), len(keys))
    planned.sort(key=lambda p: (p.node_id, p.epoch, p.seq))
    return planned
