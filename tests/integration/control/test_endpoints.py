"""Ingest endpoints: create, list (status filter, pagination), get, patch, delete."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from control.services.common import now_ms
from tests.integration.control.conftest import SETTINGS, Api

ENDPOINT_FIELDS = {
    "id",
    "region",
    "status",
    "destination_id",
    "destination_name",
    "destination_status",
    "created_at",
    "dns_ipv4",
    "dns_ipv6",
    "segment_bytes",
    "segment_max_age_seconds",
    "output_formats",
    "mqtt_config",
}
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
MQTT = {"enabled": True, "max_connections": 5000, "keepalive_max_s": 300, "qos_max": 0}


async def _destination(api: Api, name: str = "Production S3", key: str | None = None) -> Any:
    status, body = await api.call(
        "POST",
        "/v1/destinations",
        key=key,
        json={
            "name": name,
            "bucket": "acme-data-lake",
            "region": "us-east-1",
            "role_arn": "arn:aws:iam::123456789012:role/EdgeMqDelivery",
        },
    )
    assert status == 201, body
    return body


async def _endpoint(api: Api, **fields: Any) -> Any:
    status, body = await api.call("POST", "/v1/endpoints", json={"region": "iad", **fields})
    assert status == 201, body
    return body


async def _problems(api: Api, method: str, path: str, body: Any) -> set[str]:
    status, answer = await api.call(method, path, json=body)
    assert status == 422, (body, answer)
    assert answer["error"]["status"] == 422
    assert answer["error"]["code"] == "validation_failed"
    return {p["path"] for p in answer["error"]["problems"]}


async def _healthy_node(api: Api, region: str, ipv4: list[str], ipv6: list[str]) -> str:
    """A node of `region` that heartbeated just now and applied the current epoch."""
    node_id = str(uuid.uuid4())
    now = now_ms()
    await api.ctx.db.execute(
        "INSERT INTO nodes (id, region, http_url, mqtt_url, ipv4, ipv6, version, "
        "registered_at, last_heartbeat_at, applied_epoch, draining) "
        "VALUES (?, ?, NULL, NULL, ?, ?, 'test', ?, ?, ?, 0)",
        (
            node_id,
            region,
            json.dumps(ipv4),
            json.dumps(ipv6),
            now,
            now,
            await api.ctx.config_epoch(),
        ),
    )
    return node_id


# ------------------------------------------------------------------- create
async def test_an_endpoint_created_with_only_a_region_gets_the_documented_defaults(
    api: Api,
) -> None:
    status, body = await api.call("POST", "/v1/endpoints", json={"region": "iad"})

    assert status == 201
    assert set(body) == ENDPOINT_FIELDS
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert body["region"] == "iad"
    assert body["status"] == "deploying"
    assert body["destination_id"] is None
    assert body["destination_name"] is None
    assert body["destination_status"] is None
    assert TIMESTAMP.match(body["created_at"])
    assert body["dns_ipv4"] == []
    assert body["dns_ipv6"] == []
    assert body["segment_bytes"] == 33554432
    assert body["segment_max_age_seconds"] == 60
    assert body["output_formats"] == ["segments", "parquet"]
    assert body["mqtt_config"] is None


async def test_an_endpoint_created_with_a_destination_and_mqtt_joins_the_destination(
    api: Api,
) -> None:
    destination = await _destination(api)

    body = await _endpoint(
        api,
        destination_id=destination["id"],
        mqtt_config=MQTT,
        segment_bytes=16777216,
        segment_max_age_seconds=5,
        output_formats=["parquet", "parquet_views"],
    )
    assert body["destination_id"] == destination["id"]
    assert body["destination_name"] == "Production S3"
    assert body["destination_status"] == "pending"
    assert body["mqtt_config"] == MQTT
    assert body["segment_bytes"] == 16777216
    assert body["segment_max_age_seconds"] == 5
    assert body["output_formats"] == ["parquet", "parquet_views"]

    # The join is live: the destination's status shows through on the endpoint.
    await api.ctx.db.execute(
        "UPDATE destinations SET status = 'valid', validated_at = ? WHERE id = ?",
        (now_ms(), destination["id"]),
    )
    status, fetched = await api.call("GET", f"/v1/endpoints/{body['id']}")
    assert status == 200
    assert fetched["destination_status"] == "valid"
    status, dest = await api.call("GET", f"/v1/destinations/{destination['id']}")
    assert dest["ref_count"] == 1


async def test_a_region_that_is_not_three_lowercase_letters_is_rejected_with_its_path(
    api: Api,
) -> None:
    for region in ("IAD", "Iad", "ia", "iadx", "ia1", "i d", "", "éaé", 123, None, ["iad"]):
        assert await _problems(api, "POST", "/v1/endpoints", {"region": region}) == {
            "body.region"
        }, region
    assert await _problems(api, "POST", "/v1/endpoints", {}) == {"body.region"}
    for region in ("lhr", "fra"):
        assert (await _endpoint(api, region=region))["region"] == region


async def test_segment_sizes_and_ages_outside_their_ranges_are_rejected(api: Api) -> None:
    low, high = SETTINGS.segment_bytes_min, SETTINGS.segment_bytes_max
    assert (low, high) == (1024, 1024**3)
    for value in (low - 1, high + 1, 0, -1, "4096", 4096.5, True, None):
        body = {"region": "iad", "segment_bytes": value}
        assert await _problems(api, "POST", "/v1/endpoints", body) == {"body.segment_bytes"}, value
    for value in (0, 901, -5, "60", 1.5, False, None):
        body = {"region": "iad", "segment_max_age_seconds": value}
        assert await _problems(api, "POST", "/v1/endpoints", body) == {
            "body.segment_max_age_seconds"
        }, value
    edges = await _endpoint(api, segment_bytes=low, segment_max_age_seconds=1)
    assert (edges["segment_bytes"], edges["segment_max_age_seconds"]) == (low, 1)
    edges = await _endpoint(api, segment_bytes=high, segment_max_age_seconds=900)
    assert (edges["segment_bytes"], edges["segment_max_age_seconds"]) == (high, 900)


async def test_output_formats_must_be_a_non_empty_list_of_distinct_known_formats(
    api: Api,
) -> None:
    for formats in (
        [],
        ["csv"],
        ["parquet", "parquet"],
        ["segments", "Parquet"],
        "parquet",
        [1],
        None,
        {"parquet": True},
    ):
        body = {"region": "iad", "output_formats": formats}
        assert await _problems(api, "POST", "/v1/endpoints", body) == {"body.output_formats"}, (
            formats
        )
    every = ["segments", "parquet", "parquet_views"]
    assert (await _endpoint(api, output_formats=every))["output_formats"] == every
    assert (await _endpoint(api, output_formats=["parquet_views"]))["output_formats"] == [
        "parquet_views"
    ]


async def test_mqtt_config_fields_are_validated_and_named_in_problems(api: Api) -> None:
    cases: list[tuple[Any, str]] = [
        ("on", "body.mqtt_config"),
        ([MQTT], "body.mqtt_config"),
        ({**MQTT, "enabled": "yes"}, "body.mqtt_config.enabled"),
        ({**MQTT, "qos_max": 3}, "body.mqtt_config.qos_max"),
        ({**MQTT, "qos_max": -1}, "body.mqtt_config.qos_max"),
        ({**MQTT, "max_connections": 0}, "body.mqtt_config.max_connections"),
        ({**MQTT, "max_connections": "5000"}, "body.mqtt_config.max_connections"),
        ({**MQTT, "keepalive_max_s": 0}, "body.mqtt_config.keepalive_max_s"),
        ({**MQTT, "keepalive_max_s": True}, "body.mqtt_config.keepalive_max_s"),
        ({**MQTT, "retain": True}, "body.mqtt_config.retain"),
    ]
    for config, path in cases:
        body = {"region": "iad", "mqtt_config": config}
        assert await _problems(api, "POST", "/v1/endpoints", body) == {path}, config
    for qos in (0, 1, 2):
        created = await _endpoint(api, mqtt_config={**MQTT, "qos_max": qos})
        assert created["mqtt_config"] == {**MQTT, "qos_max": qos}


async def test_every_problem_of_a_body_is_reported_at_once(api: Api) -> None:
    paths = await _problems(
        api,
        "POST",
        "/v1/endpoints",
        {
            "region": "IAD",
            "segment_bytes": 1,
            "output_formats": ["csv"],
            "mqtt_config": {"qos_max": 9},
            "destination_id": str(uuid.uuid4()),
            "colour": "blue",
        },
    )
    assert paths == {
        "body.region",
        "body.segment_bytes",
        "body.output_formats",
        "body.mqtt_config.qos_max",
        "body.destination_id",
        "body.colour",
    }
    status, listing = await api.call("GET", "/v1/endpoints")
    assert (status, listing["total"]) == (200, 0)  # nothing was created


async def test_an_unknown_or_another_accounts_destination_cannot_be_bound(api: Api) -> None:
    other_key = await api.new_account("globex")
    theirs = await _destination(api, "Their S3", key=other_key)
    mine = await _endpoint(api)

    for destination_id in (theirs["id"], str(uuid.uuid4()), "not-a-uuid", "a\x00b", 7, None):
        body = {"region": "iad", "destination_id": destination_id}
        assert await _problems(api, "POST", "/v1/endpoints", body) == {"body.destination_id"}
        if destination_id is None:
            continue  # on PATCH, null unbinds (tested below)
        assert await _problems(
            api, "PATCH", f"/v1/endpoints/{mine['id']}", {"destination_id": destination_id}
        ) == {"body.destination_id"}
    status, theirs_after = await api.call("GET", f"/v1/destinations/{theirs['id']}", key=other_key)
    assert (status, theirs_after["ref_count"]) == (200, 0)


# --------------------------------------------------------------------- list
async def test_the_list_pages_with_limit_offset_total_and_next_offset(api: Api) -> None:
    created = [(await _endpoint(api))["id"] for _ in range(5)]

    status, default = await api.call("GET", "/v1/endpoints")
    assert status == 200
    assert (default["limit"], default["offset"], default["total"]) == (50, 0, 5)
    assert default["next_offset"] is None
    assert sorted(i["id"] for i in default["items"]) == sorted(created)

    seen: list[str] = []
    offset: int | None = 0
    pages = []
    while offset is not None:
        status, page = await api.call("GET", "/v1/endpoints", params={"limit": 2, "offset": offset})
        assert status == 200
        assert (page["limit"], page["offset"], page["total"]) == (2, offset, 5)
        pages.append((offset, len(page["items"]), page["next_offset"]))
        seen += [i["id"] for i in page["items"]]
        offset = page["next_offset"]
    assert pages == [(0, 2, 2), (2, 2, 4), (4, 1, None)]
    assert seen == [i["id"] for i in default["items"]]

    status, beyond = await api.call("GET", "/v1/endpoints", params={"offset": 9})
    assert (status, beyond["items"], beyond["total"], beyond["next_offset"]) == (200, [], 5, None)
    status, widest = await api.call("GET", "/v1/endpoints", params={"limit": 200})
    assert (status, widest["limit"], len(widest["items"])) == (200, 200, 5)


async def test_list_limits_outside_1_to_200_and_negative_offsets_are_rejected(api: Api) -> None:
    for params, path in (
        ({"limit": 0}, "query.limit"),
        ({"limit": 201}, "query.limit"),
        ({"limit": -1}, "query.limit"),
        ({"limit": "ten"}, "query.limit"),
        ({"limit": "1.5"}, "query.limit"),
        ({"offset": -1}, "query.offset"),
        ({"offset": "x"}, "query.offset"),
        ({"status": "broken"}, "query.status"),
    ):
        status, body = await api.call("GET", "/v1/endpoints", params=params)
        assert status == 422, params
        assert [p["path"] for p in body["error"]["problems"]] == [path], params


async def test_the_status_filter_uses_the_status_computed_from_nodes_and_destinations(
    api: Api,
) -> None:
    broken = await _destination(api)
    await api.ctx.db.execute(
        "UPDATE destinations SET status = 'invalid', last_error = 'AccessDenied' WHERE id = ?",
        (broken["id"],),
    )
    deploying = [(await _endpoint(api, region="iad"))["id"] for _ in range(2)]
    degraded = (await _endpoint(api, region="iad", destination_id=broken["id"]))["id"]
    served = await _endpoint(api, region="lhr")
    await _healthy_node(api, "lhr", ["203.0.113.7"], ["2001:db8::7"])

    status, active = await api.call("GET", "/v1/endpoints", params={"status": "active"})
    assert status == 200
    assert [i["id"] for i in active["items"]] == [served["id"]]
    assert active["items"][0]["dns_ipv4"] == ["203.0.113.7"]
    assert active["items"][0]["dns_ipv6"] == ["2001:db8::7"]
    status, found = await api.call("GET", "/v1/endpoints", params={"status": "degraded"})
    assert [i["id"] for i in found["items"]] == [degraded]
    assert found["items"][0]["destination_status"] == "invalid"
    status, found = await api.call("GET", "/v1/endpoints", params={"status": "deploying"})
    assert sorted(i["id"] for i in found["items"]) == sorted(deploying)
    assert all(i["dns_ipv4"] == [] and i["dns_ipv6"] == [] for i in found["items"])

    # Filtered results paginate over the filtered set.
    status, page = await api.call(
        "GET", "/v1/endpoints", params={"status": "deploying", "limit": 1}
    )
    assert (page["total"], len(page["items"]), page["next_offset"]) == (2, 1, 1)
    status, page = await api.call(
        "GET", "/v1/endpoints", params={"status": "deploying", "limit": 1, "offset": 1}
    )
    assert (page["total"], len(page["items"]), page["next_offset"]) == (2, 1, None)

    # A change bumps the endpoint's epoch: deploying again until a node applies it.
    status, patched = await api.call(
        "PATCH", f"/v1/endpoints/{served['id']}", json={"segment_max_age_seconds": 30}
    )
    assert (status, patched["status"], patched["dns_ipv4"]) == (200, "deploying", [])


# ---------------------------------------------------------------- get/patch
async def test_get_returns_the_endpoint_and_unknown_or_malformed_ids_answer_404(
    api: Api,
) -> None:
    created = await _endpoint(api, mqtt_config=MQTT)

    status, body = await api.call("GET", f"/v1/endpoints/{created['id']}")
    assert (status, body) == (200, created)
    status, upper = await api.call("GET", f"/v1/endpoints/{created['id'].upper()}")
    assert (status, upper["id"]) == (200, created["id"])
    for missing in (str(uuid.uuid4()), "not-a-uuid", "1"):
        status, body = await api.call("GET", f"/v1/endpoints/{missing}")
        assert status == 404, missing
        assert body["error"]["code"] == "not_found"


async def test_patch_changes_exactly_the_fields_it_names(api: Api) -> None:
    destination = await _destination(api)
    created = await _endpoint(api, destination_id=destination["id"])
    epoch = await api.ctx.config_epoch()

    status, body = await api.call(
        "PATCH",
        f"/v1/endpoints/{created['id']}",
        json={
            "segment_bytes": 16777216,
            "output_formats": ["segments", "parquet", "parquet_views"],
            "mqtt_config": {**MQTT, "qos_max": 1},
        },
    )
    assert status == 200
    assert body["segment_bytes"] == 16777216
    assert body["output_formats"] == ["segments", "parquet", "parquet_views"]
    assert body["mqtt_config"] == {**MQTT, "qos_max": 1}
    untouched = ("id", "region", "created_at", "segment_max_age_seconds", "destination_id")
    assert {k: body[k] for k in untouched} == {k: created[k] for k in untouched}
    assert await api.ctx.config_epoch() > epoch  # nodes must see the change
    status, fetched = await api.call("GET", f"/v1/endpoints/{created['id']}")
    assert fetched == body

    status, same = await api.call("PATCH", f"/v1/endpoints/{created['id']}", json={})
    assert (status, same) == (200, body)


async def test_patch_rejects_bad_fields_and_the_immutable_region_without_changing_anything(
    api: Api,
) -> None:
    created = await _endpoint(api)
    path = f"/v1/endpoints/{created['id']}"

    assert await _problems(
        api, "PATCH", path, {"segment_bytes": 10, "output_formats": ["parquet"]}
    ) == {"body.segment_bytes"}
    assert await _problems(api, "PATCH", path, {"region": "lhr"}) == {"body.region"}
    assert await _problems(api, "PATCH", path, {"mqtt_config": {"qos_max": 5}}) == {
        "body.mqtt_config.qos_max"
    }
    assert await _problems(api, "PATCH", path, ["segment_bytes"]) == {"body"}
    status, after = await api.call("GET", path)
    assert (status, after) == (200, created)


async def test_patch_with_null_mqtt_config_disables_mqtt(api: Api) -> None:
    created = await _endpoint(api, mqtt_config=MQTT)

    status, body = await api.call(
        "PATCH", f"/v1/endpoints/{created['id']}", json={"mqtt_config": None}
    )
    assert (status, body["mqtt_config"]) == (200, None)
    status, body = await api.call("GET", f"/v1/endpoints/{created['id']}")
    assert body["mqtt_config"] is None
    status, body = await api.call(
        "PATCH", f"/v1/endpoints/{created['id']}", json={"mqtt_config": MQTT}
    )
    assert (status, body["mqtt_config"]) == (200, MQTT)


async def test_patch_binds_and_with_null_destination_id_unbinds_the_destination(
    api: Api,
) -> None:
    destination = await _destination(api)
    created = await _endpoint(api)
    path = f"/v1/endpoints/{created['id']}"

    status, body = await api.call("PATCH", path, json={"destination_id": destination["id"]})
    assert status == 200
    assert (body["destination_id"], body["destination_name"], body["destination_status"]) == (
        destination["id"],
        "Production S3",
        "pending",
    )
    status, body = await api.call("PATCH", path, json={"destination_id": None})
    assert status == 200
    assert (body["destination_id"], body["destination_name"], body["destination_status"]) == (
        None,
        None,
        None,
    )
    status, dest = await api.call("GET", f"/v1/destinations/{destination['id']}")
    assert dest["ref_count"] == 0


# ------------------------------------------------------------------- delete
async def test_a_deleted_endpoint_answers_404_and_leaves_the_list(api: Api) -> None:
    destination = await _destination(api)
    doomed = await _endpoint(api, destination_id=destination["id"])
    kept = await _endpoint(api)
    epoch = await api.ctx.config_epoch()

    resp = await api.client.delete(f"/v1/endpoints/{doomed['id']}", headers=await api.headers())
    assert resp.status == 204
    assert await resp.read() == b""
    assert await api.ctx.config_epoch() > epoch

    for method, body in (
        ("GET", None),
        ("PATCH", {"segment_max_age_seconds": 5}),
        ("DELETE", None),
    ):
        status, answer = await api.call(method, f"/v1/endpoints/{doomed['id']}", json=body)
        assert status == 404, method
        assert answer["error"]["code"] == "not_found"
    status, listing = await api.call("GET", "/v1/endpoints")
    assert [i["id"] for i in listing["items"]] == [kept["id"]]
    assert listing["total"] == 1
    status, dest = await api.call("GET", f"/v1/destinations/{destination['id']}")
    assert dest["ref_count"] == 0
