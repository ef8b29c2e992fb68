"""`edgemq segment cat`: print a segment's frames as JSON lines, verifying every CRC."""

from __future__ import annotations

import base64
import json
from typing import TextIO

from .errors import FrameError
from .frame import FMT_TOPIC, Frame, split_topic_payload
from .reader import StreamReader, open_segment_stream


def frame_to_json(offset: int, frame: Frame) -> dict[str, object]:
    """One frame as a JSON-ready dict; the payload is text when it is UTF-8, else base64."""
    topic: str | None = None
    body = frame.payload
    if frame.fmt == FMT_TOPIC:
        topic, body = split_topic_payload(frame.payload)
    try:
        payload, encoding = body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        payload, encoding = base64.b64encode(body).decode("ascii"), "base64"
    return {
        "offset": offset,
        "ts": frame.ts_ms,
        "fmt": frame.fmt,
        "tenant": frame.tenant,
        "topic": topic,
        "payload": payload,
        "encoding": encoding,
    }


def dump_segment(path: str, out: TextIO) -> FrameError | None:
    """Write one JSON line per frame of `path` (`.wal` or `.wal.zst`) to `out`.

    Streams in bounded memory. Returns the first frame error (after printing every
    frame before it), or None when the whole segment is valid.
    """
    with open_segment_stream(path) as stream:
        try:
            for offset, frame in StreamReader(stream):
                out.write(json.dumps(frame_to_json(offset, frame), ensure_ascii=False))
                out.write("\n")
        except FrameError as err:
            return err
    return None
