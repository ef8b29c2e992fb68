"""ingest.layout: the object keys of DESIGN.md §6."""

from __future__ import annotations

import pytest

from ingest import layout

EP, NODE, REGION = "ep-1", "node-a", "iad"
MIDNIGHT_MS = 1_764_460_800_000  # 2025-11-30T00:00:00.000Z


def test_keys_under_an_empty_prefix_have_no_leading_slash() -> None:
    assert (
        layout.segment_key("", REGION, EP, NODE, 7, 12)
        == "iad/ep-1/segments/node-a/7/seg-00000012.wal.zst"
    )
    assert (
        layout.raw_parquet_key("", REGION, EP, NODE, 7, 12, MIDNIGHT_MS)
        == "iad/ep-1/parquet/dt=2025-11-30/node-a-7-00000012.parquet"
    )
    assert (
        layout.view_key("", "orders", 3, (), EP, NODE, 7, 12)
        == "views/orders/v3/ep-1-node-a-7-00000012.parquet"
    )
    assert layout.dlq_key("", "orders", 3, EP, NODE, 7, 12) == (
        "dlq/orders/v3/ep-1-node-a-7-00000012.parquet"
    )
    assert (
        layout.manifest_key("", REGION, EP, NODE, 7, 12)
        == "iad/ep-1/commits/node-a/7/seg-00000012.json"
    )
    assert layout.manifest_prefix("", REGION, EP) == "iad/ep-1/commits/"


def test_keys_under_a_nested_prefix_start_with_it() -> None:
    prefix = "team/edgemq"
    keys = [
        layout.segment_key(prefix, REGION, EP, NODE, 1, 2),
        layout.raw_parquet_key(prefix, REGION, EP, NODE, 1, 2, MIDNIGHT_MS),
        layout.view_key(prefix, "v", 1, (), EP, NODE, 1, 2),
        layout.dlq_key(prefix, "v", 1, EP, NODE, 1, 2),
        layout.manifest_key(prefix, REGION, EP, NODE, 1, 2),
    ]
    assert all(key.startswith("team/edgemq/") and "//" not in key for key in keys)
    assert keys[0] == "team/edgemq/iad/ep-1/segments/node-a/1/seg-00000002.wal.zst"


def test_view_keys_put_hive_folders_between_the_version_and_the_file() -> None:
    key = layout.view_key("p", "clicks", 2, ("at_day=2025-11-30", "country=DE"), EP, NODE, 5, 9)
    assert key == "p/views/clicks/v2/at_day=2025-11-30/country=DE/ep-1-node-a-5-00000009.parquet"


def test_sequence_numbers_wider_than_eight_digits_are_kept_whole() -> None:
    assert layout.segment_key("", REGION, EP, NODE, 1, 123_456_789).endswith(
        "seg-123456789.wal.zst"
    )


def test_a_segment_spanning_midnight_lands_in_its_first_frames_day() -> None:
    last_ms_of_day = MIDNIGHT_MS - 1
    assert "/dt=2025-11-29/" in layout.raw_parquet_key("", REGION, EP, NODE, 1, 1, last_ms_of_day)
    assert "/dt=2025-11-30/" in layout.raw_parquet_key("", REGION, EP, NODE, 1, 1, MIDNIGHT_MS)


def test_the_manifest_prefix_lists_every_manifest_of_the_endpoint() -> None:
    for prefix in ("", "a", "a/b"):
        key = layout.manifest_key(prefix, REGION, EP, NODE, 3, 4)
        assert key.startswith(layout.manifest_prefix(prefix, REGION, EP))


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "a\\b", "a\nb", "a\x00b"])
def test_a_component_that_could_escape_its_folder_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="cannot be part of an object key"):
        layout.segment_key("", REGION, bad, NODE, 1, 1)
    with pytest.raises(ValueError, match="cannot be part of an object key"):
        layout.view_key("", "v", 1, (bad,), EP, NODE, 1, 1)


@pytest.mark.parametrize("prefix", ["/p", "p/", "a//b", "a/../b"])
def test_a_prefix_with_stray_slashes_or_dots_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        layout.manifest_key(prefix, REGION, EP, NODE, 1, 1)


@pytest.mark.parametrize(("epoch", "seq"), [(-1, 1), (1, -1), (True, 1)])
def test_negative_or_boolean_numbers_are_refused(epoch: int, seq: int) -> None:
    with pytest.raises(ValueError, match="non-negative integer"):
        layout.segment_key("", REGION, EP, NODE, epoch, seq)


def test_a_timestamp_past_year_9999_has_no_day_folder() -> None:
    assert layout.utc_day(layout.TS_MS_MAX) == "9999-12-31"
    with pytest.raises(ValueError, match="past year 9999"):
        layout.utc_day(layout.TS_MS_MAX + 1)


def test_safe_keys_have_no_empty_or_dot_parts() -> None:
    assert layout.is_safe_key("a/b=..x/c.parquet")
    assert not layout.is_safe_key("a/../c")
    assert not layout.is_safe_key("/a")
    assert not layout.is_safe_key("a/")
