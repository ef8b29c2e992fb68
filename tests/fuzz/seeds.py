"""The seed corpora of the fuzz targets (tests/fuzz/corpus/<target>/): a few valid
inputs each, so the fuzzers start from the formats' real shapes. Regenerate with

    python -m tests.fuzz.seeds

(the files are committed; regenerating writes the same bytes).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import zstandard

from ingest.body import BodyKind
from ingest.mqtt import client_codec as mqtt
from ingest.mqtt.packets import MQTT_5
from wal.frame import encode_frame, encode_legacy_frame, encode_topic_frame

CORPUS = Path(__file__).parent / "corpus"
TS_MS = 1_764_460_800_000


def frames() -> dict[str, bytes]:
    records = [b'{"n": 1}', b"", b"\x00\xff binary", b'{"device": "d1", "temp": 21.5}']
    current = b"".join(encode_frame(r, tenant=7, ts_ms=TS_MS + i) for i, r in enumerate(records))
    topics = b"".join(
        encode_topic_frame(t, m, tenant=7, ts_ms=TS_MS)
        for t, m in [("sensors/a", b"21.5"), ("", b""), ("s/\u00e9", b'{"x": 1}')]
    )
    legacy = b"".join(encode_legacy_frame(r, ts_ms=TS_MS) for r in records)
    return {
        "current": current,
        "topics": topics,
        "mixed-fmt": current + topics,
        "legacy": legacy,
        "torn-tail": current[:-3],
    }


def _records_input(kind: BodyKind, coding: str | None, content_type: str, body: bytes) -> bytes:
    """The fuzz_records input layout: kind/coding byte, header length, header, body."""
    kinds = list(BodyKind)
    codings = [None, "gzip", "zstd", "identity"]
    selector = kinds.index(kind) | (codings.index(coding) << 2)
    header = content_type.encode("latin-1")
    return bytes((selector, len(header))) + header + body


def records() -> dict[str, bytes]:
    lines = b'{"n": 1}\n{"s": "\\u00e9", "a": [1, 2.5e3, null, true]}\r\n\n{"deep": [[[{}]]]}\n'
    last = b'{"n": 1, "pad": "xxxx"}'
    recordio = b"5\nhello\n3\nabc%d\n%s" % (len(last), last)
    return {
        "ndjson": _records_input(BodyKind.NDJSON, None, "application/x-ndjson", lines),
        "json": _records_input(
            BodyKind.JSON, "identity", "application/json; charset=utf-8", b' {"a": {"b": 1}} '
        ),
        "recordio": _records_input(BodyKind.RECORDIO, None, "application/x-recordio", recordio),
        "octet": _records_input(BodyKind.OCTET, None, "application/octet-stream", b"\x00\x01raw"),
        "gzip": _records_input(
            BodyKind.NDJSON, "gzip", "application/jsonl", gzip.compress(lines, mtime=0)
        ),
        "zstd": _records_input(
            BodyKind.NDJSON,
            "zstd",
            "application/ndjson",
            zstandard.ZstdCompressor().compress(lines),
        ),
    }


def mqtt_packets() -> dict[str, bytes]:
    v5_props = [(0x11, 60), (0x21, 10), (0x27, 65536), (0x26, ("k", "v"))]
    v311 = (
        mqtt.connect("c1", username="emq", password="emq_live_x", keepalive_s=30)
        + mqtt.publish("sensors/a", b"21.5")
        + mqtt.publish("sensors/b", b'{"t": 1}', qos=1, packet_id=1)
        + mqtt.publish("sensors/c", b"x", qos=2, packet_id=2)
        + mqtt.pubrel(2)
        + mqtt.subscribe(3, [("a/+", 1)])
        + mqtt.unsubscribe(4, ["a/+"])
        + mqtt.PINGREQ
        + mqtt.disconnect()
    )
    v5 = (
        mqtt.connect(
            "c2",
            level=MQTT_5,
            password=b"token",
            props=v5_props,
            will=("last/will", b"bye", 1, False),
        )
        + mqtt.publish("sensors/a", b"21.5", qos=1, packet_id=1, v5=True, props=[(0x23, 1)])
        + mqtt.publish("", b"aliased", qos=1, packet_id=2, v5=True, props=[(0x23, 1)])
        + mqtt.publish(
            "s/e", b"{}", v5=True, props=[(0x01, 1), (0x03, "application/json"), (0x09, b"c")]
        )
        + mqtt.subscribe(5, [("$share/g/a", 1)], v5=True, props=[(0x0B, 7)])
        + mqtt.unsubscribe(6, ["x"], v5=True)
        + mqtt.disconnect(0x04)
    )
    return {"v311-session": b"\x00" + v311, "v5-session": b"\x01" + v5}


def manifests() -> dict[str, bytes]:
    sha = "ab" * 32
    base = {
        "version": 1,
        "endpoint_id": "ep-1",
        "node_id": "node-a",
        "region": "iad",
        "epoch": 3,
        "seq": 12,
        "frames": 9,
        "first_ts_ms": TS_MS,
        "last_ts_ms": TS_MS + 5,
        "wal_bytes": 4096,
        "artifacts": [
            {
                "kind": "segment",
                "key": "iad/ep-1/s/seg.wal.zst",
                "bytes": 10,
                "rows": 9,
                "sha256": sha,
            },
            {
                "kind": "parquet",
                "key": "iad/ep-1/p/seg.parquet",
                "bytes": 11,
                "rows": 9,
                "sha256": sha,
            },
        ],
        "views": [],
        "timings_ms": {"decode": 1.5, "upload": 7.0},
        "committed_at": "2025-11-30T00:00:01.234Z",
    }
    with_views = json.loads(json.dumps(base))
    with_views["artifacts"] += [
        {
            "kind": "view",
            "key": "views/r/v2/x.parquet",
            "bytes": 5,
            "rows": 3,
            "sha256": sha,
            "view_id": "v1",
        },
        {
            "kind": "dlq",
            "key": "dlq/r/v2/x.parquet",
            "bytes": 5,
            "rows": 5,
            "sha256": sha,
            "view_id": "v1",
        },
    ]
    with_views["views"] = [
        {
            "view_id": "v1",
            "view_name": "r",
            "view_version": 2,
            "is_required": True,
            "processed": 9,
            "accepted": 3,
            "dropped": 1,
            "dlq": 5,
            "error_code": None,
            "error_message": None,
        },
        {
            "view_id": "v2",
            "view_name": "broken",
            "view_version": 1,
            "is_required": False,
            "processed": 0,
            "accepted": 0,
            "dropped": 0,
            "dlq": 0,
            "error_code": "definition_invalid",
            "error_message": "bad columns",
        },
    ]
    encode = lambda m: json.dumps(m, sort_keys=True, separators=(",", ":")).encode() + b"\n"  # noqa: E731
    return {"plain": encode(base), "with-views": encode(with_views)}


SEEDS = {"frames": frames, "records": records, "mqtt": mqtt_packets, "manifest": manifests}


def write() -> None:
    for target, make in SEEDS.items():
        directory = CORPUS / target
        directory.mkdir(parents=True, exist_ok=True)
        for name, data in make().items():
            (directory / f"seed-{name}").write_bytes(data)


if __name__ == "__main__":
    write()
