"""The config snapshot a node long-polls from the control plane (DESIGN.md §8), typed.

Parsed with msgspec at the edge (unknown fields ignored, so a newer control plane can
add fields); everything downstream reads these frozen structs. The node persists the
last snapshot it applied (`save`/`load`) so ingest keeps working on it while the
control plane is down, including across a node restart.
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

SNAPSHOT_FILE = "config-snapshot.json"


class Destination(msgspec.Struct, frozen=True):
    id: str
    bucket: str
    region: str
    role_arn: str
    external_id: str = ""
    prefix: str = ""
    kms_key_arn: str | None = None
    path_style: bool = False
    endpoint_url: str | None = None
    status: str = "pending"

    @property
    def is_local(self) -> bool:
        return (self.endpoint_url or "").startswith("file://")

    @property
    def local_root(self) -> str:
        """The directory of a `file://` destination (objects at `<root>/<bucket>/<key>`)."""
        return (self.endpoint_url or "")[len("file://") :]


class Binding(msgspec.Struct, frozen=True):
    binding_id: str
    view_id: str
    view_name: str
    view_version: int
    is_required: bool
    definition: dict[str, Any]
    canary_start_ts_ms: int | None = None


class MqttConfig(msgspec.Struct, frozen=True):
    enabled: bool = False
    max_connections: int = 1000
    keepalive_max_s: int = 300
    qos_max: int = 1


class Endpoint(msgspec.Struct, frozen=True):
    id: str
    account_id: str
    tenant: int
    accepting: bool
    config_epoch: int
    segment_bytes: int
    segment_max_age_seconds: int
    output_formats: tuple[str, ...] = ()
    mqtt_config: MqttConfig | None = None
    destination: Destination | None = None
    bindings: tuple[Binding, ...] = ()

    def bindings_at(self, ts_ms: int) -> tuple[Binding, ...]:
        """Bindings that apply to a segment sealed at `ts_ms` (canary start before it)."""
        return tuple(
            b
            for b in self.bindings
            if b.canary_start_ts_ms is None or b.canary_start_ts_ms <= ts_ms
        )


class IngestKey(msgspec.Struct, frozen=True):
    digest: str
    account_id: str
    scopes: tuple[str, ...]


class Snapshot(msgspec.Struct, frozen=True):
    config_epoch: int
    region: str
    endpoints: tuple[Endpoint, ...] = ()
    ingest_keys: tuple[IngestKey, ...] = ()
    jwks: dict[str, Any] = msgspec.field(default_factory=dict)

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        """The endpoint in this snapshot (a linear scan: the node's request path uses
        `Endpoints.lookup`; tests read the applied snapshot with this)."""
        for e in self.endpoints:
            if e.id == endpoint_id:
                return e
        return None


EMPTY = Snapshot(config_epoch=0, region="")


class SnapshotError(ValueError):
    """The control plane sent (or the disk holds) something that is not a snapshot."""


def parse(data: bytes | dict[str, Any]) -> Snapshot:
    try:
        if isinstance(data, bytes):
            return msgspec.json.decode(data, type=Snapshot)
        return msgspec.convert(data, Snapshot)
    except msgspec.ValidationError as err:
        raise SnapshotError(f"invalid config snapshot: {err}") from err
    except msgspec.DecodeError as err:
        raise SnapshotError(f"config snapshot is not JSON: {err}") from err


def save(snapshot: Snapshot, data_dir: str) -> None:
    """Atomically replace the persisted snapshot (blocking: call off the loop)."""
    path = os.path.join(data_dir, SNAPSHOT_FILE)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(msgspec.json.encode(snapshot))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(data_dir: str) -> Snapshot | None:
    """The persisted snapshot, None if there is none (blocking)."""
    path = os.path.join(data_dir, SNAPSHOT_FILE)
    try:
        with open(path, "rb") as f:
            return parse(f.read())
    except FileNotFoundError:
        return None
