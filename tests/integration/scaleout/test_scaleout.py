"""Multi-node scale-out end to end (issue #8 part 1, DESIGN.md §1 and §8, docs/scale-out.md).

Two `edgemq control` processes share one real PostgreSQL database; four `edgemq node`
processes run: iad-1 (127.0.0.2) and iad-3 (127.0.0.4) talk to replica 0, iad-2
(127.0.0.3) and fra-1 (127.0.0.5) to replica 1. Every API read is made at both
replicas. The test walks, asserting at each step:

1. endpoints made before any node runs are `deploying` with no addresses; once the
   nodes apply the epoch they are `active`, and iad's `dns_ipv4` is exactly the three
   iad addresses (fra's is fra's); an endpoint made while the nodes run (frozen with
   SIGSTOP for that moment, so none can apply it) is `deploying`, then `active`;
2. records sent to every node are committed under that node's own keys, with
   contiguous sequence numbers; the commit list sums to what each node acknowledged;
3. a view attached through replica 1 reaches all four nodes through the long poll
   (replica 0's nodes via the shared store) and the next segments of every node have
   view output; the view metrics add up every node's records;
4. iad-2 drained with SIGTERM exits 0 and loses nothing (the ledger reconciles against
   every manifest and the commit list: nothing acknowledged is missing, no gaps), and
   it leaves `dns_ipv4`;
5. with the other iad nodes stopped (SIGSTOP) the iad endpoint is `degraded` with no
   addresses while fra stays `active`; resumed, iad is `active` again.
"""

from __future__ import annotations

import asyncio
import collections
import json
from pathlib import Path
from typing import Any

import duckdb

from tests.support.ledger import LocalReader, load_manifests, reconcile_async
from tests.support.postgres import PostgresServer

from .cluster import Cluster, Node, dumps

VIEW = {
    "columns": [
        {"name": "id", "type": "VARCHAR", "path": "$.id", "required": True},
        {"name": "node", "type": "VARCHAR", "path": "$.node"},
        {"name": "temp", "type": "DOUBLE", "path": "$.temp"},
    ]
}
BATCHES, BATCH_RECORDS = 6, 20


async def test_two_replicas_and_four_nodes_scale_out(
    tmp_path: Path, pg_server: PostgresServer
) -> None:
    url = pg_server.url(pg_server.create_database())
    async with Cluster(tmp_path, url) as c:
        await _scenario(c)


async def _both(c: Cluster, endpoint_id: str) -> list[dict[str, Any]]:
    return [await c.endpoint(endpoint_id, replica) for replica in (0, 1)]


def _state(views: list[dict[str, Any]]) -> set[tuple[str, tuple[str, ...]]]:
    return {(v["status"], tuple(sorted(v["dns_ipv4"]))) for v in views}


async def _wait_state(c: Cluster, endpoint_id: str, status: str, dns: list[Node]) -> None:
    want = {(status, tuple(sorted(n.host for n in dns)))}
    seen: list[Any] = []

    async def reached() -> bool:
        seen[:] = [_state(await _both(c, endpoint_id))]
        return bool(seen[0] == want)

    try:
        await c.wait_for(reached, what=f"{endpoint_id} {want}")
    except AssertionError as err:
        raise AssertionError(f"{err}; last seen {seen}") from err


async def _scenario(c: Cluster) -> None:
    api = c.api[0]
    dest = await api.local_destination(str(c.out_dir))
    e_iad = (await api.endpoint(dest["id"], region="iad"))["id"]
    e_fra = (await c.api[1].endpoint(dest["id"], region="fra"))["id"]

    # 1. deploying (no node has applied anything), then active with the right addresses.
    for e in (e_iad, e_fra):
        assert _state(await _both(c, e)) == {("deploying", ())}
    iad = [
        c.add_node("iad-1", "iad", "127.0.0.2", replica=0),
        c.add_node("iad-2", "iad", "127.0.0.3", replica=1),
        c.add_node("iad-3", "iad", "127.0.0.4", replica=0),
    ]
    fra = c.add_node("fra-1", "fra", "127.0.0.5", replica=1)
    await c.start_nodes()
    await _wait_state(c, e_iad, "active", iad)
    await _wait_state(c, e_fra, "active", [fra])
    assert len({n.node_id for n in c.nodes}) == 4
    # An endpoint made while the nodes run: with them frozen (still healthy, but unable
    # to apply the new epoch) it is `deploying`; thawed, they apply it and it is active.
    for node in iad:
        node.child.pause()
    e_late = (await api.endpoint(dest["id"], region="iad"))["id"]
    assert _state(await _both(c, e_late)) == {("deploying", ())}
    for node in iad:
        node.child.resume()
    await _wait_state(c, e_late, "active", iad)

    # 2. data to every node; every node's commits add up to what it acknowledged.
    targets = [(n, e_iad) for n in iad] + [(fra, e_fra)]
    await c.traffic(targets, BATCHES, BATCH_RECORDS)
    await _wait_committed(c, e_iad, e_fra)

    # 3. a view attached through replica 1 reaches every node (long poll, both replicas).
    view = await c.api[1].published_view("readings", VIEW)
    for e in (e_iad, e_fra):
        await c.api[1].bind(e, view["id"])
    epoch = await c.store_epoch()
    for node in c.nodes:
        await c.wait_for(
            lambda node=node: _at_least(c, node, epoch),  # type: ignore[misc]
            what=f"{node.name} applying epoch {epoch} (replica {node.replica})",
        )
    phase_two = {n.name: len(n.acked) for n in c.nodes}
    await c.traffic(targets, BATCHES, BATCH_RECORDS)
    await _wait_committed(c, e_iad, e_fra)
    sent_after_bind = {n.name: len(n.acked) - phase_two[n.name] for n in c.nodes}
    await _assert_view_output(c, view["id"], {e_iad: iad, e_fra: [fra]}, sent_after_bind)

    # 4. drain iad-2: exit 0, nothing lost, out of DNS.
    drained = iad[1]
    assert await drained.child.terminate(timeout_s=60) == 0, drained.child.log_tail()
    await _wait_state(c, e_iad, "active", [iad[0], iad[2]])
    await _wait_committed(c, e_iad, e_fra)
    await _assert_reconciled(c, e_iad, e_fra)

    # 5. no healthy iad node: degraded, no addresses; fra unaffected; then back.
    for node in (iad[0], iad[2]):
        node.child.pause()
    await _wait_state(c, e_iad, "degraded", [])
    assert _state(await _both(c, e_fra)) == {("active", (fra.host,))}
    for node in (iad[0], iad[2]):
        node.child.resume()
    await _wait_state(c, e_iad, "active", [iad[0], iad[2]])


async def _at_least(c: Cluster, node: Node, epoch: int) -> bool:
    return await c.node_epoch(node) >= epoch


async def _wait_committed(c: Cluster, e_iad: str, e_fra: str) -> None:
    """Until both replicas' commit lists hold, per node, exactly the frames it
    acknowledged (a node that is gone keeps its count)."""
    want: dict[str, dict[str, int]] = {e_iad: {}, e_fra: {}}
    for node in c.nodes:
        if node.acked:
            want[e_fra if node.region == "fra" else e_iad][node.node_id] = len(node.acked)
    last: list[Any] = []

    async def committed() -> bool:
        got = {e: [await c.frames_by_node(e, r) for r in (0, 1)] for e in want}
        last[:] = [got]
        return all(views == [want[e], want[e]] for e, views in got.items())

    try:
        await c.wait_for(committed, what="every acknowledged record committed")
    except AssertionError as err:
        raise AssertionError(f"{err}; want {want}, last seen {last}") from err


async def _assert_view_output(
    c: Cluster, view_id: str, nodes_of: dict[str, list[Node]], sent_after_bind: dict[str, int]
) -> None:
    manifests = await asyncio.to_thread(load_manifests, LocalReader(c.out_dir / "lake"))
    with_view: collections.Counter[str] = collections.Counter()
    for key, m in manifests.items():
        outcome = [v for v in m.views if v.view_id == view_id]
        if outcome:
            assert outcome[0].processed == outcome[0].accepted == m.frames, (key, outcome)
            assert any(a.kind == "view" for a in m.artifacts), key
            with_view[m.node_id] += m.frames
    for endpoint_nodes in nodes_of.values():
        for node in endpoint_nodes:
            # Every record sent after the node applied the binding went through the view.
            assert with_view[node.node_id] == sent_after_bind[node.name], (node.name, with_view)
    metrics: list[dict[str, Any]] = []
    for api in c.api:
        metrics.append(await api.call("GET", f"/v1/views/{view_id}/metrics"))
    want = {e: sum(sent_after_bind[n.name] for n in ns) for e, ns in nodes_of.items()}
    for answer in metrics:
        by_endpoint = {e["endpoint_id"]: e["all_time"]["processed"] for e in answer["endpoints"]}
        assert by_endpoint == want, dumps(answer)
        total = answer["aggregated"]["all_time"]
        assert total["processed"] == sum(sent_after_bind.values()), dumps(answer)
        assert total["accepted"] == sum(sent_after_bind.values()), dumps(answer)


async def _assert_reconciled(c: Cluster, e_iad: str, e_fra: str) -> None:
    reader = LocalReader(c.out_dir / "lake")
    commits = {e: await c.api[1].commits(e) for e in (e_iad, e_fra)}
    result = await reconcile_async(c.ledger, reader, commits=commits)
    print(result.line())
    assert result.must_be_zero() == {}, result.line()
    assert result.ok == sum(len(n.acked) for n in c.nodes), result.line()
    assert result.lost_acked == 0
    assert result.unreported == 0, result.line()
    assert result.unlisted == 0, result.line()
    assert result.duplicates == 0, result.line()
    await asyncio.to_thread(_assert_own_keys, c, reader)


def _assert_own_keys(c: Cluster, reader: LocalReader) -> None:
    """Every committed object of a node is under that node's id, and its raw rows are
    records that were sent to that node; every node has segments 1..n."""
    sent_to = {rid: n.node_id for n in c.nodes for rid in n.acked}
    manifests = load_manifests(reader)
    seqs: dict[tuple[str, int], list[int]] = collections.defaultdict(list)
    for key, m in manifests.items():
        assert f"/commits/{m.node_id}/" in key, key
        seqs[(m.node_id, m.epoch)].append(m.seq)
        for artifact in m.artifacts:
            assert m.node_id in artifact.key, (key, artifact.key)
        for pkey in m.keys("parquet"):
            with duckdb.connect() as db:
                rows = db.execute(
                    "SELECT payload, node_id FROM read_parquet(?)", [str(reader.root / pkey)]
                ).fetchall()
            for payload, node_id in rows:
                assert node_id == m.node_id, (pkey, node_id)
                assert sent_to[json.loads(payload)["id"]] == m.node_id, (pkey, payload)
    assert {node for node, _ in seqs} == {n.node_id for n in c.nodes}
    for group, found in seqs.items():
        assert sorted(found) == list(range(1, len(found) + 1)), (group, sorted(found))
