"""Turn one sealed segment into the files delivery uploads (DESIGN.md §6).

`build_artifacts` is BLOCKING (file I/O, zstd, Arrow, Parquet, DuckDB): delivery runs
it in a worker thread. It reads the segment file once, decodes every frame, and
writes into its own build directory `build_path(work_dir, endpoint_id, epoch, seq)`:

- `segments`       → `segment.wal.zst`: zstd of the segment bytes, streamed in chunks;
- `parquet`        → `raw.parquet`: one row per frame (`compiler.parquet.raw_table`);
- `parquet_views`  → per binding, one typed Parquet file per non-empty partition and a
                     DLQ Parquet file when the view sent rows to the DLQ.

The raw Parquet (and the zstd of the segment) are written in a helper thread while
the views run in the calling thread: zstd, Parquet encoding and DuckDB all release the
GIL. So one build uses up to two threads plus the sandbox's DuckDB threads.

Every artifact's size and SHA-256 are computed by reading back the written file.
The caller uploads the files and then removes the build directory with `cleanup`;
when `build_artifacts` raises, it has already removed it. A leftover directory from a
crashed attempt is replaced on the next attempt.

Errors:

    ArtifactError
    ├── SegmentCorrupt      a frame fails its length/CRC/FMT check, or the file does
    │                       not hold what the WAL sealed: the segment cannot be built
    └── RequiredViewFailed  an `is_required` view failed to run: the commit is blocked

An optional view that fails is recorded in its `ViewOutcome` (`error_code`,
`error_message`, all counts 0) and contributes no files. Error codes:
`definition_invalid`, `view_timeout`, `sandbox_error`, `view_execution_failed`.
OSError (disk full, unreadable segment) propagates unchanged.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

import pyarrow as pa
import zstandard

from compiler.definition import parse_definition
from compiler.errors import CompilerError, DefinitionInvalid, SandboxError, ViewTimeout
from compiler.materialize import materialize_view
from compiler.parquet import SegmentTable, raw_table, segment_table, write_parquet
from compiler.sandbox import SandboxLimits
from wal.columns import SegmentColumns, decode_columns
from wal.errors import FrameError
from wal.reader import iter_frames
from wal.segment import SealedSegment

from . import layout
from .snapshot import Binding, Endpoint

OUTPUT_FORMATS = frozenset({"segments", "parquet", "parquet_views"})
KINDS = ("segment", "parquet", "view", "dlq")
CONTENT_TYPE_ZSTD = "application/zstd"
CONTENT_TYPE_PARQUET = "application/vnd.apache.parquet"
IO_CHUNK_BYTES = 1024 * 1024
ERROR_MESSAGE_CHARS_MAX = 1000

T = TypeVar("T")


# ------------------------------------------------------------------ results
@dataclass(frozen=True, slots=True)
class Artifact:
    """One file to upload: `path` holds exactly the bytes to store under `key`."""

    kind: str  # "segment" | "parquet" | "view" | "dlq"
    key: str
    path: str
    bytes: int
    rows: int | None
    sha256: str
    content_type: str
    metadata: Mapping[str, str]
    view_id: str | None = None


@dataclass(frozen=True, slots=True)
class ViewOutcome:
    """What one bound view did with the segment (processed = accepted + dropped + dlq)."""

    view_id: str
    view_name: str
    view_version: int
    is_required: bool
    processed: int
    accepted: int
    dropped: int
    dlq: int
    error_code: str | None = None
    error_message: str | None = None
    dlq_key: str | None = None
    dlq_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class SegmentArtifacts:
    artifacts: tuple[Artifact, ...]
    views: tuple[ViewOutcome, ...]
    frames: int
    first_ts_ms: int  # ts of the first frame (not the minimum)
    last_ts_ms: int  # ts of the last frame
    wal_bytes: int
    timings_ms: Mapping[str, float]
    work_path: str = ""  # the build directory; `cleanup` removes it


# ------------------------------------------------------------------- errors
class ArtifactError(Exception):
    """Base class of every error this module raises on purpose."""


class SegmentCorrupt(ArtifactError):
    """The sealed segment at `path` holds a bad frame at byte `offset`."""

    def __init__(self, path: str, offset: int, reason: str) -> None:
        super().__init__(f"segment {path}: bad frame at offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class RequiredViewFailed(ArtifactError):
    """A required view could not run over the segment; its commit must wait."""

    def __init__(self, view_id: str, code: str, message: str) -> None:
        super().__init__(f"required view {view_id} failed ({code}): {message}")
        self.view_id = view_id
        self.code = code
        self.message = message


# ------------------------------------------------------------------ helpers
def build_path(work_dir: str, endpoint_id: str, epoch: int, seq: int) -> str:
    """The build directory of one segment; unique per (endpoint, epoch, seq)."""
    layout.check_component("endpoint_id", endpoint_id)
    return os.path.join(work_dir, f"{endpoint_id}-{int(epoch)}-{int(seq):08d}")


def cleanup(built: SegmentArtifacts) -> None:
    """Remove the build directory and every artifact file in it (after upload)."""
    if built.work_path:
        shutil.rmtree(built.work_path, ignore_errors=True)


def file_digest(path: str) -> tuple[int, str]:
    """(size in bytes, SHA-256 hex) of a file, read back in chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(IO_CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _timed(fn: Callable[[], T]) -> tuple[T, float]:
    t0 = time.perf_counter()
    result = fn()
    return result, (time.perf_counter() - t0) * 1000


def _error_code(err: Exception) -> str:
    if isinstance(err, DefinitionInvalid):
        return "definition_invalid"
    if isinstance(err, ViewTimeout):
        return "view_timeout"
    if isinstance(err, SandboxError):
        return "sandbox_error"
    return "view_execution_failed"


def _frame_offset(buf: bytes, index: int) -> int:
    """Byte offset of frame `index` (error path only: walks the segment again)."""
    for i, (offset, _) in enumerate(iter_frames(buf)):
        if i == index:
            return offset
    return len(buf)


# ------------------------------------------------------------------- builder
@dataclass(slots=True)
class _Build:
    segment: SealedSegment
    endpoint_id: str
    node_id: str
    region: str
    prefix: str
    path: str
    limits: SandboxLimits
    zstd_level: int

    def _artifact(
        self, kind: str, key: str, path: str, rows: int | None, view_id: str | None = None
    ) -> Artifact:
        size, sha256 = file_digest(path)
        parquet = kind != "segment"
        return Artifact(
            kind=kind,
            key=key,
            path=path,
            bytes=size,
            rows=rows,
            sha256=sha256,
            content_type=CONTENT_TYPE_PARQUET if parquet else CONTENT_TYPE_ZSTD,
            metadata={"sha256": sha256, "source": self.segment.name},
            view_id=view_id,
        )

    def decode(self, buf: bytes) -> SegmentColumns:
        try:
            cols = decode_columns(buf)
        except FrameError as err:
            raise SegmentCorrupt(self.segment.path, err.offset, err.reason) from err
        assert len(cols) > 0, f"{self.segment.path}: the WAL never seals an empty segment"
        if self.segment.frames is not None and self.segment.frames != len(cols):
            raise SegmentCorrupt(
                self.segment.path,
                len(buf),
                f"sealed with {self.segment.frames} frames, the file holds {len(cols)}",
            )
        latest = max(cols.ts_ms)
        if latest > layout.TS_MS_MAX:
            index = cols.ts_ms.index(latest)
            raise SegmentCorrupt(
                self.segment.path, _frame_offset(buf, index), f"timestamp {latest} ms is past 9999"
            )
        return cols

    def segment_file(self, buf: bytes) -> Artifact:
        out = os.path.join(self.path, "segment.wal.zst")
        cctx = zstandard.ZstdCompressor(level=self.zstd_level, write_checksum=True)
        view = memoryview(buf)
        with (
            open(out, "wb") as f,
            cctx.stream_writer(f, size=len(buf), closefd=False) as writer,
        ):
            for start in range(0, len(buf), IO_CHUNK_BYTES):
                writer.write(view[start : start + IO_CHUNK_BYTES])
        key = layout.segment_key(self.prefix, self.region, *self._ids)
        return self._artifact("segment", key, out, rows=None)

    @property
    def _ids(self) -> tuple[str, str, int, int]:
        """(endpoint_id, node_id, epoch, seq): the tail of every key."""
        return self.endpoint_id, self.node_id, self.segment.epoch, self.segment.seq

    def raw_parquet(self, table: SegmentTable, first_ts_ms: int) -> Artifact:
        out = os.path.join(self.path, "raw.parquet")
        write_parquet(raw_table(table, endpoint_id=self.endpoint_id, node_id=self.node_id), out)
        key = layout.raw_parquet_key(self.prefix, self.region, *self._ids, first_ts_ms)
        return self._artifact("parquet", key, out, rows=table.rows)

    def view(
        self, index: int, binding: Binding, table: SegmentTable
    ) -> tuple[ViewOutcome, list[Artifact]]:
        name, version, view_id = binding.view_name, binding.view_version, binding.view_id
        try:
            result = materialize_view(parse_definition(binding.definition), table, self.limits)
        except (CompilerError, pa.ArrowException) as err:
            code, message = _error_code(err), str(err)[:ERROR_MESSAGE_CHARS_MAX]
            if binding.is_required:
                raise RequiredViewFailed(view_id, code, message) from err
            failed = ViewOutcome(view_id, name, version, binding.is_required, 0, 0, 0, 0)
            return replace(failed, error_code=code, error_message=message), []
        files: list[Artifact] = []
        for part_index, part in enumerate(result.files):
            if part.table.num_rows == 0:
                continue
            out = os.path.join(self.path, f"view-{index:03d}-{part_index:04d}.parquet")
            write_parquet(part.table, out)
            key = layout.view_key(self.prefix, name, version, part.folders, *self._ids)
            files.append(self._artifact("view", key, out, part.table.num_rows, view_id))
        dlq: Artifact | None = None
        if result.dlq.num_rows:
            out = os.path.join(self.path, f"dlq-{index:03d}.parquet")
            write_parquet(result.dlq, out)
            key = layout.dlq_key(self.prefix, name, version, *self._ids)
            dlq = self._artifact("dlq", key, out, result.dlq.num_rows, view_id)
            files.append(dlq)
        c = result.counts
        assert c.processed == c.accepted + c.dropped + c.dlq
        assert c.accepted == sum(a.rows or 0 for a in files if a.kind == "view")
        outcome = ViewOutcome(
            view_id, name, version, binding.is_required, c.processed, c.accepted, c.dropped, c.dlq
        )
        if dlq is not None:
            outcome = replace(outcome, dlq_key=dlq.key, dlq_bytes=dlq.bytes)
        return outcome, files


def build_artifacts(
    segment: SealedSegment,
    *,
    endpoint: Endpoint,
    bindings: Sequence[Binding],
    output_formats: Sequence[str],
    node_id: str,
    region: str,
    prefix: str,
    work_dir: str,
    limits: SandboxLimits,
    zstd_level: int = 1,
) -> SegmentArtifacts:
    """Build every artifact of `segment` for the given formats and bindings (blocking).

    Raises SegmentCorrupt, RequiredViewFailed, ValueError for an unknown output format
    or an id that cannot be part of a key, OSError for I/O failures.
    """
    unknown = set(output_formats) - OUTPUT_FORMATS
    if unknown:
        raise ValueError(f"unknown output formats {sorted(unknown)}")
    path = build_path(work_dir, endpoint.id, segment.epoch, segment.seq)
    shutil.rmtree(path, ignore_errors=True)  # the leftovers of an attempt that crashed
    os.makedirs(path)
    build = _Build(segment, endpoint.id, node_id, region, prefix, path, limits, zstd_level)
    try:
        return _run(build, set(output_formats), bindings)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def _run(build: _Build, formats: set[str], bindings: Sequence[Binding]) -> SegmentArtifacts:
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    with open(build.segment.path, "rb") as f:
        buf, timings["read"] = _timed(f.read)
    run_views = "parquet_views" in formats and bool(bindings)
    artifacts: list[Artifact] = []
    outcomes: list[ViewOutcome] = []
    # Two helper threads: zstd of the segment and the raw Parquet, while this thread
    # decodes and runs the views. Leaving the `with` waits for them, also on errors.
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="artifacts") as helper:
        segment_job = (
            helper.submit(_timed, lambda: build.segment_file(buf))
            if "segments" in formats
            else None
        )
        t0 = time.perf_counter()
        cols = build.decode(buf)
        table: SegmentTable | None = None
        if "parquet" in formats or run_views:
            table = segment_table(
                messages=cols.message,
                ts_ms=cols.ts_ms,
                topics=cols.topic,
                tenants=cols.tenant,
                fmts=cols.fmt,
                segment_seq=build.segment.seq,
            )
        timings["decode"] = (time.perf_counter() - t0) * 1000
        first_ts_ms, last_ts_ms = cols.ts_ms[0], cols.ts_ms[-1]
        parquet_job = None
        if "parquet" in formats:
            assert table is not None
            raw_input = table
            parquet_job = helper.submit(_timed, lambda: build.raw_parquet(raw_input, first_ts_ms))
        if run_views:
            assert table is not None
            t0 = time.perf_counter()
            for index, binding in enumerate(bindings):
                outcome, files = build.view(index, binding, table)
                outcomes.append(outcome)
                artifacts.extend(files)
            timings["views"] = (time.perf_counter() - t0) * 1000
        if segment_job is not None:
            segment_artifact, timings["segments"] = segment_job.result()
            artifacts.insert(0, replace(segment_artifact, rows=len(cols)))
        if parquet_job is not None:
            raw_artifact, timings["parquet"] = parquet_job.result()
            artifacts.insert(1 if segment_job is not None else 0, raw_artifact)
    timings["total"] = (time.perf_counter() - t_start) * 1000
    keys = [a.key for a in artifacts]
    assert len(set(keys)) == len(keys), f"two artifacts share a key: {keys}"
    return SegmentArtifacts(
        artifacts=tuple(artifacts),
        views=tuple(outcomes),
        frames=len(cols),
        first_ts_ms=first_ts_ms,
        last_ts_ms=last_ts_ms,
        wal_bytes=len(buf),
        timings_ms={k: round(v, 3) for k, v in timings.items()},
        work_path=build.path,
    )
