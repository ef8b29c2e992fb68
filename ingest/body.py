"""HTTP ingest request bodies (DESIGN.md §3): content type → kind, bounded
decompression, split into records. Pure functions over bytes: the HTTP handler reads
the body under its own size limit and deadline, then calls
`split_records(decode_content(data, encoding, limits), content_kind(ctype), limits)`,
or `frame_records(...)` for the same records already framed for the WAL (one pass).

    BodyError(status, code, message, line)       one exception, the JSON error shape
      415 unsupported_media_type | unsupported_encoding
      413 body_too_large | record_too_large | too_many_records
      400 empty_body | bad_encoding | invalid_json | bad_recordio

Kinds: NDJSON (`application/x-ndjson`, `application/jsonl`, `application/ndjson`) is one
record per non-empty line (`\\n`, one trailing `\\r` stripped, whitespace-only lines
skipped, lines numbered from 1 counting blank ones); JSON (`application/json`) is the
whole body, surrounding whitespace stripped, as one record; RECORDIO
(`application/x-recordio`) is `<decimal length>\\n<bytes>` repeated, optionally with one
`\\n` after a record's bytes (unambiguous: a length starts with a digit), lengths of 0
refused, records numbered from 1; OCTET (`application/octet-stream`) is the body as one
record. Records are the bytes as sent (never re-serialised); RECORDIO and OCTET records
are opaque, NDJSON and JSON records are validated.

JSON validation: `msgspec.json.Decoder(msgspec.Raw).decode` (msgspec's skip parser
checks the full RFC 8259 grammar — structure, numbers, escapes, surrogates, control
characters — without building Python objects) plus a UTF-8 check for records that are
not ASCII (the one thing the skip parser does not look at), plus a nesting limit:
records with more than `json_depth_max` `[`/`{` bytes get an exact depth count
(`_deeper_than`: ≈ 35 ms per MiB of brackets for the worst shapes tried), and
msgspec's RecursionError on very deep input is a 400. Accepted beyond a full decode: numbers outside float range
such as `1e999` (valid grammar). A test checks the two agree otherwise.

Timing (one core, 30k records of ~300 bytes, CPython 3.11, msgspec 0.23, best of 7):
split_records NDJSON ≈ 1.0 M records/s (≈ 310 MB/s; CRLF or non-ASCII lines ≈ 0.8 M/s),
RecordIO ≈ 1.2 M/s. Without the depth pre-check (two `count`s, ≈ 0.3 µs a record) the
Raw loop does ≈ 1.8 M/s, where a full `msgspec.json.decode` per line does ≈ 0.8 M/s and
`Decoder.decode_lines` on the whole body ≈ 0.4 M/s. Undoing gzip or zstd of that 9 MB
body ≈ 12 ms.

Decompression is bounded: gzip through `zlib.decompressobj` with `max_length`, fed 64
KiB at a time; zstd one frame at a time through `decompressobj`, fed
`remaining budget / 32768` bytes per call (a 4-byte zstd block can expand to 128 KiB),
so output past `body_bytes_max` is noticed within about one budget, and the zstd window
is capped (`_zstd_window_bytes`). A 1 GiB bomb against a 1 MiB limit peaks at ≈ 2 MiB
(gzip) and ≈ 1.6 MiB (zstd) of traced memory. Truncated streams and bytes after the
last member or frame are 400. One content coding per request; lists are refused (415).
"""

from __future__ import annotations

import enum
import re
import zlib
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, NamedTuple

import google_crc32c
import msgspec
import zstandard

from wal.frame import (
    FMT_RECORD,
    HEADER,
    LEN_AFTER_CRC,
    PAYLOAD_BYTES_MAX,
    U32_MAX,
    U64_MAX,
    encode_records,
)

MIB = 1 << 20


@dataclass(frozen=True, slots=True)
class BodyLimits:
    body_bytes_max: int = 10 * MIB  # decoded body
    record_bytes_max: int = MIB
    records_max: int = 100_000
    json_depth_max: int = 64

    def __post_init__(self) -> None:
        for name in ("body_bytes_max", "record_bytes_max", "records_max", "json_depth_max"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")


class BodyError(Exception):
    """A request body the node refuses; `to_json()` is the API's error body."""

    def __init__(self, status: int, code: str, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.line = line

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.line is not None:
            error["line"] = self.line
        return {"error": error}


class BodyKind(enum.Enum):
    NDJSON = "ndjson"
    JSON = "json"
    RECORDIO = "recordio"
    OCTET = "octet"

    @property
    def is_json(self) -> bool:
        return self in (BodyKind.NDJSON, BodyKind.JSON)


MEDIA_TYPES: dict[str, BodyKind] = {
    "application/x-ndjson": BodyKind.NDJSON,
    "application/jsonl": BodyKind.NDJSON,
    "application/ndjson": BodyKind.NDJSON,
    "application/json": BodyKind.JSON,
    "application/x-recordio": BodyKind.RECORDIO,
    "application/octet-stream": BodyKind.OCTET,
}
_ACCEPTED = ", ".join(MEDIA_TYPES)
_UTF8 = ("utf-8", "utf8")
_ECHO_CHARS_MAX = 80  # of a header value quoted back in an error message


def _echo(value: str) -> str:
    return repr(value[:_ECHO_CHARS_MAX] + ("…" if len(value) > _ECHO_CHARS_MAX else ""))


def content_kind(content_type: str | None) -> BodyKind:
    """The body kind of a `Content-Type` header value (415 when missing or unknown)."""
    if content_type is None or not content_type.strip():
        raise BodyError(
            415, "unsupported_media_type", f"a Content-Type header is required, one of: {_ACCEPTED}"
        )
    media, _, params = content_type.partition(";")
    kind = MEDIA_TYPES.get(media.strip().lower())
    if kind is None:
        raise BodyError(
            415,
            "unsupported_media_type",
            f"unsupported Content-Type {_echo(media.strip())}; send one of: {_ACCEPTED}",
        )
    if kind.is_json:
        for param in params.split(";"):
            name, _, value = param.partition("=")
            charset = value.strip().strip('"').lower()
            if name.strip().lower() == "charset" and charset not in _UTF8:
                raise BodyError(
                    415,
                    "unsupported_media_type",
                    f"unsupported charset {_echo(charset)}; JSON bodies must be UTF-8",
                )
    return kind


# ------------------------------------------------------------------ decoding
def decode_content(data: bytes, encoding: str | None, limits: BodyLimits) -> bytes:
    """The body with its `Content-Encoding` undone, at most `limits.body_bytes_max` bytes."""
    coding = (encoding or "").strip().lower()
    limit = limits.body_bytes_max
    if coding in ("", "identity"):
        if len(data) > limit:
            raise _body_too_large(limit)
        return data
    if "," in coding:
        raise BodyError(
            415,
            "unsupported_encoding",
            f"one Content-Encoding at most (gzip, zstd or identity), got {_echo(coding)}",
        )
    if coding not in ("gzip", "x-gzip", "zstd"):
        raise BodyError(
            415,
            "unsupported_encoding",
            f"unsupported Content-Encoding {_echo(coding)}; use gzip, zstd or identity",
        )
    if not data:
        return b""  # split_records answers empty_body
    return _gunzip(data, limit) if coding != "zstd" else _unzstd(data, limit)


def _body_too_large(limit: int) -> BodyError:
    return BodyError(413, "body_too_large", f"the decoded body is larger than {limit} bytes")


_GZIP_MAGIC = b"\x1f\x8b"
GZIP_FEED_BYTES = 64 * 1024
"""Input handed to zlib per call, so its `unconsumed_tail` copies stay this small."""


def _gunzip(data: bytes, limit: int) -> bytes:
    """gzip members, concatenated; anything after the last member is an error."""
    view = memoryview(data)
    out: list[bytes] = []
    total = pos = 0
    while pos < len(view):
        if pos and bytes(view[pos : pos + 2]) != _GZIP_MAGIC:
            raise BodyError(400, "bad_encoding", "invalid gzip data: trailing bytes after the data")
        member = zlib.decompressobj(16 + zlib.MAX_WBITS)
        while not member.eof:
            if pos >= len(view):
                raise BodyError(400, "bad_encoding", "invalid gzip data: truncated stream")
            pending: bytes | memoryview = view[pos : pos + GZIP_FEED_BYTES]
            pos += len(pending)
            while pending and not member.eof:
                try:
                    chunk = member.decompress(pending, limit - total + 1)
                except zlib.error as err:
                    raise BodyError(400, "bad_encoding", f"invalid gzip data: {err}") from err
                total += len(chunk)
                if total > limit:
                    raise _body_too_large(limit)
                out.append(chunk)
                pending = member.unconsumed_tail
        pos -= len(member.unused_data)
    return b"".join(out)


ZSTD_EXPANSION_MAX = 1 << 15
"""Worst case output bytes per input byte: a 4-byte RLE block decodes to 128 KiB."""
ZSTD_FEED_BYTES_MIN = 64


def _zstd_window_bytes(limit: int) -> int:
    """Largest zstd window accepted: enough for any body within the limit, at least 8 MiB."""
    return max(8 * MIB, 1 << (limit - 1).bit_length())


def _is_zstd_frame(magic: bytes) -> bool:
    """A zstd frame or a skippable frame (magic 0x184D2A50..5F) starts here."""
    return magic == _ZSTD_MAGIC or (magic[1:] == b"\x2a\x4d\x18" and magic[0] & 0xF0 == 0x50)


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _unzstd(data: bytes, limit: int) -> bytes:
    """zstd frames (and skippable frames), concatenated, decoded one frame at a time."""
    decompressor = zstandard.ZstdDecompressor(max_window_size=_zstd_window_bytes(limit))
    view = memoryview(data)
    out: list[bytes] = []
    total = pos = 0
    while pos < len(view):
        if pos and not _is_zstd_frame(bytes(view[pos : pos + 4])):
            raise BodyError(400, "bad_encoding", "invalid zstd data: trailing bytes after the data")
        frame = decompressor.decompressobj()
        while not frame.eof:
            if pos >= len(view):
                raise BodyError(400, "bad_encoding", "invalid zstd data: truncated stream")
            step = max(ZSTD_FEED_BYTES_MIN, (limit - total) // ZSTD_EXPANSION_MAX)
            piece = view[pos : pos + step]
            pos += len(piece)
            try:
                chunk = frame.decompress(piece)
            except zstandard.ZstdError as err:
                raise BodyError(400, "bad_encoding", f"invalid zstd data: {err}") from err
            total += len(chunk)
            if total > limit:
                raise _body_too_large(limit)
            out.append(chunk)
        pos -= len(frame.unused_data)
    return b"".join(out)


# ------------------------------------------------------------------ records
def split_records(data: bytes, kind: BodyKind, limits: BodyLimits) -> list[bytes]:
    """The records of a decoded body, as sent; BodyError for the first bad one."""
    if len(data) > limits.body_bytes_max:
        raise _body_too_large(limits.body_bytes_max)
    if kind is BodyKind.NDJSON:
        records = _split_ndjson(data, limits)
    elif kind is BodyKind.RECORDIO:
        records = _split_recordio(data, limits)
    else:
        record = data.strip(_JSON_WHITESPACE) if kind is BodyKind.JSON else data
        if record:
            if len(record) > limits.record_bytes_max:
                raise _record_too_large(limits, "body")
            if kind is BodyKind.JSON:
                _check_json(record, limits.json_depth_max, "body")
        records = [record] if record else []
    if not records:
        raise BodyError(400, "empty_body", "the body holds no records")
    return records


_JSON_WHITESPACE = b" \t\r\n"
_validate_json = msgspec.json.Decoder(msgspec.Raw).decode


def _record_too_large(limits: BodyLimits, what: str, line: int | None = None) -> BodyError:
    message = f"{what}: over the record limit of {limits.record_bytes_max} bytes"
    return BodyError(413, "record_too_large", message, line=line)


def _too_many_records(limits: BodyLimits) -> BodyError:
    return BodyError(
        413, "too_many_records", f"the body holds more than {limits.records_max} records"
    )


def _split_ndjson(data: bytes, limits: BodyLimits) -> list[bytes]:
    records: list[bytes] = []
    append = records.append
    record_max = limits.record_bytes_max
    records_max = limits.records_max
    depth_max = limits.json_depth_max
    validate = _validate_json
    crlf = b"\r" in data
    for number, line in enumerate(data.split(b"\n"), 1):
        if crlf and line.endswith(b"\r"):
            line = line[:-1]
        if not line or line.isspace():
            continue
        if len(line) > record_max:
            raise _record_too_large(limits, f"line {number}", number)
        if len(records) == records_max:
            raise _too_many_records(limits)
        try:
            validate(line)
        except (msgspec.DecodeError, RecursionError) as err:
            raise _invalid_json(f"line {number}", err, number) from err
        if not line.isascii() or line.count(b"[") + line.count(b"{") > depth_max:
            _check_text(line, depth_max, f"line {number}", number)
        append(line)
    return records


class FramedRecords(NamedTuple):
    """A body's records as WAL frames (`wal.frame.encode_records` bytes, ready for
    `WriteAheadLog.append_encoded`), how many there are and their payload bytes."""

    frames: bytes
    records: int
    nbytes: int


def frame_records(
    data: bytes, kind: BodyKind, limits: BodyLimits, *, tenant: int, ts_ms: int
) -> FramedRecords:
    """`encode_records(split_records(data, kind, limits), tenant=…, ts_ms=…)` with the same
    bytes and the same BodyError, in one pass over the records for NDJSON (the frames
    are built inside the split loop instead of a second loop over a list)."""
    if kind is not BodyKind.NDJSON or limits.record_bytes_max > PAYLOAD_BYTES_MAX:
        records = split_records(data, kind, limits)
        frames = encode_records(records, tenant=tenant, ts_ms=ts_ms)
        return FramedRecords(frames, len(records), sum(map(len, records)))
    if len(data) > limits.body_bytes_max:
        raise _body_too_large(limits.body_bytes_max)
    if not (0 <= tenant <= U32_MAX and 0 <= ts_ms <= U64_MAX):
        encode_records((), tenant=tenant, ts_ms=ts_ms)  # raises its ValueError
    parts: list[bytes] = []
    append = parts.append
    pack = HEADER.pack
    crc = google_crc32c.value
    record_max = limits.record_bytes_max
    records_max = limits.records_max
    depth_max = limits.json_depth_max
    validate = _validate_json
    crlf = b"\r" in data
    count = nbytes = 0
    for number, line in enumerate(data.split(b"\n"), 1):
        # The checks of `_split_ndjson`, in the same order (tests/unit/ingest/
        # test_body_frames.py compares the two on random bodies).
        if crlf and line.endswith(b"\r"):
            line = line[:-1]
        if not line or line.isspace():
            continue
        size = len(line)
        if size > record_max:
            raise _record_too_large(limits, f"line {number}", number)
        if count == records_max:
            raise _too_many_records(limits)
        try:
            validate(line)
        except (msgspec.DecodeError, RecursionError) as err:
            raise _invalid_json(f"line {number}", err, number) from err
        if not line.isascii() or line.count(b"[") + line.count(b"{") > depth_max:
            _check_text(line, depth_max, f"line {number}", number)
        append(pack(LEN_AFTER_CRC + size, crc(line), FMT_RECORD, tenant, ts_ms))
        append(line)
        count += 1
        nbytes += size
    if not count:
        raise BodyError(400, "empty_body", "the body holds no records")
    return FramedRecords(b"".join(parts), count, nbytes)


def _invalid_json(where: str, err: Exception, line: int | None) -> BodyError:
    if isinstance(err, RecursionError):
        return BodyError(400, "invalid_json", f"{where}: JSON nested too deeply", line=line)
    return BodyError(400, "invalid_json", f"{where}: invalid JSON: {err}", line=line)


def _check_json(record: bytes, depth_max: int, where: str) -> None:
    """Grammar, UTF-8 and depth of one JSON record."""
    try:
        _validate_json(record)
    except (msgspec.DecodeError, RecursionError) as err:
        raise _invalid_json(where, err, None) from err
    _check_text(record, depth_max, where, None)


def _check_text(record: bytes, depth_max: int, where: str, line: int | None) -> None:
    """UTF-8 and depth of a record whose JSON grammar is already checked."""
    if not record.isascii():
        try:
            record.decode("utf-8")
        except UnicodeDecodeError as err:
            message = f"{where}: invalid UTF-8 at byte {err.start}"
            raise BodyError(400, "invalid_json", message, line=line) from err
    if record.count(b"[") + record.count(b"{") > depth_max and _deeper_than(record, depth_max):
        message = f"{where}: JSON nested deeper than {depth_max} levels"
        raise BodyError(400, "invalid_json", message, line=line)


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = bytes.maketrans(b"{}", b"[]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEPS = bytes.maketrans(b"[]", b"\x01\xff")  # +1 / -1 as signed bytes
_PEEL_PASSES = 4


def _deeper_than(record: bytes, depth_max: int) -> bool:
    """Exact nesting depth check of a record already known to be valid JSON: strings
    removed, brackets only; a few passes peel the innermost pairs (enough for most
    records), then a running sum over what is left (linear, for adversarial shapes)."""
    brackets = _JSON_STRING.sub(b"", record).translate(_BRACKETS, _NOT_BRACKETS)
    passes = 0
    while brackets and passes < min(depth_max, _PEEL_PASSES):
        brackets = brackets.replace(b"[]", b"")
        passes += 1
    if not brackets:
        return False
    steps = memoryview(brackets.translate(_STEPS)).cast("b")
    return max(accumulate(steps)) > depth_max - passes


_LENGTH_DIGITS_MAX = 20


def _split_recordio(data: bytes, limits: BodyLimits) -> list[bytes]:
    records: list[bytes] = []
    size = len(data)
    pos = 0
    while pos < size:
        number = len(records) + 1
        newline = data.find(b"\n", pos, pos + _LENGTH_DIGITS_MAX + 1)
        digits = data[pos:newline] if newline >= 0 else b""
        if not digits.isdigit():  # ASCII digits only, and not empty
            raise BodyError(
                400,
                "bad_recordio",
                f"record {number} (byte {pos}): expected '<decimal length>\\n'",
            )
        length = int(digits)
        if length == 0:
            raise BodyError(400, "bad_recordio", f"record {number}: zero-length record")
        if length > limits.record_bytes_max:
            raise _record_too_large(limits, f"record {number}")
        start = newline + 1
        if start + length > size:
            raise BodyError(
                400,
                "bad_recordio",
                f"record {number}: declared {length} bytes, {size - start} left in the body",
            )
        if len(records) == limits.records_max:
            raise _too_many_records(limits)
        records.append(data[start : start + length])
        pos = start + length
        if pos < size and data[pos] == 0x0A:
            pos += 1
    return records
