"""Endpoint resolution for MQTT connections (DESIGN.md §4)."""

from __future__ import annotations

import pytest

from ingest.mqtt.routing import Directory, NotRouted, first_label
from ingest.snapshot import Endpoint, IngestKey, MqttConfig, Snapshot


def _endpoint(
    endpoint_id: str, account: str, *, mqtt: bool = True, accepting: bool = True
) -> Endpoint:
    return Endpoint(
        id=endpoint_id,
        account_id=account,
        tenant=1,
        accepting=accepting,
        config_epoch=1,
        segment_bytes=1 << 20,
        segment_max_age_seconds=1,
        mqtt_config=MqttConfig(enabled=True) if mqtt else None,
    )


def _directory(*endpoints: Endpoint) -> Directory:
    keys = (IngestKey("d1", "acme", ("ingest",)), IngestKey("d2", "acme", ("metrics",)))
    return Directory(Snapshot(1, "loc", endpoints, keys))


def test_the_host_label_wins_over_the_user_name() -> None:
    d = _directory(_endpoint("ep1", "acme"), _endpoint("ep2", "acme"))
    assert d.resolve("acme", "ep1", "dev@ep2").id == "ep1"


def test_a_label_naming_no_endpoint_falls_through_to_the_user_name() -> None:
    d = _directory(_endpoint("ep1", "acme"), _endpoint("ep2", "acme"))
    assert d.resolve("acme", "127", "dev-7@ep2").id == "ep2"


def test_the_only_mqtt_endpoint_of_the_account_is_the_default() -> None:
    d = _directory(
        _endpoint("ep1", "acme"),
        _endpoint("ep2", "acme", mqtt=False),
        _endpoint("ep3", "other"),
    )
    assert d.resolve("acme", None, "device-without-at").id == "ep1"


@pytest.mark.parametrize(
    ("label", "username"),
    [
        ("ep3", None),  # another account's endpoint by label
        (None, "dev@ep3"),  # … by user name
        (None, "dev@nope"),  # unknown
        (None, "dev@ep2"),  # MQTT disabled
        (None, "dev@ep4"),  # deleted (not accepting)
        (None, None),  # two MQTT endpoints: ambiguous
    ],
)
def test_unresolvable_or_foreign_endpoints_are_not_routed(
    label: str | None, username: str | None
) -> None:
    d = _directory(
        _endpoint("ep1", "acme"),
        _endpoint("ep2", "acme", mqtt=False),
        _endpoint("ep3", "other"),
        _endpoint("ep4", "acme", accepting=False),
        _endpoint("ep5", "acme"),
    )
    with pytest.raises(NotRouted):
        d.resolve("acme", label, username)


def test_sessions_stay_allowed_only_while_endpoint_and_key_stay_valid() -> None:
    d = _directory(_endpoint("ep1", "acme"), _endpoint("ep2", "acme", mqtt=False))
    assert d.still_allowed("ep1", "acme", "d1") is not None
    assert d.still_allowed("ep1", "acme", None) is not None  # a JWT session
    assert d.still_allowed("ep1", "acme", "d2") is None  # no ingest scope
    assert d.still_allowed("ep1", "acme", "gone") is None  # revoked key
    assert d.still_allowed("ep2", "acme", "d1") is None  # MQTT disabled since
    assert d.still_allowed("ep1", "other", None) is None


@pytest.mark.parametrize(
    ("host", "label"),
    [
        ("ep1.mqtt.example.com", "ep1"),
        ("ep1.example.com:8080", "ep1"),
        ("localhost", "localhost"),
        ("", None),
        (None, None),
        ("[::1]", "[::1]"),
    ],
)
def test_first_label(host: str | None, label: str | None) -> None:
    assert first_label(host) == label
