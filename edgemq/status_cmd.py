"""`edgemq status`: the fleet from the control store, as tables or JSON."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from .options import add_option, flag_default
from .progress import human_bytes


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    for line in (headers, *rows):
        out.write("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
        out.write("\n")


def render_text(fleet: dict[str, Any], out: TextIO) -> None:
    """The human form: the config epoch, a node table and an endpoint table."""
    epoch = fleet["config_epoch"]
    out.write(f"config epoch {epoch}  (heartbeat timeout {fleet['heartbeat_timeout_s']:g} s)\n\n")
    nodes = fleet["nodes"]
    out.write(f"NODES ({len(nodes)})\n")
    _table(
        ("ID", "REGION", "HTTP", "MQTT", "HEARTBEAT", "HEALTHY", "EPOCH", "DRAINING", "UNSHIPPED"),
        [
            (
                n["id"],
                n["region"],
                n["http_url"] or "-",
                n["mqtt_url"] or "-",
                f"{n['heartbeat_age_s']:.1f}s ago",
                "yes" if n["healthy"] else "no",
                f"{n['applied_epoch']}/{epoch}",
                "yes" if n["draining"] else "no",
                human_bytes(n["unshipped_bytes"]),
            )
            for n in nodes
        ],
        out,
    )
    endpoints = fleet["endpoints"]
    out.write(f"\nENDPOINTS ({len(endpoints)})\n")
    _table(
        ("ID", "ACCOUNT", "REGION", "STATUS", "DNS_IPV4", "UNSHIPPED", "ERRORS"),
        [
            (
                e["id"],
                e["account_name"],
                e["region"],
                e["status"],
                ",".join(e["dns_ipv4"]) or "-",
                human_bytes(e["unshipped_bytes"]),
                "; ".join(f"{x['node_id']}: {x['error']}" for x in e["delivery_errors"]) or "-",
            )
            for e in endpoints
        ],
        out,
    )


def run_status(args: argparse.Namespace) -> int:
    from control.fleet import fleet_status

    try:
        fleet = asyncio.run(
            fleet_status(
                args.database_url,
                region=args.region or None,
                heartbeat_timeout_s=args.heartbeat_timeout_s,
            )
        )
    except ValueError as err:  # no store there, or another schema version
        print(f"edgemq status: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a wrong URL, an unreachable server: say so, no traceback
        print(f"edgemq status: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    if args.json:
        json.dump(fleet, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render_text(fleet, sys.stdout)
    return 0


def add_status_parser(commands: Any) -> None:
    """`edgemq status` (registered by edgemq.cli)."""
    from control.server import DEFAULT_DATABASE_URL

    status = commands.add_parser(
        "status",
        help="nodes and endpoints of the fleet, from the control store",
        description="Nodes (region, addresses, heartbeat age, health, applied vs current "
        "config epoch, draining, unshipped bytes) and endpoints (account, region, status, "
        "dns_ipv4, unshipped bytes over all nodes, delivery errors). Endpoint status is "
        "the control plane's own derivation. Reads the store as it is (no migration, "
        "nothing created). Exit 0, or 2 when the store cannot be read, does not exist "
        "or has another schema version than this edgemq.",
    )
    add_option(
        status,
        "--database-url",
        default=DEFAULT_DATABASE_URL,
        help="sqlite:///PATH or postgresql://…",
    )
    add_option(status, "--region", default="", help="only this region (e.g. iad)")
    add_option(
        status,
        "--heartbeat-timeout-s",
        default=30.0,
        type=float,
        help="a node silent this long is unhealthy; use the control plane's value",
    )
    status.add_argument(
        "--json",
        action="store_true",
        default=flag_default("--json"),
        help="one JSON document instead of tables (env EDGEMQ_JSON=1)",
    )
    status.set_defaults(func=run_status)
