"""Every operation of the API reference, called as its curl example does (same method,
path, body), against a local control plane with a real key: the documented success
status and at least the documented response fields.

tests/fixtures/reference/operations.json was extracted from the reference
(method, path, status, example body, the fields of the example response)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from control.services import keys
from tests.integration.control.conftest import Api

OPERATIONS = json.loads(
    (Path(__file__).resolve().parents[2] / "fixtures" / "reference" / "operations.json").read_text()
)


def _op(method: str, path: str) -> dict[str, Any]:
    [op] = [o for o in OPERATIONS if o["method"] == method and o["path"] == path]
    return op


def test_the_fixture_lists_all_25_reference_operations() -> None:
    assert len(OPERATIONS) == 25
    assert all(o["status"] in (200, 201, 204) for o in OPERATIONS)


async def test_every_reference_example_answers_as_documented(api: Api, tmp_path: Path) -> None:
    done: list[str] = []

    async def run(
        method: str, path: str, ids: dict[str, str] | None = None, body: Any = None, **kw: Any
    ) -> Any:
        op = _op(method, path)
        concrete = path
        for name, value in (ids or {}).items():
            concrete = concrete.replace("{" + name + "}", value)
        payload = body if body is not None else copy.deepcopy(op["body"])
        status, answer = await api.call(method, concrete, json=payload, **kw)
        assert status == op["status"], (method, path, answer)
        if op["response_fields"]:
            assert set(op["response_fields"]) <= set(answer), (method, path, answer)
        if op["item_fields"]:
            assert answer["items"], (method, path)
            assert set(op["item_fields"]) <= set(answer["items"][0]), (method, path)
        done.append(f"{method} {path}")
        return answer

    token_body = _op("POST", "/v1/token/exchange")["body"] | {"api_key": api.admin_key}
    status, token = await api.call("POST", "/v1/token/exchange", json=token_body)
    assert status == 200
    assert set(_op("POST", "/v1/token/exchange")["response_fields"]) <= set(token)
    done.append("POST /v1/token/exchange")

    dest = await run("POST", "/v1/destinations")
    await run("GET", "/v1/destinations")
    await run("GET", "/v1/destinations/{id}", {"id": dest["id"]})
    await run("PATCH", "/v1/destinations/{id}", {"id": dest["id"]})
    # The example's bucket is on AWS, out of reach here: validate against a local store.
    await api.call(
        "PATCH", f"/v1/destinations/{dest['id']}", json={"endpoint_url": f"file://{tmp_path}"}
    )
    validated = await run("POST", "/v1/destinations/{id}/validate", {"id": dest["id"]})
    assert validated["status"] == "valid"

    endpoint = await run(
        "POST",
        "/v1/endpoints",
        body=_op("POST", "/v1/endpoints")["body"] | {"destination_id": dest["id"]},
    )
    await run("GET", "/v1/endpoints")
    await run("PATCH", "/v1/endpoints/{id}", {"id": endpoint["id"]})

    view = await run("POST", "/v1/views")
    await run("PATCH", "/v1/views/{id}", {"id": view["id"]})
    await run("POST", "/v1/views/{id}/publish", {"id": view["id"]})
    draft = await run("POST", "/v1/views/{id}/versions", {"id": view["id"]})
    preview = await run("POST", "/v1/views/preview")
    assert preview["rowCount"] == 1
    await run("GET", "/v1/views")
    await run("GET", "/v1/views/{id}", {"id": view["id"]})

    attach_body = _op("POST", "/v1/endpoints/{endpoint_id}/views")["body"] | {"view_id": view["id"]}
    binding = await run(
        "POST",
        "/v1/endpoints/{endpoint_id}/views",
        {"endpoint_id": endpoint["id"]},
        body=attach_body,
    )
    await run("GET", "/v1/endpoints/{endpoint_id}/views", {"endpoint_id": endpoint["id"]})
    # A node delivers a segment, so commits, DLQ files and metrics have something to show.
    node_key = (await keys.create_node_key(api.ctx, "node-1"))["api_key"]
    headers = {"X-API-Key": node_key}
    resp = await api.client.post(
        "/v1/nodes/register", headers=headers, json={"region": "iad", "ipv4": ["127.0.0.1"]}
    )
    node_id = (await resp.json())["node_id"]
    commit = {
        "endpoint_id": endpoint["id"],
        "epoch": 1,
        "seq": 17,
        "wal_bytes": 2097152,
        "frames": 15234,
        "duration_ms": 340,
        "uploaded_at": "2026-01-15T10:30:00.000Z",
        "manifest_key": "events/prod/iad/e/commits/n/1/seg-00000017.json",
        "artifacts": {
            "parquet": {"key": "s3://acme-data-lake/events/prod/seg-17.parquet", "bytes": 1048576}
        },
        "views": [
            {
                "view_id": view["id"],
                "processed": 15234,
                "accepted": 14980,
                "dropped": 212,
                "dlq": 42,
                "dlq_file": {
                    "key": "dlq/user_events/v1/seg-17.parquet",
                    "bucket": "acme-data-lake",
                    "region": "us-east-1",
                    "bytes": 4096,
                },
            }
        ],
    }
    resp = await api.client.post(
        f"/v1/nodes/{node_id}/commits", headers=headers, json={"commits": [commit]}
    )
    assert resp.status == 200, await resp.text()
    await run("GET", "/v1/endpoints/{id}/commits", {"id": endpoint["id"]})
    dlq = await run("GET", "/v1/views/{id}/dlq-files", {"id": view["id"]})
    assert dlq["files"][0]["rows"] == 42
    metrics = await run("GET", "/v1/views/{id}/metrics", {"id": view["id"]})
    assert metrics["aggregated"]["all_time"]["processed"] == 15234
    await run(
        "DELETE",
        "/v1/endpoints/{endpoint_id}/views/{binding_id}",
        {"endpoint_id": endpoint["id"], "binding_id": binding["id"]},
    )
    await run("POST", "/v1/views/{id}/archive", {"id": view["id"]})
    await run("DELETE", "/v1/views/{id}", {"id": draft["id"]})
    await api.call("PATCH", f"/v1/endpoints/{endpoint['id']}", json={"destination_id": None})
    await run("DELETE", "/v1/destinations/{id}", {"id": dest["id"]})

    assert sorted(done) == sorted(f"{o['method']} {o['path']}" for o in OPERATIONS)
