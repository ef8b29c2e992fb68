"""CONNECT → CONNACK: who is connecting, to which endpoint, on what terms.

Checks, cheapest first, each refusal a v5 reason code (mapped to the 3.1.1 return
code for 3.1.1 clients):

    v5 Authentication Method (enhanced auth) ........... 0x8C  (3.1.1: n/a)
    empty client id with clean session 0 (3.1.1) ...... 0x85 → 2 identifier rejected
    will retain (v5: Retain Available is 0) ........... 0x9A
    no password / unknown key / bad or expired token .. 0x86 → 4 bad user name or password
    token without the ingest scope .................... 0x87 → 5 not authorized
    no endpoint (routing.py), MQTT disabled ........... 0x87 → 5
    node draining or the endpoint's WAL failed ........ 0x88 → 3 server unavailable
    free disk under the reserve ....................... 0x89 → 3
    the endpoint's delivery backlog is full ........... 0x97 → 3
    the endpoint's max_connections on this node ....... 0x97 → 3 (listener.claim)

Sessions are not kept (docs/adr/0008): CONNACK always says session present 0 and a v5
Session Expiry above 0 is answered with Session Expiry 0.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from shared.apikeys import KEY_PREFIX, key_digest
from wal import WriteAheadLog

from ..admission import Admission
from ..auth import AuthError, IngestAuth
from ..settings import MqttSettings
from ..snapshot import Endpoint
from .codec import (
    BAD_AUTHENTICATION_METHOD,
    BAD_USERNAME_OR_PASSWORD,
    CLIENT_ID_NOT_VALID,
    NOT_AUTHORIZED,
    QUOTA_EXCEEDED,
    RETAIN_NOT_SUPPORTED,
    SERVER_BUSY,
    SERVER_UNAVAILABLE,
    SUCCESS,
    UNSUPPORTED_PROTOCOL_VERSION,
    PropertyValue,
)
from .packets import Connect, encode_connack
from .routing import Directory, NotRouted

AUTHENTICATION_METHOD = 0x15
SESSION_EXPIRY = 0x11

V3_CODES = {
    SUCCESS: 0,
    UNSUPPORTED_PROTOCOL_VERSION: 1,
    CLIENT_ID_NOT_VALID: 2,
    BAD_USERNAME_OR_PASSWORD: 4,
    NOT_AUTHORIZED: 5,
}
"""v5 reason → 3.1.1 CONNACK return code; anything else is 3 (server unavailable)."""


class Refused(Exception):
    """The CONNECT is refused with v5 reason `code`; `reason` labels the metric."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Grant:
    endpoint: Endpoint
    account_id: str
    key_digest: str | None
    """The API key's digest (re-checked against new snapshots); None for a JWT."""
    expires_at: int | None
    """A JWT's `exp` (seconds): the session ends then (docs/adr/0008)."""
    client_id: str
    assigned_client_id: bool
    keepalive_s: int
    """Effective keep alive: the client's, capped by the endpoint's keepalive_max_s."""


def check(
    connect: Connect,
    *,
    label: str | None,
    directory: Directory,
    auth: IngestAuth,
    now: float | None = None,
) -> Grant:
    """Authenticate and route a decoded CONNECT; `Refused` says why not."""
    props = connect.properties
    if AUTHENTICATION_METHOD in props:
        raise Refused(BAD_AUTHENTICATION_METHOD, "auth_method", "enhanced auth is not supported")
    client_id, assigned = connect.client_id, False
    if not client_id:
        if not connect.v5 and not connect.clean_start:
            raise Refused(CLIENT_ID_NOT_VALID, "client_id", "empty client id needs clean session")
        client_id, assigned = "auto-" + secrets.token_hex(8), connect.v5
    if connect.v5 and connect.will is not None and connect.will.retain:
        raise Refused(RETAIN_NOT_SUPPORTED, "will_retain", "retained messages are not supported")
    secret = _password(connect.password)
    wall = time.time() if now is None else now
    try:
        caller = auth.authenticate_secret(secret, now=int(wall))
    except AuthError as err:
        code = NOT_AUTHORIZED if err.status == 403 else BAD_USERNAME_OR_PASSWORD
        raise Refused(code, "auth", err.message) from err
    try:
        endpoint = directory.resolve(caller.account_id, label, connect.username)
    except NotRouted as err:
        raise Refused(NOT_AUTHORIZED, "route", str(err)) from err
    config = endpoint.mqtt_config
    assert config is not None  # resolve returns MQTT-enabled endpoints only
    keepalive_s = connect.keepalive_s
    if config.keepalive_max_s and (keepalive_s == 0 or keepalive_s > config.keepalive_max_s):
        keepalive_s = config.keepalive_max_s
    return Grant(
        endpoint=endpoint,
        account_id=caller.account_id,
        key_digest=key_digest(secret) if secret.startswith(KEY_PREFIX) else None,
        expires_at=caller.expires_at,
        client_id=client_id,
        assigned_client_id=assigned,
        keepalive_s=keepalive_s,
    )


def check_capacity(admission: Admission, wal: WriteAheadLog | None) -> None:
    """The node-side conditions that refuse a CONNECT (HTTP would answer 503)."""
    reason = admission.refuse_reason(wal, 0)
    if reason in ("draining", "wal_failed"):
        raise Refused(SERVER_UNAVAILABLE, reason, f"server unavailable: {reason}")
    if reason == "disk":
        raise Refused(SERVER_BUSY, reason, "the node is low on disk space")
    if reason == "backlog":
        raise Refused(QUOTA_EXCEEDED, reason, "the endpoint's delivery backlog is full")


def _password(raw: bytes | None) -> str:
    if not raw:
        return ""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return ""


def connack_ok(connect: Connect, grant: Grant, settings: MqttSettings) -> bytes:
    if not connect.v5:
        return encode_connack(False, 0)
    config = grant.endpoint.mqtt_config
    assert config is not None
    props: list[tuple[int, PropertyValue]] = [
        (0x21, settings.receive_maximum),
        (0x22, settings.topic_alias_max),
        (0x25, 0),  # Retain Available
        (0x27, settings.max_packet_bytes),
        (0x28, 0),  # Wildcard Subscription Available
        (0x29, 0),  # Subscription Identifiers Available
        (0x2A, 0),  # Shared Subscription Available
        (0x13, grant.keepalive_s),  # Server Keep Alive
    ]
    if config.qos_max < 2:
        props.append((0x24, config.qos_max))
    if connect.properties.get(SESSION_EXPIRY, 0):
        props.append((SESSION_EXPIRY, 0))
    if grant.assigned_client_id:
        props.append((0x12, grant.client_id))
    return encode_connack(True, SUCCESS, props)


def connack_refused(v5: bool, code: int) -> bytes:
    return encode_connack(v5, code if v5 else V3_CODES.get(code, 3))
