import os
from pathlib import Path

import pytest

from shared.clock import ManualClock
from wal.errors import WalStateError
from wal.fileops import OS_FILE_OPS
from wal.frame import encode_records
from wal.reader import iter_frames
from wal.recovery import recover, write_epoch
from wal.segment import open_name, sealed_name

CLOCK = ManualClock()


def _recover(directory: Path, **kwargs: int):  # type: ignore[no-untyped-def]
    return recover(str(directory), fileops=OS_FILE_OPS, clock=CLOCK, **kwargs)


def test_a_new_directory_gets_an_epoch_and_starts_at_sequence_one(tmp_path: Path) -> None:
    state = _recover(tmp_path / "wal", initial_epoch=7)
    assert (state.epoch, state.next_seq, state.sealed) == (7, 1, ())
    assert state.report.created
    assert (tmp_path / "wal" / "EPOCH").read_text() == "7\n"


def test_the_epoch_survives_reopening(tmp_path: Path) -> None:
    _recover(tmp_path, initial_epoch=5)
    state = _recover(tmp_path, initial_epoch=99)
    assert state.epoch == 5
    assert not state.report.created


def test_a_torn_tail_is_cut_reported_and_the_segment_sealed(tmp_path: Path) -> None:
    write_epoch(str(tmp_path), 3, OS_FILE_OPS)
    good = encode_records([b"one", b"two"], tenant=1, ts_ms=100)
    torn = encode_records([b"three"], tenant=1, ts_ms=101)[:-2]
    (tmp_path / open_name(4)).write_bytes(good + torn)
    state = _recover(tmp_path)
    [report] = state.report.open_segments
    assert (report.seq, report.frames_kept, report.bytes_kept) == (4, 2, len(good))
    assert report.bytes_cut == len(torn)
    assert report.reason is not None
    assert "runs past the end" in report.reason
    assert state.report.bytes_cut == len(torn)
    sealed = tmp_path / sealed_name(4)
    assert sealed.read_bytes() == good
    assert not (tmp_path / open_name(4)).exists()
    assert [s.seq for s in state.sealed] == [4]
    assert state.next_seq == 5


def test_garbage_in_the_middle_of_an_open_segment_cuts_everything_after_it(
    tmp_path: Path,
) -> None:
    write_epoch(str(tmp_path), 3, OS_FILE_OPS)
    first = encode_records([b"a"], tenant=1, ts_ms=1)
    bad = bytearray(encode_records([b"b"], tenant=1, ts_ms=1))
    bad[-1] ^= 0xFF
    last = encode_records([b"c"], tenant=1, ts_ms=1)
    (tmp_path / open_name(1)).write_bytes(first + bytes(bad) + last)
    state = _recover(tmp_path)
    [report] = state.report.open_segments
    assert report.frames_kept == 1
    assert report.bytes_cut == len(bad) + len(last)
    assert [f.payload for _, f in iter_frames((tmp_path / sealed_name(1)).read_bytes())] == [b"a"]


def test_an_empty_open_segment_above_all_others_is_reused(tmp_path: Path) -> None:
    write_epoch(str(tmp_path), 3, OS_FILE_OPS)
    (tmp_path / sealed_name(8)).write_bytes(encode_records([b"x"], tenant=1, ts_ms=1))
    (tmp_path / open_name(9)).write_bytes(b"")
    state = _recover(tmp_path)
    assert state.next_seq == 9
    assert [s.seq for s in state.sealed] == [8]
    assert (tmp_path / open_name(9)).read_bytes() == b""  # kept: it carries the number


def test_the_sequence_continues_after_every_segment_was_committed(tmp_path: Path) -> None:
    write_epoch(str(tmp_path), 3, OS_FILE_OPS)
    (tmp_path / open_name(12)).write_bytes(b"\x00" * 30)  # torn, no valid frame
    assert _recover(tmp_path).next_seq == 12
    assert (tmp_path / open_name(12)).read_bytes() == b""
    assert _recover(tmp_path).next_seq == 12


def test_a_lower_empty_open_segment_is_removed(tmp_path: Path) -> None:
    write_epoch(str(tmp_path), 3, OS_FILE_OPS)
    (tmp_path / open_name(3)).write_bytes(b"")
    (tmp_path / sealed_name(4)).write_bytes(encode_records([b"x"], tenant=1, ts_ms=1))
    assert _recover(tmp_path).next_seq == 5
    assert not (tmp_path / open_name(3)).exists()


def test_a_new_directory_is_created_with_its_missing_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "wal"
    _recover(target)
    assert (target / "EPOCH").exists()


def test_segments_without_an_epoch_file_are_refused(tmp_path: Path) -> None:
    (tmp_path / sealed_name(1)).write_bytes(b"")
    with pytest.raises(WalStateError, match="no EPOCH"):
        _recover(tmp_path)


def test_a_sealed_and_an_open_segment_with_one_number_are_refused(tmp_path: Path) -> None:
    write_epoch(str(tmp_path), 3, OS_FILE_OPS)
    (tmp_path / sealed_name(2)).write_bytes(b"")
    (tmp_path / open_name(2)).write_bytes(b"")
    with pytest.raises(WalStateError, match="both sealed and open"):
        _recover(tmp_path)


def test_a_garbled_epoch_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "EPOCH").write_bytes(b"\xffx")
    with pytest.raises(WalStateError, match="number"):
        _recover(tmp_path)


def test_a_leftover_epoch_temp_file_is_removed(tmp_path: Path) -> None:
    write_epoch(str(tmp_path), 3, OS_FILE_OPS)
    (tmp_path / "EPOCH.tmp").write_bytes(b"4")
    _recover(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["EPOCH"]
