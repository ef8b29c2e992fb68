"""S3 destinations: create, list with ref_count, get, patch (re-validation), delete,
validate (local `file://` store, throttled to one per 30 s)."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

from control.services.common import now_ms
from tests.integration.control.conftest import Api

REFERENCE_FIELDS = {
    "id",
    "name",
    "bucket",
    "prefix",
    "region",
    "role_arn",
    "external_id",
    "kms_key_arn",
    "path_style",
    "status",
    "validated_at",
    "last_error",
    "created_at",
    "updated_at",
}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
LAKE = {
    "name": "Analytics Data Lake",
    "bucket": "acme-data-lake",
    "prefix": "events/prod",
    "region": "us-east-1",
    "role_arn": "arn:aws:iam::123456789012:role/EdgeMqDelivery",
}


async def _create(api: Api, key: str | None = None, **fields: Any) -> Any:
    status, body = await api.call("POST", "/v1/destinations", key=key, json={**LAKE, **fields})
    assert status == 201, body
    return body


async def _endpoint(api: Api, destination_id: str | None) -> Any:
    status, body = await api.call(
        "POST", "/v1/endpoints", json={"region": "iad", "destination_id": destination_id}
    )
    assert status == 201, body
    return body


async def _mark_valid(api: Api, destination_id: str) -> None:
    await api.ctx.db.execute(
        "UPDATE destinations SET status = 'valid', validated_at = ?, last_error = NULL "
        "WHERE id = ?",
        (now_ms(), destination_id),
    )


async def _problems(api: Api, method: str, path: str, body: Any) -> set[str]:
    status, answer = await api.call(method, path, json=body)
    assert status == 422, (body, answer)
    assert answer["error"]["code"] == "validation_failed"
    return {p["path"] for p in answer["error"]["problems"]}


# ------------------------------------------------------------------- create
async def test_a_new_destination_is_pending_with_the_reference_fields_and_defaults(
    api: Api,
) -> None:
    status, body = await api.call(
        "POST",
        "/v1/destinations",
        json={"name": "lake", "bucket": "b1", "region": "eu-west-1", "role_arn": "arn:r"},
    )

    assert status == 201
    assert set(body) >= REFERENCE_FIELDS
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert (body["name"], body["bucket"], body["region"], body["role_arn"]) == (
        "lake",
        "b1",
        "eu-west-1",
        "arn:r",
    )
    assert body["prefix"] == ""
    assert body["kms_key_arn"] is None
    assert body["path_style"] is False
    assert body["status"] == "pending"
    assert body["validated_at"] is None
    assert body["last_error"] is None
    assert TIMESTAMP.match(body["created_at"])
    assert body["updated_at"] == body["created_at"]
    assert re.fullmatch(r"edgemq-[0-9A-Za-z]+", body["external_id"])

    full = await _create(
        api, name="kms", kms_key_arn="arn:aws:kms:us-east-1:1:key/k", path_style=True
    )
    assert (full["kms_key_arn"], full["path_style"]) == ("arn:aws:kms:us-east-1:1:key/k", True)


async def test_all_destinations_of_an_account_share_its_external_id_and_accounts_differ(
    api: Api,
) -> None:
    first = await _create(api, name="one")
    second = await _create(api, name="two")
    other_key = await api.new_account("globex")
    theirs = await _create(api, key=other_key, name="one")
    theirs_too = await _create(api, key=other_key, name="two")

    assert first["external_id"] == second["external_id"]
    assert theirs["external_id"] == theirs_too["external_id"]
    assert first["external_id"] != theirs["external_id"]
    assert first["external_id"].startswith("edgemq-")
    assert theirs["external_id"].startswith("edgemq-")


async def test_leading_trailing_and_doubled_prefix_slashes_are_normalised(api: Api) -> None:
    for index, (given, stored) in enumerate(
        (
            ("/events/prod/", "events/prod"),
            ("//events//prod//", "events/prod"),
            ("events", "events"),
            ("/", ""),
            ("", ""),
        )
    ):
        created = await _create(api, name=f"d{index}", prefix=given)
        assert created["prefix"] == stored, given
    status, patched = await api.call(
        "PATCH", f"/v1/destinations/{created['id']}", json={"prefix": "/a/b/c/"}
    )
    assert (status, patched["prefix"]) == (200, "a/b/c")


async def test_missing_and_malformed_fields_are_rejected_with_their_paths(api: Api) -> None:
    assert await _problems(api, "POST", "/v1/destinations", {}) == {
        "body.name",
        "body.bucket",
        "body.region",
        "body.role_arn",
    }
    for field, value in (
        ("name", ""),
        ("name", "   "),
        ("name", 5),
        ("bucket", None),
        ("bucket", "b" * 64),
        ("region", ["us-east-1"]),
        ("role_arn", ""),
        ("prefix", 7),
        ("kms_key_arn", 5),
        ("path_style", "yes"),
        ("path_style", 1),
        ("endpoint_url", "ftp://files.example"),
        ("name", "lake\x00"),  # NUL: PostgreSQL cannot store it (was a 500 there)
        ("prefix", "events\x00/prod"),
        ("role_arn", "arn:\x00"),
    ):
        body = {**LAKE, field: value}
        assert await _problems(api, "POST", "/v1/destinations", body) == {f"body.{field}"}, (
            field,
            value,
        )
    assert await _problems(api, "POST", "/v1/destinations", {**LAKE, "acl": "private"}) == {
        "body.acl"
    }
    assert await _problems(api, "POST", "/v1/destinations", [LAKE]) == {"body"}
    status, listing = await api.call("GET", "/v1/destinations")
    assert (status, listing["total"]) == (200, 0)


async def test_a_duplicate_name_answers_409_in_one_account_but_not_across_accounts(
    api: Api,
) -> None:
    await _create(api)

    status, body = await api.call("POST", "/v1/destinations", json={**LAKE, "bucket": "other"})
    assert status == 409
    assert body["error"]["code"] == "conflict"
    other_key = await api.new_account("globex")
    assert (await _create(api, key=other_key))["name"] == LAKE["name"]
    status, listing = await api.call("GET", "/v1/destinations")
    assert listing["total"] == 1


# ------------------------------------------------------------------ list/get
async def test_the_list_counts_referencing_endpoints_and_pages(api: Api) -> None:
    busy = await _create(api, name="busy")
    used = await _create(api, name="used")
    idle = await _create(api, name="idle")
    for destination in (busy, busy, used):
        await _endpoint(api, destination["id"])
    gone = await _endpoint(api, busy["id"])
    assert (await api.call("DELETE", f"/v1/endpoints/{gone['id']}"))[0] == 204

    status, listing = await api.call("GET", "/v1/destinations")
    assert status == 200
    assert (listing["total"], listing["limit"], listing["offset"]) == (3, 50, 0)
    assert listing["next_offset"] is None
    counts = {d["id"]: d["ref_count"] for d in listing["items"]}
    assert counts == {busy["id"]: 2, used["id"]: 1, idle["id"]: 0}
    assert all(set(d) >= REFERENCE_FIELDS for d in listing["items"])

    status, first = await api.call("GET", "/v1/destinations", params={"limit": 2})
    assert (len(first["items"]), first["total"], first["next_offset"]) == (2, 3, 2)
    status, last = await api.call("GET", "/v1/destinations", params={"limit": 2, "offset": 2})
    assert (len(last["items"]), last["total"], last["next_offset"]) == (1, 3, None)
    paged = [d["id"] for d in first["items"] + last["items"]]
    assert paged == [d["id"] for d in listing["items"]]
    for params in ({"limit": 0}, {"limit": 201}, {"offset": -1}):
        status, body = await api.call("GET", "/v1/destinations", params=params)
        assert status == 422, params
        assert [p["path"] for p in body["error"]["problems"]] == [f"query.{next(iter(params))}"]


async def test_get_shows_the_destination_with_ref_count_and_unknown_ids_answer_404(
    api: Api,
) -> None:
    created = await _create(api)
    await _endpoint(api, created["id"])

    status, body = await api.call("GET", f"/v1/destinations/{created['id']}")
    assert status == 200
    assert body == {**created, "ref_count": 1}
    for missing in (str(uuid.uuid4()), "nope"):
        status, body = await api.call("GET", f"/v1/destinations/{missing}")
        assert (status, body["error"]["code"]) == (404, "not_found")


# -------------------------------------------------------------------- patch
async def test_changing_any_critical_field_resets_a_valid_destination_to_pending(
    api: Api,
) -> None:
    created = await _create(api)
    path = f"/v1/destinations/{created['id']}"
    for field, value in (
        ("bucket", "acme-data-lake-2"),
        ("prefix", "events/prod/v2"),
        ("region", "eu-central-1"),
        ("role_arn", "arn:aws:iam::123456789012:role/Other"),
        ("kms_key_arn", "arn:aws:kms:us-east-1:1:key/k"),
        ("kms_key_arn", None),
        ("path_style", True),
    ):
        await _mark_valid(api, created["id"])
        assert (await api.call("GET", path))[1]["status"] == "valid"
        epoch = await api.ctx.config_epoch()

        status, body = await api.call("PATCH", path, json={field: value})
        assert status == 200, (field, body)
        assert body[field] == value
        assert (body["status"], body["validated_at"], body["last_error"]) == (
            "pending",
            None,
            None,
        ), field
        assert await api.ctx.config_epoch() > epoch, field  # nodes must re-read it


async def test_renaming_or_repeating_current_values_keeps_a_valid_status(api: Api) -> None:
    created = await _create(api)
    path = f"/v1/destinations/{created['id']}"
    await _mark_valid(api, created["id"])
    validated_at = (await api.call("GET", path))[1]["validated_at"]

    status, body = await api.call(
        "PATCH", path, json={"name": "Analytics Data Lake v2", "bucket": LAKE["bucket"]}
    )
    assert status == 200
    assert body["name"] == "Analytics Data Lake v2"
    assert (body["status"], body["validated_at"]) == ("valid", validated_at)
    # The same prefix spelled with extra slashes is the same prefix.
    status, body = await api.call("PATCH", path, json={"prefix": "/events/prod/"})
    assert (status, body["status"], body["prefix"]) == (200, "valid", "events/prod")


async def test_renaming_onto_another_destinations_name_answers_409(api: Api) -> None:
    await _create(api, name="taken")
    mine = await _create(api, name="mine")
    path = f"/v1/destinations/{mine['id']}"

    status, body = await api.call("PATCH", path, json={"name": "taken"})
    assert (status, body["error"]["code"]) == (409, "conflict")
    status, body = await api.call("GET", path)
    assert body["name"] == "mine"
    status, body = await api.call("PATCH", path, json={"name": "mine"})
    assert (status, body["name"]) == (200, "mine")


async def test_patch_validates_fields_and_an_unknown_id_answers_404(api: Api) -> None:
    created = await _create(api)
    path = f"/v1/destinations/{created['id']}"

    assert await _problems(api, "PATCH", path, {"name": ""}) == {"body.name"}
    assert await _problems(api, "PATCH", path, {"path_style": "no", "colour": 1}) == {
        "body.path_style",
        "body.colour",
    }
    status, body = await api.call("GET", path)
    assert {k: body[k] for k in REFERENCE_FIELDS} == {k: created[k] for k in REFERENCE_FIELDS}
    status, body = await api.call("PATCH", f"/v1/destinations/{uuid.uuid4()}", json={"name": "x"})
    assert (status, body["error"]["code"]) == (404, "not_found")


# ------------------------------------------------------------------- delete
async def test_delete_answers_409_while_an_endpoint_references_it_and_204_once_unbound(
    api: Api,
) -> None:
    created = await _create(api)
    endpoint = await _endpoint(api, created["id"])
    path = f"/v1/destinations/{created['id']}"

    status, body = await api.call("DELETE", path)
    assert (status, body["error"]["code"]) == (409, "conflict")
    assert (await api.call("GET", path))[0] == 200

    status, _ = await api.call(
        "PATCH", f"/v1/endpoints/{endpoint['id']}", json={"destination_id": None}
    )
    assert status == 200
    resp = await api.client.delete(path, headers=await api.headers())
    assert resp.status == 204
    assert await resp.read() == b""
    assert (await api.call("GET", path))[0] == 404
    assert (await api.call("DELETE", path))[0] == 404
    status, listing = await api.call("GET", "/v1/destinations")
    assert (listing["total"], listing["items"]) == (0, [])


async def test_a_destination_of_a_deleted_endpoint_can_be_deleted_once_its_data_drained(
    api: Api,
) -> None:
    """Deleted endpoints are hidden (ref_count 0) and must not pin a destination forever;
    only while nodes still hold undelivered data for them is the delete refused."""
    created = await _create(api)
    endpoint = await _endpoint(api, created["id"])
    path = f"/v1/destinations/{created['id']}"
    assert (await api.call("DELETE", f"/v1/endpoints/{endpoint['id']}"))[0] == 204
    node_id = str(uuid.uuid4())
    now = now_ms()
    await api.ctx.db.execute(
        "INSERT INTO nodes (id, region, ipv4, ipv6, registered_at, last_heartbeat_at, "
        "applied_epoch, draining) VALUES (?, 'iad', '[]', '[]', ?, ?, 0, 0)",
        (node_id, now, now),
    )
    await api.ctx.db.execute(
        "INSERT INTO node_endpoint_state (node_id, endpoint_id, unshipped_bytes, updated_at) "
        "VALUES (?, ?, 4096, ?)",
        (node_id, endpoint["id"], now),
    )

    status, body = await api.call("DELETE", path)
    assert (status, body["error"]["code"]) == (409, "conflict")
    await api.ctx.db.execute(
        "UPDATE node_endpoint_state SET unshipped_bytes = 0 WHERE endpoint_id = ?",
        (endpoint["id"],),
    )
    assert (await api.call("GET", path))[1]["ref_count"] == 0
    status, body = await api.call("DELETE", path)
    assert status == 204, body
    assert (await api.call("GET", path))[0] == 404


# ----------------------------------------------------------------- validate
async def test_validating_a_local_store_marks_it_valid_then_throttles_for_30_s(
    api: Api, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    root.mkdir()
    created = await _create(api, endpoint_url=f"file://{root}", bucket="lake")
    path = f"/v1/destinations/{created['id']}/validate"

    status, body = await api.call("POST", path)
    assert status == 200, body
    assert set(body) >= REFERENCE_FIELDS
    assert (body["status"], body["last_error"]) == ("valid", None)
    assert TIMESTAMP.match(body["validated_at"])
    leftovers = [f for _, _, files in os.walk(root) for f in files]
    assert leftovers == []  # the test object was removed again
    status, fetched = await api.call("GET", f"/v1/destinations/{created['id']}")
    assert (fetched["status"], fetched["validated_at"]) == ("valid", body["validated_at"])

    resp = await api.client.post(path, headers=await api.headers())
    assert resp.status == 429
    assert 1 <= int(resp.headers["Retry-After"]) <= 30
    error = (await resp.json())["error"]
    assert (error["status"], error["code"]) == (429, "throttled")
    # Unknown ids are 404 whatever the throttle says about this one.
    for missing in (str(uuid.uuid4()), "x"):
        status, body = await api.call("POST", f"/v1/destinations/{missing}/validate")
        assert (status, body["error"]["code"]) == (404, "not_found")


async def test_a_failing_validation_marks_it_invalid_and_degrades_its_endpoints(
    api: Api, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_bytes(b"")
    created = await _create(api, endpoint_url=f"file://{not_a_dir}")
    endpoint = await _endpoint(api, created["id"])

    status, body = await api.call("POST", f"/v1/destinations/{created['id']}/validate")
    assert status == 200, body
    assert (body["status"], body["validated_at"]) == ("invalid", None)
    assert isinstance(body["last_error"], str)
    assert body["last_error"]
    status, fetched = await api.call("GET", f"/v1/endpoints/{endpoint['id']}")
    assert (fetched["status"], fetched["destination_status"]) == ("degraded", "invalid")
