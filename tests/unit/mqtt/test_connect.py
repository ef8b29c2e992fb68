"""CONNECT → CONNACK decisions (ingest.mqtt.connect) against a snapshot, without I/O."""

from __future__ import annotations

import pytest

from ingest.auth import IngestAuth
from ingest.mqtt import client_codec as cc
from ingest.mqtt.connect import Refused, check, connack_ok, connack_refused
from ingest.mqtt.packets import Connect, decode_connect
from ingest.mqtt.routing import Directory
from ingest.settings import MqttSettings
from ingest.snapshot import Endpoint, IngestKey, MqttConfig, Snapshot
from shared.apikeys import generate_key, key_digest

KEY = generate_key()
SNAPSHOT = Snapshot(
    config_epoch=1,
    region="loc",
    endpoints=(
        Endpoint(
            id="ep1",
            account_id="acme",
            tenant=7,
            accepting=True,
            config_epoch=1,
            segment_bytes=1 << 20,
            segment_max_age_seconds=1,
            mqtt_config=MqttConfig(enabled=True, keepalive_max_s=60, qos_max=1),
        ),
    ),
    ingest_keys=(IngestKey(key_digest(KEY), "acme", ("ingest",)),),
)


def _connect(**kwargs: object) -> Connect:
    (packet,) = cc.split_packets(bytearray(cc.connect(**kwargs)))  # type: ignore[arg-type]
    return decode_connect(packet.flags, packet.body)


def _check(connect: Connect) -> object:
    return check(connect, label=None, directory=Directory(SNAPSHOT), auth=IngestAuth(SNAPSHOT))


def test_a_key_routes_to_the_accounts_only_mqtt_endpoint_with_a_capped_keep_alive() -> None:
    grant = check(
        _connect(client_id="d1", username="d1", password=KEY, keepalive_s=600),
        label=None,
        directory=Directory(SNAPSHOT),
        auth=IngestAuth(SNAPSHOT),
    )
    assert (grant.endpoint.id, grant.account_id, grant.client_id) == ("ep1", "acme", "d1")
    assert (grant.keepalive_s, grant.key_digest, grant.expires_at) == (60, key_digest(KEY), None)


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"password": "emq_live_" + "0" * 32}, 0x86),
        ({"password": None}, 0x86),
        ({"password": b"\xff\xfe"}, 0x86),
        ({"username": "d@elsewhere"}, 0x87),
        ({"client_id": "", "clean_start": False}, 0x85),
        ({"level": 5, "props": [(0x15, "SCRAM")]}, 0x8C),
        ({"level": 5, "will": ("w", b"x", 0, True)}, 0x9A),
    ],
)
def test_refusals_carry_their_reason_codes(kwargs: dict[str, object], code: int) -> None:
    fields: dict[str, object] = {"client_id": "d1", "username": "d1", "password": KEY}
    fields.update(kwargs)
    with pytest.raises(Refused) as caught:
        _check(_connect(**fields))
    assert caught.value.code == code


def test_a_v5_connack_advertises_limits_and_an_assigned_client_id() -> None:
    connect = _connect(client_id="", level=5, password=KEY, props=[(0x11, 30)])
    grant = check(connect, label=None, directory=Directory(SNAPSHOT), auth=IngestAuth(SNAPSHOT))
    assert grant.assigned_client_id
    (packet,) = cc.split_packets(bytearray(connack_ok(connect, grant, MqttSettings())))
    ack = cc.decode_connack(packet.body, True)
    assert ack.props[0x12] == grant.client_id
    assert (ack.props[0x24], ack.props[0x11], ack.props[0x13], ack.props[0x27]) == (
        1,
        0,
        60,
        256 * 1024,
    )


@pytest.mark.parametrize(
    ("v5_code", "v3_code"), [(0x86, 4), (0x87, 5), (0x85, 2), (0x84, 1), (0x97, 3), (0x88, 3)]
)
def test_311_clients_get_the_matching_return_code(v5_code: int, v3_code: int) -> None:
    assert connack_refused(False, v5_code) == bytes((0x20, 2, 0, v3_code))
    assert connack_refused(True, v5_code) == bytes((0x20, 3, 0, v5_code, 0))
