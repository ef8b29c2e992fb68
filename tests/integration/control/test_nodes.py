"""The node protocol (DESIGN.md §8): node-key auth, register, heartbeat, the long-polled
config snapshot and the endpoint status nodes drive (deploying → active → degraded)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import sqlite3
from typing import Any

import control.services.keys
from control.services.common import now_ms
from tests.integration.control.conftest import Api
from tests.integration.control.test_views import (
    attach,
    create_endpoint,
    problem_paths,
    published_view,
)

NODE_ROUTES: tuple[tuple[str, str, dict[str, Any] | None], ...] = (
    ("POST", "/v1/nodes/register", {"region": "iad"}),
    ("POST", "/v1/nodes/n1/heartbeat", {}),
    ("GET", "/v1/nodes/n1/config", None),
    ("POST", "/v1/nodes/n1/commits", {"commits": []}),
)


async def node_key(api: Api, name: str = "n1") -> str:
    return str((await control.services.keys.create_node_key(api.ctx, name))["api_key"])


async def node_call(
    api: Api,
    key: str | None,
    method: str,
    path: str,
    *,
    json: Any = None,
    params: Any = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    sent = dict(headers or {})
    if key is not None:
        sent["X-API-Key"] = key
    resp = await api.client.request(method, path, json=json, params=params, headers=sent)
    body = await resp.json() if resp.content_type == "application/json" else await resp.read()
    return resp.status, body


async def register(api: Api, key: str, region: str = "iad", **fields: Any) -> str:
    status, body = await node_call(
        api, key, "POST", "/v1/nodes/register", json={"region": region, **fields}
    )
    assert status == 200, body
    return str(body["node_id"])


async def heartbeat(api: Api, key: str, node_id: str, **fields: Any) -> dict[str, Any]:
    status, body = await node_call(api, key, "POST", f"/v1/nodes/{node_id}/heartbeat", json=fields)
    assert status == 200, body
    return dict(body)


async def config(api: Api, key: str, node_id: str, **params: Any) -> dict[str, Any]:
    status, body = await node_call(
        api, key, "GET", f"/v1/nodes/{node_id}/config", params=params or None
    )
    assert status == 200, body
    return dict(body)


async def endpoint_state(api: Api, endpoint_id: str) -> dict[str, Any]:
    status, body = await api.call("GET", f"/v1/endpoints/{endpoint_id}")
    assert status == 200, body
    return dict(body)


class ParkedSignal(asyncio.Event):
    """Stands in for `ctx.epoch_changed` and tells the test when a long poll waits."""

    def __init__(self, parked: asyncio.Event) -> None:
        super().__init__()
        self._parked = parked

    async def wait(self) -> bool:  # type: ignore[override]
        self._parked.set()
        return await super().wait()


# ------------------------------------------------------------------- auth
async def test_node_routes_refuse_missing_and_management_credentials(api: Api) -> None:
    admin_token = await api.token("admin")
    for method, path, payload in NODE_ROUTES:
        status, body = await node_call(api, None, method, path, json=payload)
        assert status == 401, (path, body)
        status, body = await node_call(
            api,
            None,
            method,
            path,
            json=payload,
            headers={"Authorization": f"Bearer {admin_token}"},
        )
        assert status == 401, (path, body)
        status, body = await node_call(api, api.admin_key, method, path, json=payload)
        assert status == 403, (path, body)
        assert body["error"]["code"] == "forbidden"
    unknown_key = "emq_live_" + "x" * 32
    status, _ = await node_call(
        api, unknown_key, "POST", "/v1/nodes/register", json={"region": "iad"}
    )
    assert status == 401
    assert await api.ctx.db.fetchall("SELECT id FROM nodes") == []


async def test_a_node_key_cannot_use_the_management_api(api: Api) -> None:
    key = await node_key(api)

    status, body = await node_call(api, key, "GET", "/v1/endpoints")
    assert status == 401, body
    status, body = await node_call(
        api, None, "GET", "/v1/endpoints", headers={"Authorization": f"Bearer {key}"}
    )
    assert status == 401, body
    status, body = await node_call(
        api, None, "POST", "/v1/token/exchange", json={"api_key": key, "scope": "admin"}
    )
    assert status == 401, body
    assert "access_token" not in body


# --------------------------------------------------------------- register
async def test_a_node_registers_with_its_node_key(api: Api) -> None:
    key = await node_key(api)

    status, body = await node_call(
        api,
        key,
        "POST",
        "/v1/nodes/register",
        json={
            "node_id": "node-a",
            "region": "iad",
            "http_url": "http://10.0.0.1:8080",
            "mqtt_url": "mqtt://10.0.0.1:1883",
            "ipv4": ["149.248.213.170"],
            "ipv6": ["2001:19f0:ac01:1d2b:5400:4ff:fe5e:39a1"],
            "version": "1.0.0",
        },
    )

    assert status == 200, body
    assert body == {
        "node_id": "node-a",
        "config_epoch": await api.ctx.config_epoch(),
        "heartbeat_interval_s": body["heartbeat_interval_s"],
    }
    assert isinstance(body["heartbeat_interval_s"], int)
    assert body["heartbeat_interval_s"] > 0
    rows = await api.ctx.db.fetchall("SELECT id, region, http_url, applied_epoch FROM nodes")
    assert rows == [
        {"id": "node-a", "region": "iad", "http_url": "http://10.0.0.1:8080", "applied_epoch": 0}
    ]
    # The key works as a Bearer token too, and a node without an id is given one.
    status, body = await node_call(
        api,
        None,
        "POST",
        "/v1/nodes/register",
        json={"region": "lhr"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert status == 200, body
    assert body["node_id"] not in ("", "node-a")


async def test_registering_again_updates_the_node_in_place(api: Api) -> None:
    key = await node_key(api)
    await register(api, key, node_id="node-a", ipv4=["10.0.0.1"])

    await register(api, key, "fra", node_id="node-a", ipv4=["10.0.0.2"])

    rows = await api.ctx.db.fetchall("SELECT id, region, ipv4 FROM nodes")
    assert rows == [{"id": "node-a", "region": "fra", "ipv4": '["10.0.0.2"]'}]


async def test_a_register_request_with_bad_fields_is_rejected_with_their_paths(
    api: Api,
) -> None:
    key = await node_key(api)

    for payload, expected in (
        ({}, ["body.region"]),
        ({"region": "IAD"}, ["body.region"]),
        ({"region": "iad1"}, ["body.region"]),
        ({"region": "iad", "ipv4": "10.0.0.1"}, ["body.ipv4"]),
        ({"region": "iad", "ipv6": [1]}, ["body.ipv6"]),
        ({"region": "iad", "node_id": 7}, ["body.node_id"]),
        ({"region": "iad", "http_url": 7}, ["body.http_url"]),
        ({"region": "iad", "mqtt_url": {"x": 1}}, ["body.mqtt_url"]),
        ({"region": "iad", "version": ["1"]}, ["body.version"]),
        ({"region": "iad", "color": "red"}, ["body.color"]),
    ):
        status, body = await node_call(api, key, "POST", "/v1/nodes/register", json=payload)
        assert status == 422, (payload, body)
        assert problem_paths(body) == expected, payload
    assert await api.ctx.db.fetchall("SELECT id FROM nodes") == []


# -------------------------------------------------------------- heartbeat
async def test_a_heartbeat_records_the_applied_epoch_and_answers_the_current_one(
    api: Api,
) -> None:
    key = await node_key(api)
    node_id = await register(api, key)
    await api.ctx.db.execute("UPDATE nodes SET last_heartbeat_at = 0")

    body = await heartbeat(api, key, node_id, applied_epoch=1)

    assert body == {"config_epoch": await api.ctx.config_epoch()}
    row = await api.ctx.db.fetchone("SELECT * FROM nodes WHERE id = ?", (node_id,))
    assert row is not None
    assert int(row["applied_epoch"]) == 1
    assert int(row["last_heartbeat_at"]) >= now_ms() - 60_000


async def test_heartbeats_for_unknown_nodes_or_with_bad_fields_are_rejected(api: Api) -> None:
    key = await node_key(api)
    node_id = await register(api, key)

    status, body = await node_call(api, key, "POST", "/v1/nodes/ghost/heartbeat", json={})
    assert status == 404, body
    for payload, expected in (
        ({"applied_epoch": -1}, ["body.applied_epoch"]),
        ({"applied_epoch": "3"}, ["body.applied_epoch"]),
        ({"endpoints": [{"unshipped_bytes": 1}]}, ["body.endpoints"]),
        ({"endpoints": [{"endpoint_id": "e", "delivery_error": 5}]}, ["body.endpoints"]),
        ({"draining": "no"}, ["body.draining"]),
        ({"pulse": 1}, ["body.pulse"]),
    ):
        status, body = await node_call(
            api, key, "POST", f"/v1/nodes/{node_id}/heartbeat", json=payload
        )
        assert status == 422, (payload, body)
        assert problem_paths(body) == expected, payload


async def test_a_heartbeat_listing_an_endpoint_twice_is_rejected(api: Api) -> None:
    key = await node_key(api)
    node_id = await register(api, key)
    endpoint = await create_endpoint(api)
    entry = {"endpoint_id": endpoint["id"], "unshipped_bytes": 10}

    status, body = await node_call(
        api, key, "POST", f"/v1/nodes/{node_id}/heartbeat", json={"endpoints": [entry, entry]}
    )

    assert status == 422, body
    assert problem_paths(body) == ["body.endpoints"]
    assert await api.ctx.db.fetchall("SELECT * FROM node_endpoint_state") == []


# ------------------------------------------------------------ config poll
async def test_a_config_poll_returns_at_once_when_the_epoch_is_newer(api: Api) -> None:
    key = await node_key(api)
    node_id = await register(api, key)
    epoch = await api.ctx.config_epoch()
    loop = asyncio.get_running_loop()

    started = loop.time()
    body = await config(api, key, node_id, after_epoch=epoch - 1, wait_s=5)

    assert loop.time() - started < 1.5
    assert body["config_epoch"] == epoch


async def test_a_config_poll_without_a_wait_returns_the_current_snapshot(api: Api) -> None:
    key = await node_key(api)
    node_id = await register(api, key)
    epoch = await api.ctx.config_epoch()

    body = await config(api, key, node_id, after_epoch=epoch + 100)

    assert body["config_epoch"] == epoch
    assert body["region"] == "iad"


async def test_a_config_long_poll_wakes_early_when_a_change_is_made(api: Api) -> None:
    key = await node_key(api)
    node_id = await register(api, key)
    epoch = await api.ctx.config_epoch()
    loop = asyncio.get_running_loop()
    parked = asyncio.Event()
    api.ctx.epoch_changed = ParkedSignal(parked)
    times: dict[str, float] = {}

    async def poll() -> dict[str, Any]:
        times["poll"] = loop.time()
        body = await config(api, key, node_id, after_epoch=epoch, wait_s=5)
        times["returned"] = loop.time()
        return body

    async def change() -> dict[str, Any]:
        async with asyncio.timeout(4):
            await parked.wait()  # the poll has seen the old epoch and waits
        times["change"] = loop.time()
        return await create_endpoint(api)

    body, endpoint = await asyncio.gather(poll(), change())

    assert body["config_epoch"] > epoch
    assert [e["id"] for e in body["endpoints"]] == [endpoint["id"]]
    assert times["returned"] - times["poll"] < 2.5  # the deadline was 5 s
    # SQLite wakes the poll at once. On PostgreSQL `Context.bump_epoch` sets the event
    # before its transaction commits, so the woken poll still reads the old epoch and
    # only sees the change at its next 1 s poll tick.
    woke_within = 0.75 if api.ctx.db.dialect == "sqlite" else 2.0
    assert times["returned"] - times["change"] < woke_within


async def test_a_config_long_poll_without_changes_returns_at_its_deadline(api: Api) -> None:
    key = await node_key(api)
    node_id = await register(api, key)
    epoch = await api.ctx.config_epoch()
    loop = asyncio.get_running_loop()

    started = loop.time()
    body = await config(api, key, node_id, after_epoch=epoch, wait_s=1)
    elapsed = loop.time() - started

    assert 0.9 <= elapsed < 3.0
    assert body["config_epoch"] == epoch


async def test_a_config_poll_with_bad_parameters_is_rejected(api: Api) -> None:
    key = await node_key(api)
    node_id = await register(api, key)

    for params, expected in (
        ({"after_epoch": -1}, ["query.after_epoch"]),
        ({"after_epoch": "x"}, ["query.after_epoch"]),
        ({"wait_s": 31}, ["query.wait_s"]),
    ):
        status, body = await node_call(
            api, key, "GET", f"/v1/nodes/{node_id}/config", params=params
        )
        assert status == 422, (params, body)
        assert problem_paths(body) == expected
    status, body = await node_call(api, key, "GET", "/v1/nodes/ghost/config")
    assert status == 404, body


# --------------------------------------------------------------- snapshot
async def test_the_snapshot_carries_the_regions_endpoints_destinations_bindings_and_keys(
    api: Api,
) -> None:
    status, destination = await api.call(
        "POST",
        "/v1/destinations",
        json={
            "name": "Analytics Data Lake",
            "bucket": "acme-data-lake",
            "prefix": "events/prod",
            "region": "us-east-1",
            "role_arn": "arn:aws:iam::123456789012:role/EdgeMqDelivery",
        },
    )
    assert status == 201, destination
    mqtt = {"enabled": True, "max_connections": 100, "keepalive_max_s": 60, "qos_max": 1}
    here = await create_endpoint(
        api,
        destination_id=destination["id"],
        output_formats=["segments", "parquet_views"],
        mqtt_config=mqtt,
    )
    await create_endpoint(api, "lhr")
    view = await published_view(api)
    gone = await published_view(api, "gone")
    binding = await attach(
        api, here["id"], view["id"], is_required=True, canary_start_ts="2026-02-01T00:00:00Z"
    )
    detached = await attach(api, here["id"], gone["id"])
    status, _ = await api.call("DELETE", f"/v1/endpoints/{here['id']}/views/{detached['id']}")
    assert status == 204
    metrics_only = await api.key_with("metrics")
    neighbour_key = await api.new_account("neighbour")  # admin, metrics, ingest
    neighbour = await api.call("POST", "/v1/endpoints", key=neighbour_key, json={"region": "iad"})
    assert neighbour[0] == 201
    far_key = await api.new_account("faraway")
    far = await api.call("POST", "/v1/endpoints", key=far_key, json={"region": "lhr"})
    assert far[0] == 201
    key = await node_key(api)
    node_id = await register(api, key)

    snap = await config(api, key, node_id)

    assert set(snap) == {"config_epoch", "region", "endpoints", "ingest_keys", "jwks"}
    assert snap["config_epoch"] == await api.ctx.config_epoch()
    assert snap["region"] == "iad"
    assert [e["id"] for e in snap["endpoints"]] == [here["id"], neighbour[1]["id"]]
    tenant = await api.ctx.db.fetchone(
        "SELECT tenant FROM accounts WHERE id = ?", (api.account_id,)
    )
    assert tenant is not None
    row = await api.ctx.db.fetchone(
        "SELECT config_epoch FROM endpoints WHERE id = ?", (here["id"],)
    )
    assert row is not None
    entry = snap["endpoints"][0]
    assert {k: v for k, v in entry.items() if k not in ("destination", "bindings")} == {
        "id": here["id"],
        "account_id": api.account_id,
        "tenant": int(tenant["tenant"]),
        "accepting": True,
        "config_epoch": int(row["config_epoch"]),
        "segment_bytes": 33554432,
        "segment_max_age_seconds": 60,
        "output_formats": ["segments", "parquet_views"],
        "mqtt_config": mqtt,
    }
    assert {k: entry["destination"][k] for k in ("id", "bucket", "prefix", "region")} == {
        "id": destination["id"],
        "bucket": "acme-data-lake",
        "prefix": "events/prod",
        "region": "us-east-1",
    }
    assert entry["destination"]["role_arn"] == destination["role_arn"]
    assert entry["destination"]["external_id"] == destination["external_id"]
    assert entry["bindings"] == [
        {
            "binding_id": binding["id"],
            "view_id": view["id"],
            "view_name": "user_events",
            "view_version": 1,
            "is_required": True,
            "canary_start_ts_ms": 1769904000000,
            "definition": view["definition"],
        }
    ]
    assert snap["endpoints"][1]["destination"] is None
    assert snap["endpoints"][1]["bindings"] == []
    assert snap["endpoints"][1]["tenant"] != entry["tenant"]
    digests = {k["digest"]: k for k in snap["ingest_keys"]}
    sha = {k: hashlib.sha256(k.encode()).hexdigest() for k in (api.admin_key, neighbour_key)}
    assert set(digests) == set(sha.values())
    assert digests[sha[api.admin_key]]["account_id"] == api.account_id
    assert "ingest" in digests[sha[api.admin_key]]["scopes"]
    assert hashlib.sha256(metrics_only.encode()).hexdigest() not in digests
    assert hashlib.sha256(far_key.encode()).hexdigest() not in digests
    assert hashlib.sha256(key.encode()).hexdigest() not in digests
    resp = await api.client.get("/.well-known/jwks.json")
    assert snap["jwks"] == await resp.json()
    assert snap["jwks"]["keys"]


async def test_a_node_of_another_region_sees_only_that_region(api: Api) -> None:
    iad = await create_endpoint(api)
    lhr = await create_endpoint(api, "lhr")
    key = await node_key(api)
    node_id = await register(api, key, "lhr")

    snap = await config(api, key, node_id)

    assert snap["region"] == "lhr"
    assert [e["id"] for e in snap["endpoints"]] == [lhr["id"]]
    assert iad["id"] not in str(snap)


async def test_a_revoked_ingest_key_leaves_the_snapshot_with_an_epoch_bump(api: Api) -> None:
    await create_endpoint(api)
    status, created = await api.call(
        "POST", "/v1/api-keys", json={"name": "device", "scopes": ["ingest"]}
    )
    assert status == 201, created
    key = await node_key(api)
    node_id = await register(api, key)
    digest = hashlib.sha256(created["api_key"].encode()).hexdigest()
    before = await config(api, key, node_id)
    assert digest in {k["digest"] for k in before["ingest_keys"]}

    status, _ = await api.call("DELETE", f"/v1/api-keys/{created['id']}")
    assert status == 204

    after = await config(api, key, node_id, after_epoch=before["config_epoch"], wait_s=5)
    assert after["config_epoch"] > before["config_epoch"]
    assert digest not in {k["digest"] for k in after["ingest_keys"]}


async def test_a_deleted_endpoint_stays_in_the_snapshot_while_a_node_holds_its_data(
    api: Api,
) -> None:
    endpoint = await create_endpoint(api)
    key = await node_key(api)
    node_id = await register(api, key)
    await heartbeat(
        api, key, node_id, endpoints=[{"endpoint_id": endpoint["id"], "unshipped_bytes": 4096}]
    )

    status, _ = await api.call("DELETE", f"/v1/endpoints/{endpoint['id']}")
    assert status == 204

    draining = await config(api, key, node_id)
    assert [(e["id"], e["accepting"]) for e in draining["endpoints"]] == [(endpoint["id"], False)]
    await heartbeat(
        api, key, node_id, endpoints=[{"endpoint_id": endpoint["id"], "unshipped_bytes": 0}]
    )
    assert (await config(api, key, node_id))["endpoints"] == []


# ----------------------------------------------------------------- status
async def test_an_endpoint_is_deploying_until_a_healthy_node_of_its_region_applies_its_epoch(
    api: Api,
) -> None:
    endpoint = await create_endpoint(api)
    assert (endpoint["status"], endpoint["dns_ipv4"], endpoint["dns_ipv6"]) == (
        "deploying",
        [],
        [],
    )
    key = await node_key(api)
    far = await register(api, key, "lhr", ipv4=["192.0.2.9"])
    await heartbeat(api, key, far, applied_epoch=10**6)
    assert (await endpoint_state(api, endpoint["id"]))["status"] == "deploying"
    near = await register(
        api, key, ipv4=["149.248.213.170"], ipv6=["2001:19f0:ac01:1d2b:5400:4ff:fe5e:39a1"]
    )
    row = await api.ctx.db.fetchone(
        "SELECT config_epoch FROM endpoints WHERE id = ?", (endpoint["id"],)
    )
    assert row is not None
    epoch = int(row["config_epoch"])

    await heartbeat(api, key, near, applied_epoch=epoch - 1)
    assert (await endpoint_state(api, endpoint["id"]))["status"] == "deploying"
    await heartbeat(api, key, near, applied_epoch=epoch)

    state = await endpoint_state(api, endpoint["id"])
    assert state["status"] == "active"
    assert state["dns_ipv4"] == ["149.248.213.170"]
    assert state["dns_ipv6"] == ["2001:19f0:ac01:1d2b:5400:4ff:fe5e:39a1"]
    status, listed = await api.call("GET", "/v1/endpoints", params={"status": "active"})
    assert status == 200, listed
    assert [e["id"] for e in listed["items"]] == [endpoint["id"]]

    # A change to the endpoint (a binding) needs to be applied again.
    await attach(api, endpoint["id"], (await published_view(api))["id"])
    assert (await endpoint_state(api, endpoint["id"]))["status"] == "deploying"
    await heartbeat(api, key, near, applied_epoch=await api.ctx.config_epoch())
    assert (await endpoint_state(api, endpoint["id"]))["status"] == "active"


async def test_dns_lists_the_addresses_of_the_healthy_nodes_of_the_region(api: Api) -> None:
    endpoint = await create_endpoint(api)
    key = await node_key(api)
    epoch = await api.ctx.config_epoch()
    nodes = []
    for ipv4, ipv6 in (("10.0.0.1", "fd00::1"), ("10.0.0.2", "fd00::2"), ("10.0.0.3", "fd00::3")):
        node_id = await register(api, key, ipv4=[ipv4], ipv6=[ipv6])
        await heartbeat(api, key, node_id, applied_epoch=epoch)
        nodes.append(node_id)
    await heartbeat(api, key, nodes[1], applied_epoch=epoch, draining=True)
    await api.ctx.db.execute(
        "UPDATE nodes SET last_heartbeat_at = ? WHERE id = ?", (now_ms() - 120_000, nodes[2])
    )

    state = await endpoint_state(api, endpoint["id"])

    assert state["status"] == "active"
    assert state["dns_ipv4"] == ["10.0.0.1"]
    assert state["dns_ipv6"] == ["fd00::1"]


async def test_a_delivery_error_reported_for_the_endpoint_degrades_it(api: Api) -> None:
    failing = await create_endpoint(api)
    fine = await create_endpoint(api)
    key = await node_key(api)
    node_id = await register(api, key, ipv4=["10.0.0.1"])
    epoch = await api.ctx.config_epoch()

    await heartbeat(
        api,
        key,
        node_id,
        applied_epoch=epoch,
        endpoints=[
            {"endpoint_id": failing["id"], "unshipped_bytes": 1 << 20, "delivery_error": "403"},
            {"endpoint_id": fine["id"], "unshipped_bytes": 0},
        ],
    )

    assert (await endpoint_state(api, failing["id"]))["status"] == "degraded"
    assert (await endpoint_state(api, fine["id"]))["status"] == "active"
    status, listed = await api.call("GET", "/v1/endpoints", params={"status": "degraded"})
    assert status == 200, listed
    assert [e["id"] for e in listed["items"]] == [failing["id"]]
    # Delivery recovers: the next heartbeat has no error.
    await heartbeat(
        api,
        key,
        node_id,
        applied_epoch=epoch,
        endpoints=[{"endpoint_id": failing["id"], "unshipped_bytes": 0}],
    )
    assert (await endpoint_state(api, failing["id"]))["status"] == "active"


async def test_an_endpoint_degrades_when_its_regions_nodes_stop_heartbeating(api: Api) -> None:
    endpoint = await create_endpoint(api)
    key = await node_key(api)
    node_id = await register(api, key, ipv4=["10.0.0.1"])
    await heartbeat(api, key, node_id, applied_epoch=await api.ctx.config_epoch())
    assert (await endpoint_state(api, endpoint["id"]))["status"] == "active"
    timeout_ms = int(api.ctx.settings.node_heartbeat_timeout_s * 1000)

    await api.ctx.db.execute(
        "UPDATE nodes SET last_heartbeat_at = ? WHERE id = ?",
        (now_ms() - timeout_ms - 5_000, node_id),
    )

    state = await endpoint_state(api, endpoint["id"])
    assert state["status"] == "degraded"
    assert (state["dns_ipv4"], state["dns_ipv6"]) == ([], [])
    await heartbeat(api, key, node_id, applied_epoch=await api.ctx.config_epoch())
    state = await endpoint_state(api, endpoint["id"])
    assert (state["status"], state["dns_ipv4"]) == ("active", ["10.0.0.1"])


async def large_heartbeat(
    api: Api, key: str, node_id: str, endpoints: list[dict[str, Any]]
) -> tuple[int, Any]:
    """A heartbeat with a body of megabytes (streamed, as aiohttp asks for big bodies)."""
    data = io.BytesIO(json.dumps({"endpoints": endpoints}).encode())
    resp = await api.client.post(
        f"/v1/nodes/{node_id}/heartbeat",
        data=data,
        headers={"X-API-Key": key, "Content-Type": "application/json"},
    )
    return resp.status, await resp.json()


async def test_a_heartbeat_with_more_endpoints_than_a_statement_has_parameters_is_recorded(
    api: Api,
) -> None:
    """Found in review: the heartbeat bound one parameter per endpoint in NOT IN (…),
    so above SQLite's 32766 (PostgreSQL's 65535) parameters every heartbeat failed. A
    later, shorter heartbeat still drops what the node no longer holds."""
    key = await node_key(api)
    node_id = await register(api, key)
    if api.ctx.db.dialect == "sqlite":
        # Debian's SQLite allows 250000 parameters; upstream's default is 32766.
        db: Any = api.ctx.db
        await db._pool.run(db._conn.setlimit, sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32766)
    many = [{"endpoint_id": f"e{i:05d}", "unshipped_bytes": i} for i in range(70_000)]

    status, body = await large_heartbeat(api, key, node_id, many)
    assert status == 200, body
    row = await api.ctx.db.fetchone(
        "SELECT COUNT(*) AS n, SUM(unshipped_bytes) AS total FROM node_endpoint_state "
        "WHERE node_id = ?",
        (node_id,),
    )
    assert row is not None
    assert (int(row["n"]), int(row["total"])) == (70_000, sum(range(70_000)))

    await heartbeat(api, key, node_id, endpoints=[{"endpoint_id": "e00007", "unshipped_bytes": 1}])
    rows = await api.ctx.db.fetchall(
        "SELECT endpoint_id, unshipped_bytes FROM node_endpoint_state WHERE node_id = ?",
        (node_id,),
    )
    assert [(r["endpoint_id"], int(r["unshipped_bytes"])) for r in rows] == [("e00007", 1)]


async def test_a_heartbeat_listing_more_endpoints_than_the_bound_is_rejected(api: Api) -> None:
    from control.services.nodes import ENDPOINTS_PER_HEARTBEAT_MAX

    key = await node_key(api)
    node_id = await register(api, key)
    too_many = [{"endpoint_id": str(i)} for i in range(ENDPOINTS_PER_HEARTBEAT_MAX + 1)]

    status, body = await large_heartbeat(api, key, node_id, too_many)

    assert status == 422, body
    assert problem_paths(body) == ["body.endpoints"]
    assert str(ENDPOINTS_PER_HEARTBEAT_MAX) in body["error"]["problems"][0]["message"]


async def test_heartbeats_of_one_node_at_once_leave_the_states_of_one_of_them(api: Api) -> None:
    """Two heartbeats of one node at once (a drain's and the periodic one) with
    disjoint endpoint lists: afterwards the state is exactly one of the two lists,
    never a mix and never empty."""
    key = await node_key(api)
    node_id = await register(api, key)
    names = [sorted(f"{side}{i:02d}" for i in range(50)) for side in ("a", "b")]
    lists = [[{"endpoint_id": e, "unshipped_bytes": 1} for e in x] for x in names]
    for _ in range(5):
        await asyncio.gather(*(heartbeat(api, key, node_id, endpoints=x) for x in lists))
        rows = await api.ctx.db.fetchall(
            "SELECT endpoint_id FROM node_endpoint_state WHERE node_id = ? ORDER BY endpoint_id",
            (node_id,),
        )
        held = [r["endpoint_id"] for r in rows]
        assert held in names, held
