"""Every metric the node exports, declared in one place (STYLE.md §9). Hot paths
count per request/batch, never per record.

A `NodeMetrics` owns its own CollectorRegistry so several nodes can live in one
process (tests, `edgemq up`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

LATENCY_BUCKETS_S = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
SLOW_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SIZE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)


class NodeMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self._ingest_children: dict[tuple[str, str], tuple[Counter, Counter]] = {}
        self._request_children: dict[tuple[str, int], Counter] = {}
        self.requests = Counter(
            "edgemq_http_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.records_in = Counter(
            "edgemq_ingest_records", "Records acknowledged", ["endpoint", "transport"], registry=r
        )
        self.bytes_in = Counter(
            "edgemq_ingest_bytes",
            "Record bytes acknowledged",
            ["endpoint", "transport"],
            registry=r,
        )
        self.rejected = Counter(
            "edgemq_ingest_rejected", "Requests refused with 503, by reason", ["reason"], registry=r
        )
        self.append_latency = Histogram(
            "edgemq_wal_append_seconds",
            "From append to the fsync that acknowledges it",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.fsync_seconds = Histogram(
            "edgemq_wal_fsync_seconds",
            "Duration of one group-commit fdatasync",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.group_commit_appends = Histogram(
            "edgemq_wal_group_commit_appends",
            "Appends acknowledged by one fdatasync",
            buckets=SIZE_BUCKETS,
            registry=r,
        )
        self.inflight_bytes = Gauge(
            "edgemq_ingest_inflight_bytes", "Bytes appended, not yet fsynced", registry=r
        )
        self.http_connections = Gauge(
            "edgemq_http_connections",
            "Open HTTP connections counted against --http-connections-max",
            registry=r,
        )
        self.open_segment_bytes = Gauge(
            "edgemq_wal_open_segment_bytes", "Bytes in the open segment", ["endpoint"], registry=r
        )
        self.unshipped_bytes = Gauge(
            "edgemq_wal_unshipped_bytes", "WAL bytes not committed yet", ["endpoint"], registry=r
        )
        self.backlog_segments = Gauge(
            "edgemq_delivery_backlog_segments", "Sealed segments waiting", ["endpoint"], registry=r
        )
        self.backlog_bytes = Gauge(
            "edgemq_delivery_backlog_bytes",
            "Bytes of sealed segments waiting",
            ["endpoint"],
            registry=r,
        )
        self.commit_lag_s = Gauge(
            "edgemq_delivery_commit_lag_seconds",
            "Age of the oldest uncommitted sealed segment",
            ["endpoint"],
            registry=r,
        )
        self.stage_seconds = Histogram(
            "edgemq_delivery_stage_seconds",
            "Delivery stage durations (build, upload, manifest, report)",
            ["stage"],
            buckets=SLOW_BUCKETS_S,
            registry=r,
        )
        self.upload_retries = Counter(
            "edgemq_delivery_retries",
            "Failed delivery attempts, by error class",
            ["kind"],
            registry=r,
        )
        self.commits = Counter(
            "edgemq_delivery_commits",
            "Segments committed (manifest stored)",
            ["endpoint"],
            registry=r,
        )
        self.view_failures = Counter(
            "edgemq_view_failures", "View executions that failed", ["view", "required"], registry=r
        )
        self.outbox_reports = Gauge(
            "edgemq_outbox_reports", "Commit reports waiting for the control plane", registry=r
        )
        self.recovery_bytes_cut = Counter(
            "edgemq_wal_recovery_bytes_cut", "Bytes truncated from torn tails at start", registry=r
        )
        self.wal_failed = Gauge(
            "edgemq_wal_failed",
            "1 when an endpoint's WAL is fail-stopped",
            ["endpoint"],
            registry=r,
        )
        self.config_epoch = Gauge(
            "edgemq_config_epoch", "Config epoch applied by this node", registry=r
        )
        self.control_errors = Counter(
            "edgemq_control_errors", "Failed calls to the control plane", ["call"], registry=r
        )
        self.quarantined = Counter(
            "edgemq_segments_quarantined", "Sealed segments found corrupt", registry=r
        )
        # MQTT (ingest/mqtt): counted per read or per batch, never per message.
        self.mqtt_connections = Gauge(
            "edgemq_mqtt_connections", "Open MQTT sockets", ["transport"], registry=r
        )
        self.mqtt_packets = Counter(
            "edgemq_mqtt_packets", "MQTT packets received, by type", ["type"], registry=r
        )
        self.mqtt_refused = Counter(
            "edgemq_mqtt_refused",
            "MQTT connections refused (CONNACK failure or closed before CONNECT), by reason",
            ["reason"],
            registry=r,
        )
        self.mqtt_disconnects = Counter(
            "edgemq_mqtt_disconnects",
            "MQTT connections closed by the node, by reason",
            ["reason"],
            registry=r,
        )
        self.mqtt_held = Counter(
            "edgemq_mqtt_held",
            "Reads held back (socket paused, retried) because the node could not take them",
            ["reason"],
            registry=r,
        )
        self.mqtt_ack_seconds = Histogram(
            "edgemq_mqtt_ack_seconds",
            "From reading a QoS 1/2 PUBLISH batch to writing its PUBACK/PUBREC (after fsync)",
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )

    # Hot-path helpers: labelled children are looked up once and kept (prometheus_client's
    # `labels()` costs a lock and a dict lookup per call).
    def ingested(
        self, endpoint: str, transport: str, records: int, nbytes: int, latency_s: float
    ) -> None:
        key = (endpoint, transport)
        children = self._ingest_children.get(key)
        if children is None:
            children = self._ingest_children[key] = (
                self.records_in.labels(endpoint, transport),
                self.bytes_in.labels(endpoint, transport),
            )
        children[0].inc(records)
        children[1].inc(nbytes)
        self.append_latency.observe(latency_s)

    def request_done(self, route: str, status: int) -> None:
        key = (route, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(route, str(status))
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
