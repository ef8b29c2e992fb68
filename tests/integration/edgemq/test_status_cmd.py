"""`edgemq status` as an operator runs it (a subprocess) against the store (SQLite and
PostgreSQL) of a real control plane with a real ingest node: the node healthy, its
endpoint active with the node's advertised address, in agreement with the API; degraded
once the node is gone (a 1 s heartbeat timeout keeps that quick); --region filters;
the table form."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.edgemq.test_admin_cmd import (  # noqa: F401
    _store_state,
    database_url_fixture,
    postgres_fixture,
    set_schema_version,
)
from tests.support.postgres import PostgresServer
from tests.support.processes import run_cli
from tests.support.stack import control_plane, node_settings, running_node, wait_for

ADVERTISED = "127.0.0.7"  # announced only (the node listens on 127.0.0.1)


def _status_sync(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli("status", "--database-url", database_url, *args)


async def _status(database_url: str, *args: str) -> dict[str, Any]:
    done = await asyncio.to_thread(_status_sync, database_url, "--json", *args)
    assert done.returncode == 0, done.stderr
    value = json.loads(done.stdout)
    assert isinstance(value, dict)
    return value


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
async def test_status_shows_the_node_healthy_and_the_endpoint_active_then_degraded(
    tmp_path: Path, store: str, postgres: PostgresServer | None
) -> None:
    database_url = None
    if store == "postgresql":
        if postgres is None:
            pytest.skip("PostgreSQL binaries not installed (CI requires them)")
        database_url = postgres.url(postgres.create_database())
    async with control_plane(str(tmp_path), database_url=database_url) as cp:
        dest = await cp.local_destination(str(tmp_path / "objects"))
        endpoint = await cp.endpoint(dest["id"])
        other = await cp.endpoint(dest["id"], region="fra")  # no node serves fra
        settings = node_settings(cp, str(tmp_path / "node"), advertise_host=ADVERTISED)
        async with running_node(settings) as node:

            async def serving() -> dict[str, Any] | None:
                fleet = await _status(cp.database_url, "--heartbeat-timeout-s", "5")
                mine = {e["id"]: e for e in fleet["endpoints"]}[endpoint["id"]]
                return fleet if mine["status"] == "active" else None

            fleet = await wait_for(serving, timeout_s=60, what="status: endpoint active")
            [n] = fleet["nodes"]
            assert n["id"] == node.node_id
            assert (n["region"], n["healthy"], n["draining"]) == ("loc", True, False)
            assert n["http_url"] == node.http_url
            assert n["ipv4"] == [ADVERTISED]
            assert n["applied_epoch"] == fleet["config_epoch"]
            assert n["unshipped_bytes"] == 0  # nothing was sent
            assert n["heartbeat_age_s"] < 5
            endpoints = {e["id"]: e for e in fleet["endpoints"]}
            mine = endpoints[endpoint["id"]]
            assert mine["dns_ipv4"] == [ADVERTISED]
            assert mine["account_id"] == cp.account_id
            assert (mine["account_name"], mine["region"]) == ("acme", "loc")
            assert (mine["unshipped_bytes"], mine["delivery_errors"]) == (0, [])
            assert endpoints[other["id"]]["status"] == "deploying"
            assert endpoints[other["id"]]["dns_ipv4"] == []
            # The API derives the same status and addresses.
            api = await cp.call("GET", f"/v1/endpoints/{endpoint['id']}")
            assert (api["status"], api["dns_ipv4"]) == ("active", [ADVERTISED])

            only_fra = await _status(cp.database_url, "--region", "fra")
            assert only_fra["nodes"] == []
            assert [e["id"] for e in only_fra["endpoints"]] == [other["id"]]

            table = await asyncio.to_thread(_status_sync, cp.database_url)
            assert table.returncode == 0, table.stderr
            lines = table.stdout.splitlines()
            node_line = next(line for line in lines if line.startswith(node.node_id))
            assert " yes " in node_line  # healthy
            assert f"{fleet['config_epoch']}/{fleet['config_epoch']}" in node_line
            endpoint_line = next(line for line in lines if line.startswith(endpoint["id"]))
            assert " active " in endpoint_line
            assert ADVERTISED in endpoint_line

        # The node is gone: with a 1 s window it is unhealthy and the endpoint degraded.
        async def degraded() -> dict[str, Any] | None:
            fleet = await _status(cp.database_url, "--heartbeat-timeout-s", "1")
            mine = {e["id"]: e for e in fleet["endpoints"]}[endpoint["id"]]
            return fleet if mine["status"] == "degraded" else None

        fleet = await wait_for(degraded, timeout_s=30, what="status: endpoint degraded")
        [n] = fleet["nodes"]
        assert n["healthy"] is False
        assert {e["id"]: e for e in fleet["endpoints"]}[endpoint["id"]]["dns_ipv4"] == []


async def test_status_refuses_a_store_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "control.db"
    done = await asyncio.to_thread(_status_sync, f"sqlite:///{missing}")
    assert done.returncode == 2
    assert "no control store" in done.stderr
    assert not missing.exists()


async def test_status_refuses_a_plain_path_that_does_not_exist(tmp_path: Path) -> None:
    """Found in review: `edgemq status --database-url ./nope/control.db` (no sqlite:///)
    exited 0 and created a store there."""
    missing = tmp_path / "nope" / "control.db"
    done = await asyncio.to_thread(_status_sync, str(missing))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "no control store" in done.stderr
    assert not missing.parent.exists()


async def test_status_reads_the_store_as_it_is_and_creates_nothing(database_url: str) -> None:
    """No migration, no signing key, no download-link secret (the fixture's store is
    only migrated, as a control plane's first start leaves it before those)."""
    before = await _store_state(database_url)
    fleet = await _status(database_url)
    assert fleet["nodes"] == []
    assert await _store_state(database_url) == before


@pytest.mark.parametrize("relation", ["older", "newer"])
async def test_status_refuses_a_store_of_another_schema_version_and_leaves_it(
    database_url: str, relation: str
) -> None:
    from control.store.schema import MIGRATIONS

    version = len(MIGRATIONS) + (-1 if relation == "older" else 1)
    await set_schema_version(database_url, version)
    before = await _store_state(database_url)

    done = await asyncio.to_thread(_status_sync, database_url)

    assert done.returncode == 2, (done.stdout, done.stderr)
    assert f"schema version {version}, {relation}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert await _store_state(database_url) == before
