"""`edgemq up`: everything on one machine with embedded defaults.

First start: a SQLite control store in DIR, an account with one API key holding all
three scopes (printed once), a node key, a local destination (a filesystem object store
laid out like S3 under DIR/objects), a demo endpoint with short sealing and a demo view
bound to it; all of it written to DIR/bootstrap.json (mode 0600). Later starts reuse
them. Then the control plane and one ingest node (region `loc`, data in DIR/node) run
in this process until Ctrl-C / SIGTERM, which drains the node and exits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import signal
import sys
from dataclasses import replace
from typing import Any

from control.auth import Principal
from control.server import open_context, serve
from control.services import bindings, destinations, endpoints, keys, views
from control.services.common import Context, ControlSettings
from ingest.node import Node
from ingest.settings import DeliverySettings, Limits, NodeSettings

log = logging.getLogger(__name__)

BOOTSTRAP = "bootstrap.json"
LOCAL_BUCKET = "edgemq-local"
LOCAL_REGION = "loc"
DEMO_SEGMENT_AGE_S = 2
DEMO_SEGMENT_BYTES = 1024 * 1024
FIRST_SNAPSHOT_TIMEOUT_S = 30.0
"""How long a start waits for the node's first config snapshot before printing the
next steps (the control plane runs in the same process: normally milliseconds)."""
DEMO_VIEW = {
    "columns": [
        {"name": "event", "type": "VARCHAR", "path": "$.event", "required": True},
        {"name": "user_id", "type": "VARCHAR", "path": "$.user_id"},
        {"name": "value", "type": "DOUBLE", "path": "$.value", "cast_failures": "dlq"},
        {"name": "received_at", "type": "TIMESTAMP", "source": "ts"},
    ],
    "filters": [{"condition": "event != 'heartbeat'", "description": "drop keep-alives"}],
}


def _settings(host: str, control_port: int) -> ControlSettings:
    return ControlSettings(segment_bytes_min=64 * 1024, public_url=f"http://{host}:{control_port}")


async def _bootstrap(
    ctx: Context, data_dir: str, host: str, ports: dict[str, int]
) -> dict[str, Any]:
    account = await keys.create_account(ctx, "default")
    key = await keys.insert_key(
        ctx,
        account_id=account["id"],
        name="bootstrap",
        owner=None,
        scopes=["ingest", "metrics", "admin"],
    )
    admin = Principal(account_id=account["id"], scopes=frozenset({"admin"}), actor="bootstrap")
    output_dir = os.path.join(data_dir, "objects")
    dest = await destinations.create(
        ctx,
        admin,
        {
            "name": "local",
            "bucket": LOCAL_BUCKET,
            "region": "local",
            "role_arn": "arn:aws:iam::000000000000:role/local",
            "endpoint_url": f"file://{output_dir}",
        },
    )
    await destinations.validate(ctx, admin, dest["id"])
    endpoint = await endpoints.create(
        ctx,
        admin,
        {
            "region": LOCAL_REGION,
            "destination_id": dest["id"],
            "segment_bytes": DEMO_SEGMENT_BYTES,
            "segment_max_age_seconds": DEMO_SEGMENT_AGE_S,
            "output_formats": ["segments", "parquet", "parquet_views"],
            "mqtt_config": {"enabled": True},
        },
    )
    view = await views.create(
        ctx,
        admin,
        {"name": "demo_events", "definition": DEMO_VIEW, "format": "json"},
    )
    await views.publish(ctx, admin, view["id"])
    await bindings.attach(ctx, admin, endpoint["id"], {"view_id": view["id"]})
    return {
        "account_id": account["id"],
        "api_key": key["api_key"],
        **_urls(host, ports["control"], ports["ingest"], ports["mqtt"]),
        "endpoint_id": endpoint["id"],
        "destination_id": dest["id"],
        "view_id": view["id"],
        "output_dir": output_dir,
    }


def _urls(host: str, control_port: int, ingest_port: int, mqtt_port: int) -> dict[str, str]:
    return {
        "control_url": f"http://{host}:{control_port}",
        "ingest_url": f"http://{host}:{ingest_port}",
        "mqtt_url": f"mqtt://{host}:{mqtt_port}",
    }


def _write_private(path: str, data: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read(path: str) -> dict[str, Any] | None:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        data: dict[str, Any] = json.load(f)
    return data


def _double_quoted(text: str) -> str:
    """`text` in shell double quotes when that is safe, else shlex-quoted."""
    if any(c in text for c in '"$`\\!'):
        return shlex.quote(text)
    return f'"{text}"'


def next_steps(boot: dict[str, Any], path: str) -> str:
    """What to try next, printed on every start (the key itself stays in the file)."""
    endpoint = boot["endpoint_id"]
    raw_dir = os.path.join(boot["output_dir"], LOCAL_BUCKET, LOCAL_REGION, endpoint, "parquet")
    view_dir = os.path.join(boot["output_dir"], LOCAL_BUCKET, "views", "demo_events", "v1")
    get = "python3 -c 'import json,sys;print(json.load(open(sys.argv[1]))[sys.argv[2]])'"
    records = [
        '{"event":"signup","user_id":"u1","value":1.5}',
        '{"event":"click","user_id":"u2","value":2}',
    ]
    query = (
        f"import duckdb; print(duckdb.read_parquet('{raw_dir}/*/*.parquet')); "
        f"print(duckdb.read_parquet('{view_dir}/*.parquet'))"
    )
    return "\n".join(
        [
            "send events (NDJSON; acknowledged after fsync):",
            f"  KEY=$({get} {shlex.quote(path)} api_key)",
            "  printf '%s\\n' " + " ".join(shlex.quote(r) for r in records) + " |",
            f'    curl -s {boot["ingest_url"]}/ingest/{endpoint} -H "X-API-Key: $KEY" '
            '-H "Content-Type: application/x-ndjson" --data-binary @-',
            f"Parquet appears within ~{DEMO_SEGMENT_AGE_S + 1} s under "
            f"{boot['output_dir']}/{LOCAL_BUCKET}/:",
            f"  raw:  {raw_dir}/dt=YYYY-MM-DD/*.parquet",
            f"  view: {view_dir}/*.parquet",
            "query it with DuckDB:",
            f"  {shlex.quote(sys.executable)} -c {_double_quoted(query)}",
            f"control API: {boot['control_url']}  "
            f"(OpenAPI: {boot['control_url']}/openapi/edgemq-openapi.json)",
            "Ctrl-C drains the node and stops.",
        ]
    )


async def _ensure_node_key(
    database_url: str, settings: ControlSettings, boot: dict[str, Any]
) -> bool:
    if boot.get("node_key"):
        return False
    async with open_context(database_url, settings) as ctx:
        created = await keys.create_node_key(ctx, "edgemq-up")
    boot["node_key"] = created["api_key"]
    return True


async def run_up(
    data_dir: str, host: str, control_port: int, ingest_port: int, mqtt_port: int
) -> int:
    await asyncio.to_thread(os.makedirs, data_dir, exist_ok=True)
    database_url = f"sqlite:///{os.path.join(data_dir, 'control.db')}"
    settings = _settings(host, control_port)
    path = os.path.join(data_dir, BOOTSTRAP)
    boot = await asyncio.to_thread(_read, path)
    if boot is None:
        async with open_context(database_url, settings) as ctx:
            ports = {"control": control_port, "ingest": ingest_port, "mqtt": mqtt_port}
            boot = await _bootstrap(ctx, data_dir, host, ports)
        await _ensure_node_key(database_url, settings, boot)
        await asyncio.to_thread(_write_private, path, boot)
        print(f"first start: created an account, an API key and a demo endpoint ({path})")
        print(f"API key (shown once, also in {BOOTSTRAP}): {boot['api_key']}")
    else:
        # Same account, key and endpoint; the addresses are this start's.
        urls = _urls(host, control_port, ingest_port, mqtt_port)
        moved = any(boot.get(k) != v for k, v in urls.items())
        boot.update(urls)
        if await _ensure_node_key(database_url, settings, boot) or moved:
            await asyncio.to_thread(_write_private, path, boot)
        print(f"reusing {path}")
    shown = {k: v for k, v in boot.items() if k not in ("api_key", "node_key")}
    print(json.dumps(shown, indent=2))

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    control_ready, control_stop = asyncio.Event(), asyncio.Event()
    control = asyncio.create_task(
        serve(
            database_url,
            host,
            control_port,
            replace(settings),
            ready=control_ready,
            stop=control_stop,
            handle_signals=False,
        )
    )
    node = Node(
        NodeSettings(
            data_dir=os.path.join(data_dir, "node"),
            control_url=boot["control_url"],
            node_key=boot["node_key"],
            region=LOCAL_REGION,
            host=host,
            http_port=ingest_port,
            mqtt_port=mqtt_port,
            segment_bytes_min=64 * 1024,
            drain_deadline_s=20.0,
            long_poll_s=25,
            delivery=DeliverySettings(retry_base_s=0.2, retry_cap_s=5.0),
            limits=Limits(disk_reserve_bytes=64 * 1024 * 1024),
        )
    )
    drained = True
    try:
        await asyncio.wait(
            [control, asyncio.create_task(control_ready.wait())],
            return_when=asyncio.FIRST_COMPLETED,
        )
        if control.done():
            control.result()  # the control plane failed to start: raise its error
        await node.start()
        # The key in the next steps works once the node holds a config snapshot.
        waiters = [
            asyncio.create_task(node.sync.first_snapshot.wait()),
            asyncio.create_task(stop.wait()),
        ]
        _, pending = await asyncio.wait(
            waiters, timeout=FIRST_SNAPSHOT_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        for waiter in pending:
            waiter.cancel()
        if not node.sync.first_snapshot.is_set() and not stop.is_set():
            log.warning("the node has no config snapshot yet; ingest answers 503 until it has")
        print(
            f"ingest node {node.node_id} on {node.http_url}; control plane on {boot['control_url']}"
        )
        print(next_steps(boot, path), flush=True)
        await stop.wait()
        print("draining…", flush=True)
        drained = await node.drain()
    finally:
        await node.stop()
        control_stop.set()
        await control
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return 0 if drained else 3


def up(data_dir: str, host: str, control_port: int, ingest_port: int, mqtt_port: int) -> int:
    from .node_cmd import raise_open_files_limit, use_uvloop

    use_uvloop()
    raise_open_files_limit()
    return asyncio.run(
        run_up(os.path.abspath(data_dir), host, control_port, ingest_port, mqtt_port)
    )
