"""Fuzz target: the WAL frame reader (wal.reader) and the column decoder
(wal.columns.decode_columns) on arbitrary segment bytes.

Only `wal.errors.FrameError` (CorruptFrame, TruncatedFrame) may escape, and the three
readers must agree: `iter_frames`, `StreamReader` over a stream and `decode_columns`
decode the same frames, or fail with the same error class at the same offset (the
column decoder documents that it "checks exactly what reader.decode_at checks").

    mkdir -p /tmp/frames   # new inputs go to the first corpus directory
    python tests/fuzz/fuzz_frames.py -runs=100000 /tmp/frames tests/fuzz/corpus/frames
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root on the path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.fuzz.harness import fuzz, instrumented

with instrumented(__name__, "wal"):
    from wal.columns import decode_columns
    from wal.errors import FrameError
    from wal.frame import Frame
    from wal.reader import StreamReader, detect_layout, iter_frames


def _frames(reader: object) -> tuple[list[Frame], tuple[type, int] | None]:
    frames: list[Frame] = []
    try:
        for _, frame in reader:  # type: ignore[attr-defined]
            frames.append(frame)
    except FrameError as err:
        return frames, (type(err), err.offset)
    return frames, None


def TestOneInput(data: bytes) -> None:
    detect_layout(data, at_eof=False)
    layout = detect_layout(data)
    in_memory, error = _frames(iter_frames(data))
    streamed, stream_error = _frames(StreamReader(io.BytesIO(data)))
    assert streamed == in_memory, "StreamReader and iter_frames decode different frames"
    assert stream_error == error, f"StreamReader fails with {stream_error}, iter_frames {error}"
    try:
        columns = decode_columns(data)
    except FrameError as err:
        columns_error: tuple[type, int] | None = (type(err), err.offset)
    else:
        columns_error = None
    assert columns_error == error, (
        f"decode_columns fails with {columns_error}, iter_frames with {error} ({layout})"
    )
    if error is not None:
        return
    assert len(columns) == len(in_memory)
    for i, frame in enumerate(in_memory):
        assert columns.fmt[i] == frame.fmt
        assert columns.tenant[i] == frame.tenant
        assert columns.ts_ms[i] == frame.ts_ms
        assert columns.topic[i] == frame.topic
        assert columns.message[i] == frame.message


if __name__ == "__main__":
    fuzz(TestOneInput)
