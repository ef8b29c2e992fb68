"""`edgemq` command line. `edgemq --help` lists the commands; every option also reads
an `EDGEMQ_*` environment variable."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .options import add_option


def _segment_cat(args: argparse.Namespace) -> int:
    from wal.dump import dump_segment

    try:
        error = dump_segment(args.path, sys.stdout)
    except BrokenPipeError:
        raise  # the reader went away (`| head`): not an error of the segment
    except OSError as err:
        print(f"edgemq segment cat: {err}", file=sys.stderr)
        return 2
    if error is not None:
        print(f"edgemq segment cat: {args.path}: {error}", file=sys.stderr)
        return 1
    return 0


def _up(args: argparse.Namespace) -> int:
    from .up import up

    return up(args.data_dir, args.host, args.control_port, args.ingest_port, args.mqtt_port)


def _control(args: argparse.Namespace) -> int:
    import asyncio

    from control.server import serve
    from control.services.common import ControlSettings

    if not 0 < args.node_heartbeat_interval_s < args.node_heartbeat_timeout_s:
        print(
            "edgemq control: --node-heartbeat-timeout-s must exceed "
            "--node-heartbeat-interval-s (both > 0)",
            file=sys.stderr,
        )
        return 2
    settings = ControlSettings(
        segment_bytes_min=args.segment_bytes_min,
        public_url=args.public_url or f"http://{args.host}:{args.port}",
        node_heartbeat_interval_s=args.node_heartbeat_interval_s,
        node_heartbeat_timeout_s=args.node_heartbeat_timeout_s,
    )
    asyncio.run(serve(args.database_url, args.host, args.port, settings))
    return 0


def _node(args: argparse.Namespace) -> int:
    import asyncio
    from dataclasses import replace

    from ingest.settings import DeliverySettings, Limits, MqttSettings, NodeSettings

    from .node_cmd import run_node, use_uvloop

    limits = replace(
        Limits(),
        body_bytes_max=args.body_bytes_max,
        unshipped_bytes_max=args.unshipped_bytes_max,
        disk_reserve_bytes=args.disk_reserve_bytes,
        inflight_bytes_max=args.inflight_bytes_max,
        header_timeout_s=args.header_timeout_s,
        body_timeout_s=args.body_timeout_s,
        http_connections_max=args.http_connections_max,
    )
    settings = NodeSettings(
        data_dir=args.data_dir,
        control_url=args.control_url,
        node_key=args.node_key,
        region=args.region,
        host=args.host,
        http_port=args.http_port,
        mqtt_port=args.mqtt_port,
        advertise_host=args.advertise_host or None,
        segment_bytes_min=args.segment_bytes_min,
        drain_deadline_s=args.drain_deadline_s,
        control_timeout_s=args.control_timeout_s,
        limits=limits,
        delivery=DeliverySettings(
            retry_cap_s=args.retry_cap_s, permanent_retry_s=args.permanent_retry_s
        ),
        mqtt=MqttSettings(
            tls_cert_path=args.mqtt_tls_cert or None,
            tls_key_path=args.mqtt_tls_key or None,
            tls_port=args.mqtt_tls_port,
        ),
    )
    if not settings.node_key:
        print("edgemq node: --node-key (or EDGEMQ_NODE_KEY) is required", file=sys.stderr)
        return 2
    use_uvloop()
    return asyncio.run(run_node(settings))


def _admin(args: argparse.Namespace) -> int:
    import asyncio
    import json

    from control import admin

    try:
        if args.admin_command == "create-account":
            result = asyncio.run(admin.create_account(args.database_url, args.name))
        elif args.admin_command == "create-key":
            scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
            result = asyncio.run(
                admin.create_key(args.database_url, args.account, scopes, args.name, args.owner)
            )
        elif args.admin_command == "create-node-key":
            result = asyncio.run(admin.create_node_key(args.database_url, args.name))
        elif args.admin_command == "list-accounts":
            result = asyncio.run(admin.list_accounts(args.database_url))
        elif args.admin_command == "list-keys":
            if bool(args.account) == args.node_keys:
                raise ValueError("list-keys needs exactly one of --account ID and --node-keys")
            result = asyncio.run(admin.list_keys(args.database_url, args.account or None))
        else:
            result = asyncio.run(admin.revoke_key(args.database_url, args.key_id))
    except ValueError as err:
        print(f"edgemq admin: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgemq", description="Self-hosted EdgeMQ: HTTP/MQTT in, query-ready S3 out."
    )
    add_option(parser, "--log-level", default="WARNING", help="logging level")
    add_option(parser, "--log-format", default="text", help="text or json (one object per line)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = commands.add_parser("up", help="run everything on this machine with embedded defaults")
    add_option(up, "--data-dir", default="./edgemq-data", help="where state and the WAL live")
    add_option(up, "--host", default="127.0.0.1", help="address to listen on")
    add_option(up, "--control-port", default=8081, type=int, help="control-plane API port")
    add_option(up, "--ingest-port", default=8080, type=int, help="HTTP ingest port")
    add_option(up, "--mqtt-port", default=1883, type=int, help="MQTT port")
    up.set_defaults(func=_up)

    from control.server import DEFAULT_DATABASE_URL

    control = commands.add_parser("control", help="run the control plane (REST API)")
    add_option(
        control,
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="sqlite:///PATH or postgresql://…",
    )
    add_option(control, "--host", default="127.0.0.1", help="address to listen on")
    add_option(control, "--port", default=8081, type=int, help="port to listen on")
    add_option(
        control,
        "--segment-bytes-min",
        default=8 * 1024 * 1024,
        type=int,
        help="lowest segment_bytes the API accepts (tests and demos lower it)",
    )
    add_option(
        control,
        "--public-url",
        default="",
        help="URL clients reach this API at (download links); default http://HOST:PORT",
    )
    add_option(
        control,
        "--node-heartbeat-interval-s",
        default=5.0,
        type=float,
        help="how often nodes heartbeat (told to them when they register)",
    )
    add_option(
        control,
        "--node-heartbeat-timeout-s",
        default=30.0,
        type=float,
        help="a node silent this long is unhealthy: it leaves dns_ipv4, its region may turn "
        "degraded (give `edgemq status --heartbeat-timeout-s` the same value)",
    )
    control.set_defaults(func=_control)

    node = commands.add_parser("node", help="run an ingest node (HTTP ingest, WAL, delivery)")
    add_option(node, "--control-url", default="http://127.0.0.1:8081", help="control plane URL")
    add_option(node, "--node-key", default="", help="API key with the node scope")
    add_option(node, "--region", default="loc", help="region code this node serves")
    add_option(node, "--data-dir", default="./edgemq-node", help="WAL, outbox, node id")
    add_option(node, "--host", default="127.0.0.1", help="address to listen on")
    add_option(node, "--http-port", default=8080, type=int, help="HTTP ingest port")
    add_option(node, "--mqtt-port", default=1883, type=int, help="MQTT port")
    add_option(node, "--mqtt-tls-cert", default="", help="PEM certificate chain for MQTT over TLS")
    add_option(node, "--mqtt-tls-key", default="", help="PEM private key for MQTT over TLS")
    add_option(
        node,
        "--mqtt-tls-port",
        default=8883,
        type=int,
        help="MQTT over TLS port (served when a certificate and key are given)",
    )
    add_option(node, "--advertise-host", default="", help="address announced to the control plane")
    add_option(
        node,
        "--segment-bytes-min",
        default=8 * 1024 * 1024,
        type=int,
        help="lower bound for endpoints' segment_bytes",
    )
    add_option(
        node,
        "--drain-deadline-s",
        default=30.0,
        type=float,
        help="SIGTERM: seal and deliver for at most this long",
    )
    add_option(
        node, "--body-bytes-max", default=10 * 1024 * 1024, type=int, help="request body bound"
    )
    add_option(
        node,
        "--unshipped-bytes-max",
        default=2048 * 1024 * 1024,
        type=int,
        help="per-endpoint WAL backlog bound (503 beyond)",
    )
    add_option(
        node,
        "--disk-reserve-bytes",
        default=512 * 1024 * 1024,
        type=int,
        help="free disk kept (503 below)",
    )
    add_option(
        node,
        "--inflight-bytes-max",
        default=256 * 1024 * 1024,
        type=int,
        help="bytes waiting for fsync across the node (503 beyond)",
    )
    add_option(
        node,
        "--header-timeout-s",
        default=10.0,
        type=float,
        help="a connection must deliver a complete request head within this time",
    )
    add_option(
        node,
        "--body-timeout-s",
        default=30.0,
        type=float,
        help="a request body must arrive within this time (408 otherwise)",
    )
    add_option(
        node,
        "--http-connections-max",
        default=1024,
        type=int,
        help="open HTTP connections across the node (503 `connections` beyond; ADR 0014)",
    )
    add_option(
        node,
        "--retry-cap-s",
        default=30.0,
        type=float,
        help="longest delay between delivery retries after transient errors",
    )
    add_option(
        node,
        "--permanent-retry-s",
        default=60.0,
        type=float,
        help="delay between delivery retries after permanent store errors",
    )
    add_option(
        node,
        "--control-timeout-s",
        default=10.0,
        type=float,
        help="deadline of one call to the control plane",
    )
    node.set_defaults(func=_node)

    admin = commands.add_parser("admin", help="operator commands on the control store")
    add_option(
        admin,
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="sqlite:///PATH or postgresql://…",
    )
    # The arguments of the admin sub-commands (names, --account, --scopes, --key-id,
    # --node-keys, …) say what this one invocation acts on: unlike settings, they read
    # no EDGEMQ_* variable (a stale EDGEMQ_KEY_ID must never revoke a key). docs/cli.md.
    admin_commands = admin.add_subparsers(dest="admin_command", required=True)
    account = admin_commands.add_parser("create-account", help="create an account (tenant)")
    account.add_argument("name")
    key = admin_commands.add_parser("create-key", help="create an API key for an account")
    key.add_argument("--account", required=True, help="account id")
    key.add_argument("--scopes", required=True, help="comma-separated: ingest,metrics,admin")
    key.add_argument("--name", default="cli", help="key name")
    key.add_argument("--owner", default=None, help="owner e-mail (recorded as created_by)")
    node_key = admin_commands.add_parser("create-node-key", help="create a key for ingest nodes")
    node_key.add_argument("name")
    admin_commands.add_parser(
        "list-accounts", help="list accounts with their active key and endpoint counts"
    )
    list_keys = admin_commands.add_parser(
        "list-keys", help="list the API keys of an account, or the node keys (no secrets)"
    )
    list_keys.add_argument("--account", default="", help="account id")
    list_keys.add_argument("--node-keys", action="store_true", help="list node keys instead")
    revoke = admin_commands.add_parser(
        "revoke-key",
        help="revoke an API key (idempotent); nodes drop a revoked ingest key with the "
        "next config epoch",
    )
    revoke.add_argument("--key-id", required=True, help="the key's id (from list-keys)")
    admin.set_defaults(func=_admin)

    from .read_cmd import add_read_parser
    from .status_cmd import add_status_parser

    add_status_parser(commands)
    add_read_parser(commands)

    segment = commands.add_parser("segment", help="inspect WAL segment files")
    segment_commands = segment.add_subparsers(dest="segment_command", required=True)
    cat = segment_commands.add_parser(
        "cat",
        help="print a .wal or .wal.zst segment as JSON lines, verifying CRCs",
        description="One JSON line per frame (offset, ts, fmt, tenant, topic, payload, "
        "encoding). Exits 1 naming the offset of the first corrupt frame, 2 when the "
        "file cannot be read.",
    )
    cat.add_argument("path", help="segment file (.wal, .wal.open or .wal.zst)")
    cat.set_defaults(func=_segment_cat)

    from .bench_cmd import add_bench_parser

    add_bench_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    from .logs import configure

    configure(args.log_level, args.log_format)
    try:
        code = args.func(args)
    except BrokenPipeError:
        # `edgemq segment cat x | head`: the reader has all it wanted. Point stdout at
        # /dev/null so the interpreter's final flush does not complain again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)
