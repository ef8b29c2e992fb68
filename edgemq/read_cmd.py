"""`edgemq read`: the records of an endpoint's COMMITTED segments, found by their
manifests (DESIGN.md §6: a manifest is written last, so a segment without one is not
committed and is never read).

For each manifest (ordered by node, epoch, seq) the segment object it lists is
streamed to disk (S3) or read in place (local store) while its SHA-256 is computed;
size and hash must match the manifest before any of its records is written, every
frame's CRC32C is checked while decoding, and the frame count must match too. One
segment is handled at a time. Exit codes: 0 done, 1 integrity failure (named object),
2 usage or access error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, BinaryIO

import msgspec
import zstandard

from ingest.objectstore.base import ObjectNotFound, StoreError
from wal.errors import FrameError
from wal.frame import FMT_TOPIC, split_topic_payload
from wal.reader import StreamReader, open_segment_stream

from .options import add_option, flag_default
from .progress import Progress, human_bytes
from .read_plan import IntegrityError, Planned, ReadOptions, parse_time, plan
from .read_source import S3Options, Source, open_source

FORMATS = ("ndjson", "raw")


@dataclass(slots=True)
class Summary:
    segments: int = 0
    records: int = 0
    bytes: int = 0


def _json_of(body: bytes) -> tuple[bytes, str]:
    """The payload as one line of JSON, and how it was encoded (json, utf-8, base64)."""
    try:
        value = msgspec.json.decode(body)
    except msgspec.DecodeError:
        pass
    else:
        if b"\n" in body or b"\r" in body:
            return msgspec.json.encode(value), "json"
        return body, "json"
    try:
        return msgspec.json.encode(body.decode("utf-8")), "utf-8"
    except UnicodeDecodeError:
        return msgspec.json.encode(base64.b64encode(body).decode("ascii")), "base64"


def emit_segment(path: str, out: BinaryIO, seg: Planned, opts: ReadOptions) -> tuple[int, int]:
    """Write the segment's records in [since, until) to `out` (blocking); returns
    (frames in the segment, records written). IntegrityError on a bad frame."""
    frames = written = 0
    try:
        with open_segment_stream(path) as stream:
            for offset, frame in StreamReader(stream):
                frames += 1
                if (opts.since_ms is not None and frame.ts_ms < opts.since_ms) or (
                    opts.until_ms is not None and frame.ts_ms >= opts.until_ms
                ):
                    continue
                topic, body = None, frame.payload
                if frame.fmt == FMT_TOPIC:
                    topic, body = split_topic_payload(frame.payload)
                if opts.format == "raw":
                    out.write(body + b"\n")
                elif opts.with_meta:
                    payload, encoding = _json_of(body)
                    out.write(
                        msgspec.json.encode(
                            {
                                "node_id": seg.node_id,
                                "epoch": seg.epoch,
                                "seq": seg.seq,
                                "offset": offset,
                                "ts_ms": frame.ts_ms,
                                "topic": topic,
                                "encoding": encoding,
                                "payload": msgspec.Raw(payload),
                            }
                        )
                        + b"\n"
                    )
                else:
                    out.write(_json_of(body)[0] + b"\n")
                written += 1
    except FrameError as err:
        raise IntegrityError(f"{seg.segment}: {err}") from None
    except zstandard.ZstdError as err:
        raise IntegrityError(f"{seg.segment}: not a valid zstd stream: {err}") from None
    return frames, written


async def read_records(
    source: Source, opts: ReadOptions, out: BinaryIO, progress: Progress
) -> Summary:
    summary = Summary()
    planned = await plan(source, opts, progress.manifests_read)
    progress.start_reading(len(planned), sum(p.bytes for p in planned))
    with tempfile.TemporaryDirectory(prefix="edgemq-read-") as scratch:
        for seg in planned:
            try:
                got = await source.fetch(seg.segment, scratch, progress.add_bytes)
            except ObjectNotFound:
                raise IntegrityError(
                    f"{seg.segment}: missing, but its manifest {seg.manifest} lists it"
                ) from None
            try:
                if got.size != seg.bytes:
                    raise IntegrityError(
                        f"{seg.segment}: {got.size} bytes, its manifest says {seg.bytes}"
                    )
                if got.sha256 != seg.sha256:
                    raise IntegrityError(
                        f"{seg.segment}: sha256 {got.sha256} does not match the manifest's "
                        f"{seg.sha256}"
                    )
                frames, written = await asyncio.to_thread(emit_segment, got.path, out, seg, opts)
                if frames != seg.frames:
                    raise IntegrityError(
                        f"{seg.segment}: {frames} frames, its manifest says {seg.frames}"
                    )
            finally:
                if got.temporary:
                    await asyncio.to_thread(os.remove, got.path)
            summary.segments += 1
            summary.records += written
            summary.bytes += got.size
            progress.segment_done()
    return summary


def _progress_enabled(mode: str) -> bool:
    if mode == "always":
        return True
    if mode == "never":
        return False
    return sys.stderr.isatty()


async def _run(args: argparse.Namespace, opts: ReadOptions, out: BinaryIO) -> Summary:
    source = open_source(
        args.destination,
        S3Options(
            endpoint_url=args.s3_endpoint_url or None,
            region=args.s3_region or None,
            addressing=args.s3_addressing,
            role_arn=args.role_arn or None,
            external_id=args.external_id or None,
        ),
    )
    progress = Progress(
        sys.stderr, total_segments=0, total_bytes=0, enabled=_progress_enabled(args.progress)
    )
    try:
        return await read_records(source, opts, out, progress)
    finally:
        progress.close()
        await source.close()


def run_read(args: argparse.Namespace) -> int:
    try:
        if args.format not in FORMATS:
            raise ValueError(f"--format must be one of {', '.join(FORMATS)}")
        if args.with_meta and args.format != "ndjson":
            raise ValueError("--with-meta needs --format ndjson")
        if not args.endpoint:
            raise ValueError("--endpoint is required")
        if not args.destination:
            raise ValueError("--destination is required")
        opts = ReadOptions(
            endpoint_id=args.endpoint,
            region=args.region or None,
            node_id=args.node or None,
            since_ms=parse_time(args.since) if args.since else None,
            until_ms=parse_time(args.until) if args.until else None,
            format=args.format,
            with_meta=args.with_meta,
        )
    except ValueError as err:
        print(f"edgemq read: {err}", file=sys.stderr)
        return 2
    target = args.output if args.output not in ("", "-") else None
    partial = f"{target}.partial" if target else None
    try:
        out: BinaryIO = open(partial, "wb") if partial else sys.stdout.buffer  # noqa: SIM115
        try:
            summary = asyncio.run(_run(args, opts, out))
            out.flush()
        finally:
            if partial:
                out.close()
        if partial and target:
            os.replace(partial, target)
    except BrokenPipeError:
        # `edgemq read … | head`: the reader left; exit quietly (and let the final
        # flush at interpreter exit go nowhere instead of failing again).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0
    except IntegrityError as err:
        print(f"edgemq read: integrity check failed: {err}", file=sys.stderr)
        return 1
    except (StoreError, ValueError, OSError) as err:
        print(f"edgemq read: {err}", file=sys.stderr)
        return 2
    if _progress_enabled(args.progress) or target:
        print(
            f"edgemq read: {summary.records} records from {summary.segments} committed "
            f"segments ({human_bytes(summary.bytes)})",
            file=sys.stderr,
        )
    return 0


def add_read_parser(commands: Any) -> None:
    """`edgemq read` (registered by edgemq.cli)."""
    read = commands.add_parser(
        "read",
        help="print or export the records of an endpoint's committed segments",
        description="Lists the endpoint's commit manifests under the destination, reads "
        "each segment they list (verifying size, SHA-256, every frame's CRC32C and the "
        "frame count) and writes its records, one segment at a time, ordered by node, "
        "epoch and seq. A segment without a manifest is not committed and is not read. "
        "--since/--until select by record time (frame ts). Exit 0 done, 1 integrity "
        "failure (the object is named), 2 usage or access error.",
    )
    add_option(
        read,
        "--destination",
        default="",
        help="file:///DIR (a local store's bucket directory, with the prefix) or "
        "s3://BUCKET/PREFIX",
    )
    add_option(read, "--endpoint", default="", help="endpoint id (required)")
    add_option(
        read, "--region", default="", help="the endpoint's region code; found by listing if empty"
    )
    add_option(read, "--node", default="", help="only segments of this node id")
    add_option(read, "--since", default="", help="records at or after: ISO 8601 with zone, or ms")
    add_option(read, "--until", default="", help="records before: ISO 8601 with zone, or ms")
    add_option(
        read, "--output", default="-", help="file to write (FILE.partial until done), - is stdout"
    )
    add_option(
        read,
        "--format",
        default="ndjson",
        help="ndjson (one JSON value per record; non-JSON payloads as strings) or raw "
        "(payload bytes and a newline)",
    )
    read.add_argument(
        "--with-meta",
        action="store_true",
        default=flag_default("--with-meta"),
        help="ndjson objects with node_id, epoch, seq, offset, ts_ms, topic, encoding and "
        "payload (env EDGEMQ_WITH_META=1)",
    )
    mode = os.environ.get("EDGEMQ_PROGRESS", "auto")
    read.add_argument(
        "--progress",
        dest="progress",
        action="store_const",
        const="always",
        default=mode if mode in ("auto", "always", "never") else "auto",
        help="progress bar on stderr even when it is not a terminal "
        "(env EDGEMQ_PROGRESS=auto|always|never; default: auto, shown on a terminal)",
    )
    read.add_argument(
        "--no-progress",
        dest="progress",
        action="store_const",
        const="never",
        help="no progress bar",
    )
    add_option(read, "--s3-endpoint-url", default="", help="S3-compatible endpoint (MinIO, …)")
    add_option(read, "--s3-region", default="", help="AWS region of the bucket")
    add_option(read, "--s3-addressing", default="auto", help="auto, path or virtual")
    add_option(
        read, "--role-arn", default="", help="assume this role first (default chain otherwise)"
    )
    add_option(read, "--external-id", default="", help="external id for --role-arn")
    read.set_defaults(func=run_read)
