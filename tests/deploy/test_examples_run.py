"""The example configuration runs: `edgemq control` and `edgemq node` started as real
processes from deploy/examples/*.env (only addresses, ports, paths and the key replaced
for this machine) answer every probe and scrape path the Kubernetes manifests use, and
the node drains on SIGTERM well within the grace period the manifests give it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp

from tests.support.postgres import free_port
from tests.support.processes import ControlChild, NodeChild, admin

from .sources import DEPLOY, k8s_docs, read_env_file


def _probe_paths(command: str) -> set[str]:
    """Every HTTP path the manifests send kubelet or Prometheus to for `command`."""
    paths = set()
    for w in k8s_docs():
        if w["kind"] not in ("Deployment", "StatefulSet"):
            continue
        notes = w["spec"]["template"]["metadata"].get("annotations", {})
        for c in w["spec"]["template"]["spec"]["containers"]:
            if c["args"][0] != command:
                continue
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                if kind in c:
                    paths.add(c[kind]["httpGet"]["path"])
            if "prometheus.io/path" in notes:
                paths.add(notes["prometheus.io/path"])
    return paths


def _grace_s() -> float:
    (node,) = [d for d in k8s_docs() if d["kind"] == "StatefulSet"]
    return float(node["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
        return resp.status, await resp.text()


async def test_the_example_configs_run_and_answer_the_manifest_probes(tmp_path: Path) -> None:
    database_url = f"sqlite:///{tmp_path}/control.db"
    control = ControlChild(
        log_path=tmp_path / "control.log", database_url=database_url, port=free_port()
    )
    node_env = read_env_file(DEPLOY / "examples/node.env")
    local = {
        "EDGEMQ_HOST": "127.0.0.1",
        "EDGEMQ_ADVERTISE_HOST": "127.0.0.1",
        "EDGEMQ_CONTROL_URL": control.url,
        "EDGEMQ_DATA_DIR": str(tmp_path / "node"),
        "EDGEMQ_HTTP_PORT": str(free_port()),
        "EDGEMQ_MQTT_PORT": "0",
        "EDGEMQ_MQTT_TLS_PORT": "0",
        "EDGEMQ_DISK_RESERVE_BYTES": str(16 * 1024 * 1024),  # CI disks can be small
    }
    node: NodeChild | None = None
    children: list[Any] = [control]
    try:
        async with aiohttp.ClientSession() as session:
            control.start()
            await control.wait_ready(session)
            key = (await admin(database_url, "create-node-key", "deploy-test"))["api_key"]
            node = NodeChild(
                data_dir=tmp_path / "node",
                control_url=control.url,
                node_key=key,
                http_port=int(local["EDGEMQ_HTTP_PORT"]),
                env={**node_env, **local, "EDGEMQ_NODE_KEY": key},
            )
            children.append(node)
            node.start()
            await node.wait_ready(session)
            node_paths, control_paths = _probe_paths("node"), _probe_paths("control")
            assert {"/healthz", "/readyz", "/metrics"} <= node_paths
            assert "/healthz" in control_paths
            for base, paths in ((node.url, node_paths), (control.url, control_paths)):
                for path in sorted(paths):
                    status, body = await _get(session, base + path)
                    assert status == 200, (base, path, body[:500])
                    if path == "/metrics":
                        assert "edgemq_" in body
            _, text = await _get(session, control.url + "/metrics")
            assert 'edgemq_control_nodes{region="iad",state="healthy"} 1.0' in text, text
            # SIGTERM drains: an idle node exits 0, long before the grace period ends.
            code = await node.terminate(timeout_s=_grace_s())
            assert code == 0, node.log_tail()
    finally:
        for child in children:
            await child.close()
