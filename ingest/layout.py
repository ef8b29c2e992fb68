"""Object keys of a segment's artifacts and commit manifest (DESIGN.md §6).

Pure functions; the keys are deterministic so a retried delivery overwrites the same
objects::

    <prefix>/<region>/<endpoint_id>/segments/<node_id>/<epoch>/seg-<seq:08d>.wal.zst
    <prefix>/<region>/<endpoint_id>/parquet/dt=<YYYY-MM-DD>/<node_id>-<epoch>-<seq:08d>.parquet
    <prefix>/views/<view_name>/v<version>/[<part>=<value>/…]<endpoint_id>-<node_id>-<epoch>-<seq:08d>.parquet
    <prefix>/dlq/<view_name>/v<version>/<endpoint_id>-<node_id>-<epoch>-<seq:08d>.parquet
    <prefix>/<region>/<endpoint_id>/commits/<node_id>/<epoch>/seg-<seq:08d>.json

An empty prefix gives keys without a leading slash; a prefix is stored without leading
or trailing slashes but may itself contain slashes (`team/edgemq`).

The raw Parquet's `dt=` folder is the UTC day of the segment's FIRST frame: a segment
that spans midnight lands entirely in its first day's folder (readers filtering on
`ts` rather than on the folder see every row either way).

Every path component is checked: a name that is empty, `.` or `..`, or holds a slash,
a backslash or a control character is a ValueError, so no key can climb out of its
folder (`parse_manifest` rejects such keys too).
"""

from __future__ import annotations

import datetime as dt

TS_MS_MAX = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z, the last day a `dt=` can name


def check_component(what: str, value: str) -> str:
    """`value` unchanged when it can be one `/`-separated part of a key, else ValueError."""
    if (
        not value
        or value in (".", "..")
        or "/" in value
        or "\\" in value
        or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value)
    ):
        raise ValueError(f"{what} {value!r} cannot be part of an object key")
    return value


def _number(what: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, not {value!r}")
    return value


def is_safe_key(key: str) -> bool:
    """True when every `/`-separated part of `key` is a valid key component."""
    try:
        for part in key.split("/"):
            check_component("key part", part)
    except ValueError:
        return False
    return True


def _join(prefix: str, *parts: str) -> str:
    if prefix:
        if prefix.startswith("/") or prefix.endswith("/") or not is_safe_key(prefix):
            raise ValueError(f"prefix {prefix!r} cannot start an object key")
        return "/".join((prefix, *parts))
    return "/".join(parts)


def _stem(node_id: str, epoch: int, seq: int) -> str:
    return (
        f"{check_component('node_id', node_id)}-{_number('epoch', epoch)}-{_number('seq', seq):08d}"
    )


def _seg_name(seq: int, suffix: str) -> str:
    return f"seg-{_number('seq', seq):08d}{suffix}"


def utc_day(ts_ms: int) -> str:
    """`YYYY-MM-DD` of a millisecond timestamp, in UTC."""
    if not 0 <= _number("ts_ms", ts_ms) <= TS_MS_MAX:
        raise ValueError(f"timestamp {ts_ms} ms is past year 9999")
    day = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(milliseconds=ts_ms)
    return day.strftime("%Y-%m-%d")


def segment_key(
    prefix: str, region: str, endpoint_id: str, node_id: str, epoch: int, seq: int
) -> str:
    """The zstd-compressed segment (`segments` output format)."""
    return _join(
        prefix,
        check_component("region", region),
        check_component("endpoint_id", endpoint_id),
        "segments",
        check_component("node_id", node_id),
        str(_number("epoch", epoch)),
        _seg_name(seq, ".wal.zst"),
    )


def raw_parquet_key(
    prefix: str,
    region: str,
    endpoint_id: str,
    node_id: str,
    epoch: int,
    seq: int,
    first_ts_ms: int,
) -> str:
    """The raw Parquet (`parquet` output format), in the UTC day of the first frame."""
    return _join(
        prefix,
        check_component("region", region),
        check_component("endpoint_id", endpoint_id),
        "parquet",
        f"dt={utc_day(first_ts_ms)}",
        f"{_stem(node_id, epoch, seq)}.parquet",
    )


def view_key(
    prefix: str,
    view_name: str,
    view_version: int,
    folders: tuple[str, ...],
    endpoint_id: str,
    node_id: str,
    epoch: int,
    seq: int,
) -> str:
    """One typed Parquet file of a view; `folders` are its Hive `key=value` parts."""
    return _join(
        prefix,
        "views",
        check_component("view_name", view_name),
        f"v{_number('view_version', view_version)}",
        *(check_component("partition folder", f) for f in folders),
        f"{check_component('endpoint_id', endpoint_id)}-{_stem(node_id, epoch, seq)}.parquet",
    )


def dlq_key(
    prefix: str,
    view_name: str,
    view_version: int,
    endpoint_id: str,
    node_id: str,
    epoch: int,
    seq: int,
) -> str:
    """The dead-letter Parquet of one view for one segment."""
    return _join(
        prefix,
        "dlq",
        check_component("view_name", view_name),
        f"v{_number('view_version', view_version)}",
        f"{check_component('endpoint_id', endpoint_id)}-{_stem(node_id, epoch, seq)}.parquet",
    )


def manifest_key(
    prefix: str, region: str, endpoint_id: str, node_id: str, epoch: int, seq: int
) -> str:
    """The commit manifest, written last."""
    return _join(
        manifest_prefix(prefix, region, endpoint_id).rstrip("/"),
        check_component("node_id", node_id),
        str(_number("epoch", epoch)),
        _seg_name(seq, ".json"),
    )


def manifest_prefix(prefix: str, region: str, endpoint_id: str) -> str:
    """The folder (with a trailing slash) holding every manifest of an endpoint in a
    region, for readers that list it: `<prefix>/<region>/<endpoint_id>/commits/`."""
    return (
        _join(
            prefix,
            check_component("region", region),
            check_component("endpoint_id", endpoint_id),
            "commits",
        )
        + "/"
    )
