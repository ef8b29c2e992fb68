"""The node's settings: one frozen tree, built only at the entrypoint (`edgemq node`,
`edgemq up`), every field documented here. Names carry their units."""

from __future__ import annotations

from dataclasses import dataclass, field

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    body_bytes_max: int = 10 * MIB
    """Decoded request body bound (413 beyond it)."""
    record_bytes_max: int = 1 * MIB
    """One record's bound (413 beyond it)."""
    inflight_bytes_max: int = 256 * MIB
    """Bytes of accepted-but-not-yet-fsynced requests across the node (503 beyond)."""
    unshipped_bytes_max: int = 2048 * MIB
    """Per endpoint: WAL bytes on disk not yet committed to the store (503 beyond)."""
    disk_reserve_bytes: int = 512 * MIB
    """Free space kept on the WAL's file system (503 below it)."""
    header_timeout_s: float = 10.0
    """A client must finish sending request headers within this time."""
    body_timeout_s: float = 30.0
    """A client must finish sending the body within this time (408 otherwise)."""
    retry_after_s: int = 1
    """The Retry-After hint of every 503."""
    http_connections_max: int = 1024
    """Open HTTP connections (WebSocket excluded: MQTT counts those) across the node; more
    are answered 503 `connections` without their body being read, then closed (ADR 0014)."""

    def __post_init__(self) -> None:
        # Note: a request reserves its declared length (chunked: body_bytes_max) of the
        # in-flight budget while its body arrives, so with inflight_bytes_max below
        # body_bytes_max chunked requests are always refused (503 inflight).
        if self.record_bytes_max > self.body_bytes_max:
            raise ValueError("record_bytes_max must not exceed body_bytes_max")
        if self.http_connections_max < 1:
            raise ValueError("http_connections_max must be at least 1")


@dataclass(frozen=True, slots=True)
class DeliverySettings:
    workers_per_endpoint: int = 1
    """Segments of one endpoint are delivered in order, one at a time."""
    build_threads: int = 2
    """Threads converting sealed segments (zstd, Parquet, DuckDB views)."""
    retry_base_s: float = 0.5
    retry_cap_s: float = 30.0
    """Capped, jittered exponential backoff between attempts of one segment."""
    permanent_retry_s: float = 60.0
    """Delay between attempts after a permanent store error (the data is kept)."""
    report_batch_max: int = 100
    """Commits per report call to the control plane."""
    zstd_level: int = 1
    """Compression level of the `segments` artifact."""
    view_threads: int = 2
    """Threads of the DuckDB sandbox running one view."""
    view_memory_mib: int = 512
    """Memory limit of the DuckDB sandbox running one view."""
    view_deadline_s: float = 120.0
    """A view running longer is interrupted (and counts as failed)."""


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """The MQTT listener (docs/mqtt.md). Per-endpoint limits come from `mqtt_config`."""

    tls_cert_path: str | None = None
    """PEM certificate chain; with `tls_key_path`, MQTT over TLS is served on `tls_port`."""
    tls_key_path: str | None = None
    """PEM private key of `tls_cert_path`."""
    tls_port: int = 8883
    """MQTT over TLS (only when a certificate and key are configured; 0 = any free port)."""
    max_packet_bytes: int = 256 * 1024
    """Largest packet taken (v5 Maximum Packet Size; 0x95 / disconnect beyond it)."""
    connections_max: int = 100_000
    """Open MQTT sockets (TCP, TLS, WebSocket) across the node; more are closed at once."""
    connecting_max: int = 1024
    """Sockets that have not completed CONNECT yet; more are closed at once (flood guard)."""
    connect_timeout_s: float = 10.0
    """A socket must send its CONNECT (and finish a TLS handshake) within this time."""
    receive_maximum: int = 1024
    """Per connection: QoS 1/2 messages not yet acknowledged (advertised as v5 Receive
    Maximum, exceeding it is 0x93; reading stops there for 3.1.1 clients). Also bounds
    the QoS 2 packet ids remembered until PUBREL."""
    topic_alias_max: int = 16
    """v5 Topic Alias Maximum advertised in CONNACK (aliases held per connection)."""
    drain_ack_wait_s: float = 2.0
    """Drain, token expiry, takeover: wait this long for pending PUBACKs, then disconnect."""
    tick_s: float = 0.5
    """How often keep-alive, CONNECT deadlines and token expiry are checked."""


@dataclass(frozen=True, slots=True)
class NodeSettings:
    data_dir: str
    """WAL, outbox, node id and the last config snapshot live here."""
    control_url: str
    node_key: str
    region: str
    host: str = "127.0.0.1"
    http_port: int = 8080
    mqtt_port: int = 0
    """MQTT over TCP; 0 picks a free port (in-process tests; the CLI's default is 1883)."""
    advertise_host: str | None = None
    """Address put into `dns_ipv4` / the registered URLs (default: host)."""
    segment_bytes_min: int = 8 * MIB
    """Lower bound applied to endpoints' segment_bytes (tests and demos lower it)."""
    drain_deadline_s: float = 30.0
    """SIGTERM: seal and deliver for at most this long, then exit."""
    long_poll_s: int = 25
    heartbeat_interval_s: float = 5.0
    control_timeout_s: float = 10.0
    limits: Limits = field(default_factory=Limits)
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
