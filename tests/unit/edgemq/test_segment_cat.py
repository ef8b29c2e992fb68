import json
import subprocess
import sys
from pathlib import Path

import zstandard

from wal.frame import encode_frame, encode_records, encode_topic_frame

CLI = [sys.executable, "-m", "edgemq", "segment", "cat"]


def _run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, str(path)], capture_output=True, text=True, timeout=60)


def _segment() -> bytes:
    return encode_records(
        [b'{"a":1}', "héllo".encode()], tenant=42, ts_ms=1705312600000
    ) + encode_topic_frame("sensors/1", b"\xff\x00", tenant=7, ts_ms=5)


def test_segment_cat_prints_one_json_line_per_frame(tmp_path: Path) -> None:
    path = tmp_path / "seg-00000001.wal"
    path.write_bytes(_segment())
    result = _run(path)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0] == {
        "offset": 0,
        "ts": 1705312600000,
        "fmt": 0,
        "tenant": 42,
        "topic": None,
        "payload": '{"a":1}',
        "encoding": "utf-8",
    }
    assert lines[1]["payload"] == "héllo"
    assert (lines[2]["topic"], lines[2]["payload"], lines[2]["encoding"]) == (
        "sensors/1",
        "/wA=",
        "base64",
    )


def test_segment_cat_reads_zstd_compressed_segments(tmp_path: Path) -> None:
    raw = tmp_path / "seg-00000001.wal"
    raw.write_bytes(_segment())
    packed = tmp_path / "seg-00000001.wal.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(_segment()))
    assert _run(packed).stdout == _run(raw).stdout != ""


def test_segment_cat_names_the_offset_of_the_first_corrupt_frame(tmp_path: Path) -> None:
    first = encode_frame(b"ok", tenant=1, ts_ms=1)
    second = bytearray(encode_frame(b"broken", tenant=1, ts_ms=1))
    second[-1] ^= 0x20
    path = tmp_path / "seg-00000002.wal"
    path.write_bytes(first + bytes(second))
    result = _run(path)
    assert result.returncode == 1
    assert len(result.stdout.splitlines()) == 1
    assert f"offset {len(first)}" in result.stderr
    assert "CRC32C mismatch" in result.stderr


def test_segment_cat_reports_a_missing_file(tmp_path: Path) -> None:
    result = _run(tmp_path / "nope.wal")
    assert result.returncode == 2
    assert "No such file" in result.stderr


def test_segment_cat_into_a_closed_pipe_exits_0_quietly(tmp_path: Path) -> None:
    """`edgemq segment cat x | head -1`: the reader leaving early is not an error."""
    path = tmp_path / "seg-00000003.wal"
    path.write_bytes(encode_records([b'{"n":%d}' % i for i in range(50_000)], tenant=1, ts_ms=1))
    cat = subprocess.Popen([*CLI, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert cat.stdout is not None
    assert cat.stderr is not None
    first = cat.stdout.readline()
    cat.stdout.close()  # far more than a pipe buffer is still unwritten
    assert cat.wait(timeout=60) == 0
    assert json.loads(first)["payload"] == '{"n":0}'
    with cat.stderr:
        assert cat.stderr.read() == b""
