"""The scale-out topology on loopback (issue #8): two `edgemq control` processes on
one PostgreSQL database, ingest nodes (`edgemq node`) in several regions, each with its
own data directory, port and advertised address (127.0.0.2, .3, …: Linux routes all
of 127.0.0.0/8 to loopback), and the local `file://` object store as the sink.

    async with Cluster(tmp_path, pg_url) as c:      # replicas up, account and keys made
        n = c.add_node("iad", replica=0, host="127.0.0.2"); await c.start_nodes()
        await c.send(n, endpoint_id, 20)           # NDJSON batch, noted in the ledger
        await c.wait_for(lambda: ..., what="...")  # every wait polls under a deadline

Test timings (control-plane settings, through tests/support/processes.py overrides):
nodes heartbeat every HEARTBEAT_S and count as unhealthy after HEALTH_WINDOW_S without
one; delivery retries are short. Nothing else differs from the CLI.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from ingest.node import NODE_ID_FILE
from tests.support.ledger import OK, Ledger, Record
from tests.support.postgres import free_port
from tests.support.processes import ControlChild, NodeChild, admin
from tests.support.stack import ControlPlane, wait_for

HEARTBEAT_S = 0.5
HEALTH_WINDOW_S = 4.0
"""Eight heartbeats: a node of a loaded 2-vCPU machine may miss a few."""
SEGMENT_BYTES_MIN = 16 * 1024
CONTROL_OVERRIDES = {
    "control": {
        "segment_bytes_min": SEGMENT_BYTES_MIN,
        "node_heartbeat_interval_s": HEARTBEAT_S,
        "node_heartbeat_timeout_s": HEALTH_WINDOW_S,
    }
}
NODE_OVERRIDES = {
    "delivery": {"retry_base_s": 0.1, "retry_cap_s": 1.0, "permanent_retry_s": 1.0},
    "node": {"control_timeout_s": 5.0},
}
DEADLINE_S = 60.0
_EPOCH_LINE = re.compile(r"^edgemq_config_epoch (\S+)$", re.MULTILINE)


@dataclass
class Node:
    name: str
    region: str
    host: str
    replica: int
    child: NodeChild
    acked: list[str] = field(default_factory=list)
    """Ids of the records this node acknowledged (2xx)."""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.child.http_port}"

    @property
    def node_id(self) -> str:
        return (self.child.data_dir / NODE_ID_FILE).read_text().strip()


class Cluster:
    def __init__(self, tmp: Path, database_url: str) -> None:
        self.tmp = tmp
        self.database_url = database_url
        self.out_dir = tmp / "objects"
        self.ledger = Ledger()
        self.replicas = [
            ControlChild(
                log_path=tmp / f"control-{i}.log",
                database_url=database_url,
                port=free_port(),
                overrides=CONTROL_OVERRIDES,
            )
            for i in range(2)
        ]
        self.nodes: list[Node] = []
        self.api: list[ControlPlane] = []
        self.ingest_key = ""
        self.session: aiohttp.ClientSession

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Cluster:
        self.session = aiohttp.ClientSession()
        self.out_dir.mkdir()
        # Both replicas start together on the empty database: migrations and the
        # signing key are made once whoever gets there first.
        for replica in self.replicas:
            replica.start()
        await asyncio.gather(*(r.wait_ready(self.session) for r in self.replicas))
        account = await admin(self.database_url, "create-account", "acme")
        key = await admin(
            self.database_url,
            "create-key",
            "--account",
            account["id"],
            "--scopes",
            "ingest,metrics,admin",
        )
        node_key = await admin(self.database_url, "create-node-key", "scaleout-nodes")
        self.ingest_key = key["api_key"]
        self.api = [
            ControlPlane(
                r.url,
                self.database_url,
                self.session,
                account["id"],
                key["api_key"],
                node_key["api_key"],
            )
            for r in self.replicas
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for node in self.nodes:
            node.child.resume()
            await node.child.close()
        for replica in self.replicas:
            await replica.close()
        await self.session.close()
        if exc is not None:
            print(self.logs())

    def logs(self) -> str:
        children = [*self.replicas, *(n.child for n in self.nodes)]
        return "\n".join(f"===== {c.log_path.name}\n{c.log_tail(3000)}" for c in children)

    def add_node(self, name: str, region: str, host: str, *, replica: int) -> Node:
        child = NodeChild(
            data_dir=self.tmp / name,
            control_url=self.replicas[replica].url,
            node_key=self.api[0].node_key,
            http_port=free_port(),
            region=region,
            segment_bytes_min=SEGMENT_BYTES_MIN,
            overrides=NODE_OVERRIDES,
            env={"EDGEMQ_HOST": host, "EDGEMQ_ADVERTISE_HOST": host},
        )
        node = Node(name, region, host, replica, child)
        child.url = node.url  # readiness is polled at the node's own address
        self.nodes.append(node)
        return node

    async def start_nodes(self) -> None:
        for node in self.nodes:
            node.child.start()
        await asyncio.gather(*(n.child.wait_ready(self.session) for n in self.nodes))

    # ------------------------------------------------------------------ traffic
    async def send(self, node: Node, endpoint_id: str, n: int) -> list[Record]:
        """One batch of `n` records to `node`; a 503 (backlog) is retried with the same
        records. Returns the batch once acknowledged."""
        batch = self.ledger.records(n, lambda i: {"node": node.name, "n": i, "temp": i % 50})
        for _ in range(50):
            status = await self.ledger.post(
                self.session,
                f"{node.url}/ingest/{endpoint_id}",
                batch,
                headers={"X-API-Key": self.ingest_key},
            )
            if status is not None and 200 <= status < 300:
                node.acked += [r.id for r in batch]
                return batch
            assert status == 503, f"{node.name}: ingest answered {status}"
            await asyncio.sleep(0.2)
        raise AssertionError(f"{node.name}: still 503 after 50 attempts")

    async def traffic(self, targets: list[tuple[Node, str]], batches: int, size: int) -> int:
        """`batches` batches of `size` records to every (node, endpoint), paced so each
        node seals several segments (1 s age); the number of records acknowledged."""
        for _ in range(batches):
            await asyncio.gather(*(self.send(n, e, size) for n, e in targets))
            await asyncio.sleep(0.25)
        return batches * size * len(targets)

    # ------------------------------------------------------------------ reading
    async def endpoint(self, endpoint_id: str, replica: int = 0) -> dict[str, Any]:
        return dict(await self.api[replica].call("GET", f"/v1/endpoints/{endpoint_id}"))

    async def node_epoch(self, node: Node) -> int:
        """The config epoch the node reports having applied (its /metrics gauge)."""
        async with self.session.get(f"{node.url}/metrics") as r:
            text = await r.text()
        found = _EPOCH_LINE.search(text)
        assert found is not None, text[:500]
        return int(float(found.group(1)))

    async def store_epoch(self) -> int:
        """The global config epoch in the shared store (what every change bumped)."""
        import psycopg

        async with await psycopg.AsyncConnection.connect(self.database_url) as conn:
            cur = await conn.execute("SELECT value FROM settings WHERE name = 'config_epoch'")
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    async def frames_by_node(self, endpoint_id: str, replica: int) -> dict[str, int]:
        by_node: dict[str, int] = {}
        for c in await self.api[replica].commits(endpoint_id):
            by_node[c["node_id"]] = by_node.get(c["node_id"], 0) + int(c["frames"])
        return by_node

    @staticmethod
    async def wait_for(
        predicate: Callable[[], Any], *, what: str, timeout_s: float = DEADLINE_S
    ) -> Any:
        return await wait_for(predicate, timeout_s=timeout_s, what=what)

    def acked_ids(self) -> set[str]:
        return self.ledger.ids(OK)


def dumps(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True)[:3000]
