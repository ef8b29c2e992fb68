"""Two control-plane replicas on one store racing on the same resource (issue #8,
docs/adr/0009): same-name creates answer one 201 and 409s with the JSON error body
(never a 500), new versions of one view get distinct contiguous numbers, identical
commit reports are stored once, one binding wins, concurrent key creation and node
registration all succeed. Runs on SQLite (two connections to one file) and on a real
PostgreSQL server (two connection pools), like the rest of this package.

Each race sends RACERS requests at once, alternating between the replicas; `gather`
starts them together so they meet in the store, between check and insert.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from control.http.app import create_app
from control.server import open_context
from control.services import keys
from tests.integration.control.conftest import SETTINGS, Api
from tests.integration.control.test_observability import Node, ago, commit, outcome
from tests.integration.control.test_views import (
    SMALL_DEFINITION,
    attach,
    create_endpoint,
    published_view,
)

RACERS = 8
LAKE = {
    "bucket": "acme-data-lake",
    "prefix": "events/prod",
    "region": "us-east-1",
    "role_arn": "arn:aws:iam::123456789012:role/EdgeMqDelivery",
}


@pytest.fixture
async def replicas(store_url: str) -> AsyncIterator[tuple[Api, Api]]:
    """Replica A and replica B on the same store; one account and admin key (made
    through A), usable at both (they share the signing keys)."""
    async with (
        open_context(store_url, SETTINGS) as ctx_a,
        open_context(store_url, SETTINGS) as ctx_b,
    ):
        clients = []
        for ctx in (ctx_a, ctx_b):
            server = TestServer(create_app(ctx))
            client: TestClient[Any, Any] = TestClient(server)
            await client.start_server()
            ctx.settings = replace(ctx.settings, public_url=str(server.make_url("")).rstrip("/"))
            clients.append(client)
        try:
            account = await keys.create_account(ctx_a, "acme")
            key = await keys.insert_key(
                ctx_a,
                account_id=account["id"],
                name="admin-key",
                owner="admin@example.com",
                scopes=["admin", "metrics", "ingest"],
            )
            yield (
                Api(clients[0], ctx_a, account["id"], str(key["api_key"])),
                Api(clients[1], ctx_b, account["id"], str(key["api_key"])),
            )
        finally:
            for client in clients:
                await client.close()


async def race(
    pair: tuple[Api, Api], method: str, path: str, body: Any = None, n: int = RACERS
) -> list[tuple[int, Any]]:
    """`n` identical requests at once, alternating replicas; (status, body) each."""
    for api in pair:
        await api.token()  # tokens first, so the race is only the request itself
    return list(
        await asyncio.gather(*(pair[i % 2].call(method, path, json=body) for i in range(n)))
    )


def assert_one_winner(results: list[tuple[int, Any]]) -> Any:
    statuses = collections.Counter(status for status, _ in results)
    assert statuses == {201: 1, 409: len(results) - 1}, results
    for status, body in results:
        if status == 409:
            assert body["error"]["status"] == 409, body
            assert body["error"]["code"] == "conflict", body
            assert body["error"]["message"], body
    return next(body for status, body in results if status == 201)


async def test_same_name_destinations_one_created_the_rest_conflict(
    replicas: tuple[Api, Api],
) -> None:
    created = assert_one_winner(
        await race(replicas, "POST", "/v1/destinations", {**LAKE, "name": "lake"})
    )
    for api in replicas:
        status, page = await api.call("GET", "/v1/destinations")
        assert status == 200, page
        assert [d["id"] for d in page["items"]] == [created["id"]]


async def test_renaming_destinations_to_one_name_at_once_leaves_one_with_it(
    replicas: tuple[Api, Api],
) -> None:
    a, _ = replicas
    ids = []
    for i in range(4):
        status, body = await a.call("POST", "/v1/destinations", json={**LAKE, "name": f"d{i}"})
        assert status == 201, body
        ids.append(body["id"])
    for api in replicas:
        await api.token()
    results = await asyncio.gather(
        *(
            replicas[i % 2].call("PATCH", f"/v1/destinations/{d}", json={"name": "shared"})
            for i, d in enumerate(ids)
        )
    )
    statuses = collections.Counter(status for status, _ in results)
    assert statuses == {200: 1, 409: 3}, results
    status, page = await a.call("GET", "/v1/destinations")
    names = sorted(d["name"] for d in page["items"])
    assert names.count("shared") == 1, names
    assert len(names) == 4, names


async def test_same_name_views_one_created_the_rest_conflict(replicas: tuple[Api, Api]) -> None:
    body = {"name": "orders", "definition": SMALL_DEFINITION, "format": "json"}
    created = assert_one_winner(await race(replicas, "POST", "/v1/views", body))
    assert created["version"] == 1
    for api in replicas:
        status, page = await api.call("GET", "/v1/views", params={"status": "draft"})
        assert status == 200, page
        assert [(v["name"], v["version"]) for v in page["items"]] == [("orders", 1)]


async def test_concurrent_new_versions_get_distinct_contiguous_numbers(
    replicas: tuple[Api, Api],
) -> None:
    a, _ = replicas
    status, view = await a.call(
        "POST", "/v1/views", json={"name": "orders", "definition": SMALL_DEFINITION}
    )
    assert status == 201, view
    results = await race(replicas, "POST", f"/v1/views/{view['id']}/versions", {})
    assert all(status == 201 for status, _ in results), results
    versions = sorted(body["version"] for _, body in results)
    assert versions == list(range(2, RACERS + 2)), versions
    assert len({body["id"] for _, body in results}) == RACERS
    status, page = await a.call("GET", "/v1/views", params={"limit": "200", "status": "draft"})
    assert sorted(v["version"] for v in page["items"] if v["name"] == "orders") == list(
        range(1, RACERS + 2)
    )


async def test_concurrent_activation_of_one_view_on_one_endpoint_binds_it_once(
    replicas: tuple[Api, Api],
) -> None:
    a, b = replicas
    endpoint = await create_endpoint(a)
    status, view = await a.call(
        "POST", "/v1/views", json={"name": "orders", "definition": SMALL_DEFINITION}
    )
    assert status == 201, view
    status, published = await a.call("POST", f"/v1/views/{view['id']}/publish")
    assert status == 200, published
    path = f"/v1/endpoints/{endpoint['id']}/views"
    winner = assert_one_winner(await race(replicas, "POST", path, {"view_id": view["id"]}))
    for api in (a, b):
        status, page = await api.call("GET", path)
        assert status == 200, page
        active = [x for x in page["items"] if x.get("deactivated_at") is None]
        assert [x["id"] for x in active] == [winner["id"]], page


async def test_concurrent_key_creation_makes_every_key_once(replicas: tuple[Api, Api]) -> None:
    a, _ = replicas
    results = await race(
        replicas, "POST", "/v1/api-keys", {"name": "worker", "scopes": ["ingest"]}, n=10
    )
    assert all(status == 201 for status, _ in results), results
    ids = {body["id"] for _, body in results}
    secrets_ = {body["api_key"] for _, body in results}
    assert len(ids) == 10
    assert len(secrets_) == 10
    status, page = await a.call("GET", "/v1/api-keys", params={"limit": "200"})
    assert status == 200, page
    assert ids <= {k["id"] for k in page["items"]}
    assert page["total"] == 11  # the admin key and the ten


async def test_concurrent_accounts_get_distinct_tenants(replicas: tuple[Api, Api]) -> None:
    a, b = replicas
    made = await asyncio.gather(
        *(keys.create_account((a, b)[i % 2].ctx, f"acct{i}") for i in range(RACERS))
    )
    assert len({m["tenant"] for m in made}) == RACERS
    assert len({m["id"] for m in made}) == RACERS


async def _node(api: Api) -> tuple[str, str]:
    key = str((await keys.create_node_key(api.ctx, "racer"))["api_key"])
    resp = await api.client.post(
        "/v1/nodes/register", json={"region": "iad"}, headers={"X-API-Key": key}
    )
    assert resp.status == 200, await resp.text()
    return key, str((await resp.json())["node_id"])


async def test_identical_commit_reports_at_both_replicas_are_stored_once(
    replicas: tuple[Api, Api],
) -> None:
    a, b = replicas
    endpoint = await create_endpoint(a)
    status, view = await a.call(
        "POST", "/v1/views", json={"name": "orders", "definition": SMALL_DEFINITION}
    )
    assert status == 201, view
    key, node_id = await _node(a)
    report = {
        "commits": [
            commit(
                endpoint["id"],
                seq,
                ago(1000 * seq),
                views=[outcome(view["id"], 10 * seq, 10 * seq, 0, 0)],
            )
            for seq in (1, 2, 3)
        ]
    }
    # Reversed copies too: overlapping reports in different orders must not deadlock.
    flipped = {"commits": list(reversed(report["commits"]))}
    answers = await asyncio.gather(
        *(
            (a, b)[i % 2].client.post(
                f"/v1/nodes/{node_id}/commits",
                json=report if i % 3 else flipped,
                headers={"X-API-Key": key},
            )
            for i in range(RACERS)
        )
    )
    bodies = [(r.status, await r.json()) for r in answers]
    assert all(status == 200 for status, _ in bodies), bodies
    assert sum(body["stored"] for _, body in bodies) == 3, bodies
    for api in (a, b):
        status, page = await api.call("GET", f"/v1/endpoints/{endpoint['id']}/commits")
        assert status == 200, page
        assert sorted(c["seq"] for c in page["items"]) == [1, 2, 3], page
        status, metrics = await api.call("GET", f"/v1/views/{view['id']}/metrics")
        assert status == 200, metrics
        assert metrics["aggregated"]["all_time"]["processed"] == 60, metrics


async def test_concurrent_registration_and_heartbeats_of_one_node_all_succeed(
    replicas: tuple[Api, Api],
) -> None:
    a, b = replicas
    endpoint = await create_endpoint(a)
    key, node_id = await _node(a)
    headers = {"X-API-Key": key}
    calls = []
    for i in range(RACERS):
        client = (a, b)[i % 2].client
        calls.append(
            client.post(
                "/v1/nodes/register",
                json={"region": "iad", "node_id": node_id, "ipv4": ["127.0.0.9"]},
                headers=headers,
            )
        )
        calls.append(
            client.post(
                f"/v1/nodes/{node_id}/heartbeat",
                json={
                    "applied_epoch": 10**6,
                    "endpoints": [{"endpoint_id": endpoint["id"], "unshipped_bytes": i}],
                },
                headers=headers,
            )
        )
    answers = await asyncio.gather(*calls)
    assert [r.status for r in answers] == [200] * len(calls), [
        await r.text() for r in answers if r.status != 200
    ]
    for api in (a, b):
        status, body = await api.call("GET", f"/v1/endpoints/{endpoint['id']}")
        assert status == 200, body
        assert body["status"] == "active", body
        assert body["dns_ipv4"] == ["127.0.0.9"], body


async def test_a_download_link_signed_by_one_replica_works_at_the_other(
    replicas: tuple[Api, Api], store_url: str, tmp_path: Path
) -> None:
    """Local-store DLQ links are signed with a secret kept in the store, so any replica
    (and any restart) accepts a link another replica made."""
    a, b = replicas
    store = tmp_path / "objects"
    status, destination = await a.call(
        "POST",
        "/v1/destinations",
        json={**LAKE, "name": "local", "region": "local", "endpoint_url": f"file://{store}"},
    )
    assert status == 201, destination
    endpoint = await create_endpoint(a, destination_id=destination["id"])
    view = await published_view(a)
    await attach(a, endpoint["id"], view["id"])
    key = f"events/prod/dlq/user_events/v1/{endpoint['id']}-n1-1-00000001.parquet"
    (store / LAKE["bucket"] / key).parent.mkdir(parents=True)
    (store / LAKE["bucket"] / key).write_bytes(b"PAR1 rejected PAR1")
    dlq_file = {"key": key, "bucket": LAKE["bucket"], "region": "local", "bytes": 18}
    node = await Node.start(a)
    await node.report(
        commit(
            endpoint["id"], 1, ago(1000), views=[outcome(view["id"], 3, 2, 0, 1, dlq_file=dlq_file)]
        )
    )
    status, body = await a.call("GET", f"/v1/views/{view['id']}/dlq-files")
    assert status == 200, body
    link = URL(body["files"][0]["download_url"])
    resp = await b.client.get(link.path_qs)  # made by A, fetched at B
    assert resp.status == 200, await resp.text()
    assert await resp.read() == b"PAR1 rejected PAR1"
    async with open_context(store_url, SETTINGS) as restarted:
        assert restarted.settings.download_secret == a.ctx.settings.download_secret
        assert restarted.settings.download_secret == b.ctx.settings.download_secret


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
async def test_replicas_starting_together_on_an_empty_store_all_come_up(
    dialect: str, tmp_path: Path, postgres: Any
) -> None:
    """Every migration is applied once, whoever gets there first; none fails on a table
    a twin created a moment earlier (found: `table accounts already exists` when six
    `edgemq admin` processes started on a fresh SQLite file)."""
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path}/fresh.db"
    else:
        if postgres is None:
            pytest.skip("PostgreSQL server binaries not installed (./dev test installs them)")
        url = postgres.url(postgres.create_database())  # empty: no template
    async with contextlib.AsyncExitStack() as stack:
        results = await asyncio.gather(
            *(stack.enter_async_context(open_context(url, SETTINGS)) for _ in range(RACERS)),
            return_exceptions=True,
        )
        failures = [r for r in results if isinstance(r, BaseException)]
        assert failures == [], failures
        ctx = results[0]
        assert not isinstance(ctx, BaseException)
        versions = await ctx.db.fetchall("SELECT version FROM schema_migrations ORDER BY version")
        assert [v["version"] for v in versions] == list(range(1, len(versions) + 1))
        signing = await ctx.db.fetchall("SELECT kid FROM signing_keys")
        assert len(signing) == 1
        secrets = {r.settings.download_secret for r in results if not isinstance(r, BaseException)}
        assert len(secrets) == 1


# ------------------------------------------------- archive / delete vs attach
async def _attach_with_a_step_between_check_and_insert(
    api: Api, endpoint_id: str, view_id: str, step: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, Any]:
    """Attach at `api`, with `step()` (another replica's request) run to completion
    after attach has read the view and before it writes: the widest race window."""
    from control.services import views

    real_fetch = views.fetch

    async def fetch_then_step(*args: Any) -> Any:
        row = await real_fetch(*args)
        monkeypatch.setattr(views, "fetch", real_fetch)  # once: `step` reads views too
        await step()
        return row

    monkeypatch.setattr(views, "fetch", fetch_then_step)
    try:
        return await api.call(
            "POST", f"/v1/endpoints/{endpoint_id}/views", json={"view_id": view_id}
        )
    finally:
        monkeypatch.setattr(views, "fetch", real_fetch)


async def _active_bindings(api: Api, view_id: str) -> list[dict[str, Any]]:
    return await api.ctx.db.fetchall(
        "SELECT id, endpoint_id FROM bindings WHERE view_id = ? AND deactivated_at IS NULL",
        (view_id,),
    )


async def test_a_view_archived_while_an_attach_is_in_flight_stays_unbound(
    replicas: tuple[Api, Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: attach checked the view's status outside its transaction, so an
    archive at the other replica (seeing no binding yet) let attach insert an active
    binding of an archived view, which then shipped to nodes."""
    a, b = replicas
    endpoint = await create_endpoint(a)
    view = await published_view(a)
    await b.token()

    async def archive_at_b() -> None:
        status, body = await b.call("POST", f"/v1/views/{view['id']}/archive")
        assert status == 200, body

    status, body = await _attach_with_a_step_between_check_and_insert(
        a, endpoint["id"], view["id"], archive_at_b, monkeypatch
    )
    assert status == 422, body
    assert "archived" in body["error"]["problems"][0]["message"], body
    assert await _active_bindings(a, view["id"]) == []


async def test_an_endpoint_deleted_while_an_attach_is_in_flight_gets_no_binding(
    replicas: tuple[Api, Api], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = replicas
    endpoint = await create_endpoint(a)
    view = await published_view(a)
    await b.token()

    async def delete_at_b() -> None:
        status, body = await b.call("DELETE", f"/v1/endpoints/{endpoint['id']}")
        assert status == 204, body

    status, body = await _attach_with_a_step_between_check_and_insert(
        a, endpoint["id"], view["id"], delete_at_b, monkeypatch
    )
    assert status == 404, body
    assert await _active_bindings(a, view["id"]) == []


async def test_attach_and_archive_racing_at_two_replicas_never_leave_an_archived_view_bound(
    replicas: tuple[Api, Api],
) -> None:
    """The same race without a hook: attach at A and archive at B sent together, a few
    rounds; whoever wins, an archived view has no active binding afterwards."""
    a, b = replicas
    endpoint = await create_endpoint(a)
    for api in replicas:
        await api.token()
    for round_ in range(6):
        view = await published_view(a, name=f"racing_{round_}")
        (attach_status, attached), (archive_status, archived) = await asyncio.gather(
            a.call("POST", f"/v1/endpoints/{endpoint['id']}/views", json={"view_id": view["id"]}),
            b.call("POST", f"/v1/views/{view['id']}/archive"),
        )
        assert attach_status in (201, 422), attached
        assert archive_status == 200, archived
        assert await _active_bindings(a, view["id"]) == [], (round_, attach_status)


async def test_the_snapshot_leaves_out_bindings_of_archived_views(
    replicas: tuple[Api, Api],
) -> None:
    """Defence in depth: a binding row left active on an archived view (a store from
    before the fix) is not shipped to nodes."""
    a, _ = replicas
    endpoint = await create_endpoint(a)
    view = await published_view(a)
    kept = await published_view(a, name="kept")
    await attach(a, endpoint["id"], view["id"])
    await attach(a, endpoint["id"], kept["id"])
    await a.ctx.db.execute("UPDATE views SET status = 'archived' WHERE id = ?", (view["id"],))
    from control.services.nodes import snapshot

    shipped = await snapshot(a.ctx, "iad")
    [entry] = [e for e in shipped["endpoints"] if e["id"] == endpoint["id"]]
    assert [x["view_id"] for x in entry["bindings"]] == [kept["id"]]


# ------------------------------------------------------------ long polls
class _EpochReads:
    """Counts the config-epoch reads a replica makes (wrapping its store's fetchone):
    those of its epoch watcher task and those of anything else (the polls)."""

    def __init__(self, api: Api, polls: int) -> None:
        self.watcher = 0
        self.others = 0
        self.each_poll_read = asyncio.Event()
        real = api.ctx.db.fetchone

        async def counting(sql: str, params: Any = ()) -> Any:
            if "config_epoch" in sql:
                task = asyncio.current_task()
                if task is not None and task.get_name() == "epoch-watcher":
                    self.watcher += 1
                else:
                    self.others += 1
                    if self.others >= polls:
                        self.each_poll_read.set()
            return await real(sql, params)

        api.ctx.db.fetchone = counting  # type: ignore[method-assign]


async def test_waiting_long_polls_share_one_epoch_reader_and_wake_on_the_other_replicas_change(
    replicas: tuple[Api, Api],
) -> None:
    """Found in review: every waiting poll re-read the epoch once a second on its own
    connection (N polls, N queries a second). One watcher per replica reads it; a
    change made through replica B still wakes every poll waiting at replica A."""
    a, b = replicas
    key, node_id = await _node(a)
    epoch = await a.ctx.config_epoch()
    polls = 12
    reads = _EpochReads(a, polls)
    window_s = 2.5
    tasks = [
        asyncio.create_task(
            a.client.get(
                f"/v1/nodes/{node_id}/config",
                params={"after_epoch": str(epoch), "wait_s": "20"},
                headers={"X-API-Key": key},
            )
        )
        for _ in range(polls)
    ]
    async with asyncio.timeout(30):
        await reads.each_poll_read.wait()
    await asyncio.sleep(0.2)  # … and waits
    assert not any(t.done() for t in tasks)
    watcher, others = reads.watcher, reads.others
    await asyncio.sleep(window_s)
    # Waiting polls read nothing; the watcher about once a second (one tick of slack).
    assert reads.others - others == 0, reads.others - others
    assert reads.watcher - watcher <= window_s + 1, reads.watcher - watcher
    created = await create_endpoint(b)
    async with asyncio.timeout(10):  # the watcher notices within about a second
        answers = await asyncio.gather(*tasks)
    for resp in answers:
        assert resp.status == 200, await resp.text()
        body = await resp.json()
        assert body["config_epoch"] > epoch
        assert created["id"] in [e["id"] for e in body["endpoints"]]
