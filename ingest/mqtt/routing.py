"""Which endpoint an MQTT connection writes to (DESIGN.md §4), from the config snapshot.

Order: the TLS SNI / WebSocket `Host` first label when it names a known endpoint; else
the user name's suffix after the last `@` (`device-7@<endpoint_id>`); else the only
MQTT-enabled endpoint of the caller's account in this region (the snapshot holds only
this region's endpoints); else "not authorized". A label that names no endpoint (an IP
address, a generic host name) falls through; a named endpoint that is another
account's, deleted, or has MQTT disabled is refused exactly like an unknown one.

`Directory` indexes one snapshot once (endpoints by id, MQTT endpoints by account,
ingest key digests) so per-connection checks are dictionary lookups; the listener
rebuilds it when the node applies a new snapshot.
"""

from __future__ import annotations

from ..auth import INGEST_SCOPE
from ..snapshot import Endpoint, Snapshot


def first_label(host: str | None) -> str | None:
    """`ep1` of `ep1.mqtt.example.com` or `ep1.example.com:443`; None when empty."""
    if not host:
        return None
    name = host if host.endswith("]") else host.rsplit(":", 1)[0]
    return name.split(".", 1)[0] or None


class NotRouted(Exception):
    """No endpoint this caller may publish to over MQTT (CONNACK not authorized)."""


def mqtt_enabled(endpoint: Endpoint) -> bool:
    config = endpoint.mqtt_config
    return endpoint.accepting and config is not None and config.enabled


class Directory:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.by_id: dict[str, Endpoint] = {e.id: e for e in snapshot.endpoints}
        self.mqtt_by_account: dict[str, list[Endpoint]] = {}
        for endpoint in snapshot.endpoints:
            if mqtt_enabled(endpoint):
                self.mqtt_by_account.setdefault(endpoint.account_id, []).append(endpoint)
        self.key_accounts: dict[str, str] = {
            k.digest: k.account_id for k in snapshot.ingest_keys if INGEST_SCOPE in k.scopes
        }

    def resolve(self, account_id: str, label: str | None, username: str | None) -> Endpoint:
        """The endpoint for a caller of `account_id`; NotRouted when there is none."""
        if label:
            found = self.by_id.get(label)
            if found is not None:
                return self._check(found, account_id)
        if username:
            _, at, suffix = username.rpartition("@")
            if at and suffix:
                return self._check(self.by_id.get(suffix), account_id)
        candidates = self.mqtt_by_account.get(account_id, [])
        if len(candidates) == 1:
            return candidates[0]
        if not candidates:
            raise NotRouted("the account has no MQTT-enabled endpoint in this region")
        raise NotRouted(
            "the account has several MQTT endpoints: name one in the user name "
            "(device@<endpoint_id>) or the host name"
        )

    def _check(self, endpoint: Endpoint | None, account_id: str) -> Endpoint:
        if endpoint is None or endpoint.account_id != account_id:
            raise NotRouted("no such endpoint")
        if not mqtt_enabled(endpoint):
            raise NotRouted("MQTT is not enabled on this endpoint")
        return endpoint

    def still_allowed(
        self, endpoint_id: str, account_id: str, key_digest: str | None
    ) -> Endpoint | None:
        """The endpoint's current config if a session admitted earlier may go on."""
        endpoint = self.by_id.get(endpoint_id)
        if endpoint is None or endpoint.account_id != account_id or not mqtt_enabled(endpoint):
            return None
        if key_digest is not None and self.key_accounts.get(key_digest) != account_id:
            return None
        return endpoint
