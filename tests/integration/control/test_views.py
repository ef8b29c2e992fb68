"""Views over the API (api-reference.txt "Views"; DESIGN.md §7): create, list, get,
patch, delete, publish, archive, versions and preview, on SQLite and PostgreSQL.

The small helpers at the top are shared with test_bindings, test_nodes and
test_observability."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from tests.integration.control.conftest import Api

ISO_MS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "reference"

# The reference's POST /v1/views request body.
REFERENCE_VIEW: dict[str, Any] = {
    "name": "user_events",
    "description": "Extract user event fields for analytics pipeline",
    "definition": {
        "columns": [
            {"name": "user_id", "type": "VARCHAR", "path": "$.userId", "required": True},
            {"name": "event_type", "type": "VARCHAR", "path": "$.event"},
            {"name": "timestamp", "type": "TIMESTAMP", "path": "$.ts"},
            {
                "name": "amount",
                "type": "DOUBLE",
                "path": "$.payload.amount",
                "cast_failures": "dlq",
            },
        ],
        "filters": [
            {"condition": "event_type != 'heartbeat'", "description": "Exclude keepalive events"}
        ],
    },
    "format": "yaml",
    "tags": ["analytics", "user-events"],
}
VIEW_FIELDS = {
    "id",
    "name",
    "version",
    "definition",
    "format",
    "status",
    "description",
    "tags",
    "created_by",
    "created_at",
    "published_at",
}
SMALL_DEFINITION: dict[str, Any] = {
    "columns": [{"name": "user_id", "type": "VARCHAR", "path": "$.userId"}]
}


def view_body(name: str = "user_events", **fields: Any) -> dict[str, Any]:
    body = copy.deepcopy(REFERENCE_VIEW)
    body["name"] = name
    body.update(fields)
    return body


async def create_view(api: Api, name: str = "user_events", **fields: Any) -> dict[str, Any]:
    status, body = await api.call("POST", "/v1/views", json=view_body(name, **fields))
    assert status == 201, body
    return dict(body)


async def publish(api: Api, view_id: str) -> dict[str, Any]:
    status, body = await api.call("POST", f"/v1/views/{view_id}/publish")
    assert status == 200, body
    return dict(body)


async def published_view(api: Api, name: str = "user_events", **fields: Any) -> dict[str, Any]:
    return await publish(api, (await create_view(api, name, **fields))["id"])


async def create_endpoint(api: Api, region: str = "iad", **fields: Any) -> dict[str, Any]:
    status, body = await api.call("POST", "/v1/endpoints", json={"region": region, **fields})
    assert status == 201, body
    return dict(body)


async def attach(api: Api, endpoint_id: str, view_id: str, **fields: Any) -> dict[str, Any]:
    status, body = await api.call(
        "POST", f"/v1/endpoints/{endpoint_id}/views", json={"view_id": view_id, **fields}
    )
    assert status == 201, body
    return dict(body)


def problem_paths(body: Any) -> list[str]:
    assert body["error"]["status"] == 422, body
    assert body["error"]["code"] == "validation_failed", body
    return [p["path"] for p in body["error"]["problems"]]


async def list_names(api: Api, **params: Any) -> list[tuple[str, int]]:
    status, body = await api.call("GET", "/v1/views", params=params or None)
    assert status == 200, body
    return [(item["name"], item["version"]) for item in body["items"]]


# ------------------------------------------------------------------ create
async def test_creating_the_reference_view_returns_a_draft_version_one_owned_by_the_key_owner(
    api: Api,
) -> None:
    status, body = await api.call("POST", "/v1/views", json=REFERENCE_VIEW)

    assert status == 201, body
    assert set(body) == VIEW_FIELDS
    assert body["name"] == "user_events"
    assert body["version"] == 1
    assert body["status"] == "draft"
    assert body["definition"] == REFERENCE_VIEW["definition"]
    assert body["format"] == "yaml"
    assert body["description"] == "Extract user event fields for analytics pipeline"
    assert body["tags"] == ["analytics", "user-events"]
    assert body["created_by"] == "admin@example.com"
    assert ISO_MS.match(body["created_at"])
    assert body["published_at"] is None
    status, fetched = await api.call("GET", f"/v1/views/{body['id']}")
    assert status == 200
    assert {k: fetched[k] for k in VIEW_FIELDS} == body


async def test_a_minimal_view_defaults_to_yaml_no_tags_and_the_key_name_as_creator(
    api: Api,
) -> None:
    key = await api.key_with("admin")  # a key without an owner e-mail, named "scoped"

    status, body = await api.call(
        "POST", "/v1/views", key=key, json={"name": "bare", "definition": SMALL_DEFINITION}
    )

    assert status == 201, body
    assert body["format"] == "yaml"
    assert body["tags"] == []
    assert body["description"] is None
    assert body["created_by"] == "scoped"


async def test_a_second_view_with_an_existing_name_is_a_conflict_in_that_account_only(
    api: Api,
) -> None:
    await create_view(api)

    status, body = await api.call("POST", "/v1/views", json=view_body(description="again"))

    assert status == 409, body
    assert body["error"]["code"] == "conflict"
    assert await list_names(api, status="draft") == [("user_events", 1)]
    # Names are unique per account only.
    other = await api.new_account()
    status, body = await api.call("POST", "/v1/views", key=other, json=view_body())
    assert status == 201, body
    assert body["created_by"] == "ops@other.example"


async def test_a_bad_column_type_is_rejected_with_the_field_path(api: Api) -> None:
    definition = copy.deepcopy(REFERENCE_VIEW["definition"])
    definition["columns"][0]["type"] = "NOT_A_TYPE"
    definition["columns"][2]["name"] = "Bad-Name"

    status, body = await api.call("POST", "/v1/views", json=view_body(definition=definition))

    assert status == 422, body
    paths = problem_paths(body)
    assert "body.definition.columns[0].type" in paths
    assert "body.definition.columns[2].name" in paths
    assert await list_names(api, status="draft") == []


async def test_every_problem_of_a_create_request_is_reported_at_once(api: Api) -> None:
    status, body = await api.call(
        "POST",
        "/v1/views",
        json={"name": "9starts_with_digit", "format": "toml", "tags": "x", "extra": 1},
    )

    assert status == 422, body
    assert set(problem_paths(body)) >= {
        "body.name",
        "body.format",
        "body.tags",
        "body.definition",
        "body.extra",
    }


async def test_hostile_filter_conditions_are_rejected_naming_the_condition(api: Api) -> None:
    hostile = [
        "event_type = 'x'; DROP TABLE views",
        "read_csv('/etc/passwd') IS NOT NULL",
        "getenv('HOME') = 'x'",
        "event_type IN (SELECT name FROM duckdb_settings())",
        "event_type = 'a' -- comment",
        "event_type::INTEGER = 1",
        "\"event_type\" = 'x'",
        "event_type = 1",
    ]
    for condition in hostile:
        definition = copy.deepcopy(REFERENCE_VIEW["definition"])
        definition["filters"] = [{"condition": "user_id IS NOT NULL"}, {"condition": condition}]

        status, body = await api.call("POST", "/v1/views", json=view_body(definition=definition))

        assert status == 422, (condition, body)
        assert problem_paths(body) == ["body.definition.filters[1].condition"], condition
    assert await list_names(api, status="draft") == []


async def test_a_definition_given_as_text_is_parsed_in_its_format_and_stored_as_an_object(
    api: Api,
) -> None:
    text = (
        "columns:\n"
        "  - name: user_id\n"
        "    type: VARCHAR\n"
        "    path: $.userId\n"
        "    required: true\n"
        "filters:\n"
        "  - condition: \"user_id != 'bot'\"\n"
    )

    status, body = await api.call(
        "POST", "/v1/views", json={"name": "from_yaml", "definition": text, "format": "yaml"}
    )

    assert status == 201, body
    assert body["format"] == "yaml"
    assert body["definition"] == {
        "columns": [{"name": "user_id", "type": "VARCHAR", "path": "$.userId", "required": True}],
        "filters": [{"condition": "user_id != 'bot'"}],
    }
    status, body = await api.call(
        "POST",
        "/v1/views",
        json={"name": "from_json", "definition": json.dumps(SMALL_DEFINITION), "format": "json"},
    )
    assert status == 201, body
    assert (body["format"], body["definition"]) == ("json", SMALL_DEFINITION)
    for fmt, text in (("yaml", "columns: [unclosed"), ("json", "columns:\n  - name: x\n")):
        status, body = await api.call(
            "POST", "/v1/views", json={"name": "broken", "definition": text, "format": fmt}
        )
        assert status == 422, (fmt, body)
        assert problem_paths(body) == ["body.definition"]


# -------------------------------------------------------------------- list
async def test_the_list_shows_only_published_views_unless_a_status_is_given(api: Api) -> None:
    await create_view(api, "a_draft")
    published = await published_view(api, "b_published")
    archived = await published_view(api, "c_archived")
    status, _ = await api.call("POST", f"/v1/views/{archived['id']}/archive")
    assert status == 200

    status, body = await api.call("GET", "/v1/views")

    assert status == 200
    assert [i["id"] for i in body["items"]] == [published["id"]]
    assert body["total"] == 1
    assert body["limit"] == 50
    assert body["offset"] == 0
    assert body["next_offset"] is None
    assert set(body["items"][0]) == VIEW_FIELDS | {"usage_count"}
    assert body["items"][0]["published_at"] == published["published_at"]
    assert await list_names(api, status="draft") == [("a_draft", 1)]
    assert await list_names(api, status="published") == [("b_published", 1)]
    assert await list_names(api, status="archived") == [("c_archived", 1)]
    status, body = await api.call("GET", "/v1/views", params={"status": "deleted"})
    assert status == 422, body
    assert problem_paths(body) == ["query.status"]


async def test_the_list_filters_by_exact_name(api: Api) -> None:
    await published_view(api, "orders")
    await published_view(api, "orders_v2")
    await create_view(api, "orders_draft")

    assert await list_names(api, name="orders") == [("orders", 1)]
    assert await list_names(api, name="order") == []
    assert await list_names(api, name="orders_draft") == []
    assert await list_names(api, name="orders_draft", status="draft") == [("orders_draft", 1)]


async def test_a_repeated_tag_filter_requires_every_tag(api: Api) -> None:
    await published_view(api, "both", tags=["x", "y"])
    await published_view(api, "only_x", tags=["x"])
    await published_view(api, "y_and_z", tags=["y", "z"])

    status, body = await api.call("GET", "/v1/views", params=[("tag", "x"), ("tag", "y")])
    assert status == 200
    assert [i["name"] for i in body["items"]] == ["both"]
    assert body["total"] == 1
    assert await list_names(api, tag="x") == [("both", 1), ("only_x", 1)]
    assert await list_names(api, tag="y") == [("both", 1), ("y_and_z", 1)]
    assert await list_names(api, tag="nope") == []


async def test_the_list_paginates_with_limit_offset_and_next_offset(api: Api) -> None:
    for name in ("v_a", "v_b", "v_c"):
        await published_view(api, name)

    status, first = await api.call("GET", "/v1/views", params={"limit": 2})
    status2, second = await api.call("GET", "/v1/views", params={"limit": 2, "offset": 2})

    assert (status, status2) == (200, 200)
    assert [i["name"] for i in first["items"]] == ["v_a", "v_b"]
    assert (first["total"], first["next_offset"]) == (3, 2)
    assert [i["name"] for i in second["items"]] == ["v_c"]
    assert second["next_offset"] is None
    status, body = await api.call("GET", "/v1/views", params={"limit": 0})
    assert status == 422
    assert problem_paths(body) == ["query.limit"]


async def test_usage_count_counts_the_active_bindings_of_each_view(api: Api) -> None:
    used = await published_view(api, "used")
    await published_view(api, "unused")
    first = await create_endpoint(api)
    second = await create_endpoint(api, "lhr")
    binding = await attach(api, first["id"], used["id"])
    await attach(api, second["id"], used["id"])

    status, body = await api.call("GET", "/v1/views")
    assert status == 200
    assert {i["name"]: i["usage_count"] for i in body["items"]} == {"used": 2, "unused": 0}

    status, _ = await api.call("DELETE", f"/v1/endpoints/{first['id']}/views/{binding['id']}")
    assert status == 204
    status, body = await api.call("GET", "/v1/views", params={"name": "used"})
    assert body["items"][0]["usage_count"] == 1


# --------------------------------------------------------------------- get
async def test_get_returns_the_version_history_and_the_bound_endpoints(api: Api) -> None:
    v1 = await published_view(api)
    status, v2 = await api.call("POST", f"/v1/views/{v1['id']}/versions", json={})
    assert status == 201
    endpoint = await create_endpoint(api)
    binding = await attach(
        api, endpoint["id"], v1["id"], is_required=True, canary_start_ts="2026-03-01T00:00:00Z"
    )

    status, body = await api.call("GET", f"/v1/views/{v1['id']}")

    assert status == 200, body
    assert set(body) == VIEW_FIELDS | {"versions", "endpoints"}
    assert {k: body[k] for k in VIEW_FIELDS} == v1
    assert body["versions"] == [
        {
            "id": v1["id"],
            "version": 1,
            "status": "published",
            "published_at": v1["published_at"],
            "created_by": "admin@example.com",
        },
        {
            "id": v2["id"],
            "version": 2,
            "status": "draft",
            "published_at": None,
            "created_by": "admin@example.com",
        },
    ]
    assert body["endpoints"] == [
        {
            "id": endpoint["id"],
            "region": "iad",
            "binding_id": binding["id"],
            "is_required": True,
            "activated_at": binding["activated_at"],
            "canary_start_ts": "2026-03-01T00:00:00.000Z",
        }
    ]
    status, draft = await api.call("GET", f"/v1/views/{v2['id']}")
    assert status == 200
    assert draft["versions"] == body["versions"]
    assert draft["endpoints"] == []


async def test_unknown_malformed_and_other_accounts_view_ids_are_not_found(api: Api) -> None:
    for path in ("/v1/views/00000000-0000-4000-8000-000000000000", "/v1/views/not-a-uuid"):
        status, body = await api.call("GET", path)
        assert status == 404, body
        assert body["error"]["code"] == "not_found"
    view = await create_view(api)
    other = await api.new_account()

    for method, suffix, payload in (
        ("GET", "", None),
        ("PATCH", "", {"description": "mine now"}),
        ("DELETE", "", None),
        ("POST", "/publish", None),
        ("POST", "/versions", {}),
    ):
        status, body = await api.call(
            method, f"/v1/views/{view['id']}{suffix}", key=other, json=payload
        )
        assert status == 404, (method, suffix, body)
    status, body = await api.call("GET", f"/v1/views/{view['id']}")
    assert body["status"] == "draft"
    assert body["description"] == REFERENCE_VIEW["description"]


async def test_a_metrics_token_reads_views_but_cannot_change_them(api: Api) -> None:
    view = await published_view(api)

    status, _ = await api.call("GET", f"/v1/views/{view['id']}", scope="metrics")
    assert status == 200
    status, _ = await api.call("GET", "/v1/views", scope="metrics")
    assert status == 200
    status, body = await api.call("POST", "/v1/views", scope="metrics", json=view_body("x"))
    assert status == 403, body
    status, _ = await api.call("POST", f"/v1/views/{view['id']}/archive", scope="metrics")
    assert status == 403


# ------------------------------------------------------------------- patch
async def test_a_draft_can_be_patched_field_by_field(api: Api) -> None:
    view = await create_view(api)
    # The reference's PATCH example.
    change = {
        "description": "Updated description for user events view",
        "definition": {
            "columns": [
                {"name": "user_id", "type": "VARCHAR", "path": "$.userId", "required": True},
                {"name": "event_type", "type": "VARCHAR", "path": "$.event"},
                {"name": "timestamp", "type": "TIMESTAMP", "path": "$.ts"},
                {"name": "session_id", "type": "VARCHAR", "path": "$.sessionId"},
            ]
        },
        "tags": ["analytics", "user-events", "sessions"],
    }

    status, body = await api.call("PATCH", f"/v1/views/{view['id']}", json={"description": "d"})

    assert status == 200, body
    assert body == {**view, "description": "d"}
    status, body = await api.call("PATCH", f"/v1/views/{view['id']}", json=change)
    assert status == 200, body
    assert body["description"] == change["description"]
    assert body["definition"] == change["definition"]
    assert body["tags"] == change["tags"]
    assert (body["id"], body["version"], body["status"]) == (view["id"], 1, "draft")
    status, fetched = await api.call("GET", f"/v1/views/{view['id']}")
    assert fetched["definition"] == change["definition"]
    await publish(api, view["id"])
    assert await list_names(api, tag="sessions") == [("user_events", 1)]


async def test_a_patch_with_a_bad_definition_changes_nothing(api: Api) -> None:
    view = await create_view(api)

    status, body = await api.call(
        "PATCH",
        f"/v1/views/{view['id']}",
        json={"description": "new", "definition": {"columns": []}},
    )

    assert status == 422, body
    assert problem_paths(body) == ["body.definition.columns"]
    status, fetched = await api.call("GET", f"/v1/views/{view['id']}")
    assert fetched["description"] == view["description"]
    assert fetched["definition"] == view["definition"]


async def test_patching_a_published_or_archived_view_is_rejected(api: Api) -> None:
    view = await published_view(api)

    status, body = await api.call("PATCH", f"/v1/views/{view['id']}", json={"description": "x"})
    assert status == 422, body
    status, _ = await api.call("POST", f"/v1/views/{view['id']}/archive")
    assert status == 200
    status, body = await api.call("PATCH", f"/v1/views/{view['id']}", json={"tags": []})
    assert status == 422, body

    status, fetched = await api.call("GET", f"/v1/views/{view['id']}")
    assert fetched["description"] == view["description"]
    assert fetched["tags"] == view["tags"]


# ------------------------------------------------------------------ delete
async def test_deleting_a_draft_answers_204_and_it_is_gone(api: Api) -> None:
    view = await create_view(api, tags=["t"])

    status, body = await api.call("DELETE", f"/v1/views/{view['id']}")

    assert status == 204, body
    status, _ = await api.call("GET", f"/v1/views/{view['id']}")
    assert status == 404
    assert await list_names(api, status="draft") == []
    # The name is free again.
    await create_view(api)


async def test_deleting_a_published_or_archived_view_is_rejected(api: Api) -> None:
    view = await published_view(api)

    status, body = await api.call("DELETE", f"/v1/views/{view['id']}")
    assert status == 422, body
    status, _ = await api.call("POST", f"/v1/views/{view['id']}/archive")
    assert status == 200
    status, body = await api.call("DELETE", f"/v1/views/{view['id']}")
    assert status == 422, body

    status, fetched = await api.call("GET", f"/v1/views/{view['id']}")
    assert status == 200
    assert fetched["status"] == "archived"
    assert await list_names(api, status="archived", tag="analytics") == [("user_events", 1)]


# ----------------------------------------------------------------- publish
async def test_publishing_a_draft_makes_it_published_with_published_at(api: Api) -> None:
    view = await create_view(api)

    status, body = await api.call("POST", f"/v1/views/{view['id']}/publish")

    assert status == 200, body
    assert set(body) == VIEW_FIELDS
    assert body["status"] == "published"
    assert ISO_MS.match(body["published_at"])
    assert body["published_at"] >= view["created_at"]
    assert {k: v for k, v in body.items() if k not in ("status", "published_at")} == {
        k: v for k, v in view.items() if k not in ("status", "published_at")
    }
    status, fetched = await api.call("GET", f"/v1/views/{view['id']}")
    assert (fetched["status"], fetched["published_at"]) == ("published", body["published_at"])


async def test_publishing_twice_or_after_archiving_is_rejected(api: Api) -> None:
    view = await published_view(api)

    status, body = await api.call("POST", f"/v1/views/{view['id']}/publish")

    assert status == 422, body
    status, fetched = await api.call("GET", f"/v1/views/{view['id']}")
    assert fetched["published_at"] == view["published_at"]
    status, _ = await api.call("POST", f"/v1/views/{view['id']}/archive")
    assert status == 200
    status, body = await api.call("POST", f"/v1/views/{view['id']}/publish")
    assert status == 422, body
    status, fetched = await api.call("GET", f"/v1/views/{view['id']}")
    assert fetched["status"] == "archived"


# ----------------------------------------------------------------- archive
async def test_archiving_detaches_the_views_bindings(api: Api) -> None:
    view = await published_view(api)
    keep = await published_view(api, "kept")
    first = await create_endpoint(api)
    second = await create_endpoint(api, "fra")
    attached = [
        await attach(api, first["id"], view["id"]),
        await attach(api, second["id"], view["id"]),
    ]
    kept = await attach(api, first["id"], keep["id"])
    epoch = await api.ctx.config_epoch()

    status, body = await api.call("POST", f"/v1/views/{view['id']}/archive")

    assert status == 200, body
    assert set(body) == VIEW_FIELDS
    assert body["status"] == "archived"
    assert body["published_at"] == view["published_at"]
    assert await api.ctx.config_epoch() > epoch
    for endpoint, binding in zip((first, second), attached, strict=True):
        status, listed = await api.call("GET", f"/v1/endpoints/{endpoint['id']}/views")
        assert status == 200
        row = next(b for b in listed["items"] if b["id"] == binding["id"])
        assert row["status"] == "inactive"
        assert ISO_MS.match(row["deactivated_at"])
    status, listed = await api.call("GET", f"/v1/endpoints/{first['id']}/views")
    still = next(b for b in listed["items"] if b["id"] == kept["id"])
    assert (still["status"], still["deactivated_at"]) == ("active", None)
    status, fetched = await api.call("GET", f"/v1/views/{view['id']}")
    assert fetched["endpoints"] == []
    status, listed_views = await api.call("GET", "/v1/views", params={"status": "archived"})
    assert listed_views["items"][0]["usage_count"] == 0


async def test_archiving_a_draft_or_an_archived_view_is_rejected(api: Api) -> None:
    draft = await create_view(api)
    status, body = await api.call("POST", f"/v1/views/{draft['id']}/archive")
    assert status == 422, body
    status, fetched = await api.call("GET", f"/v1/views/{draft['id']}")
    assert fetched["status"] == "draft"

    await publish(api, draft["id"])
    status, _ = await api.call("POST", f"/v1/views/{draft['id']}/archive")
    assert status == 200
    status, body = await api.call("POST", f"/v1/views/{draft['id']}/archive")
    assert status == 422, body


# ---------------------------------------------------------------- versions
async def test_a_new_version_copies_the_latest_version_by_default(api: Api) -> None:
    v1 = await published_view(api)

    status, v2 = await api.call("POST", f"/v1/views/{v1['id']}/versions", json={})

    assert status == 201, v2
    assert set(v2) == VIEW_FIELDS
    assert v2["id"] != v1["id"]
    assert (v2["name"], v2["version"], v2["status"]) == ("user_events", 2, "draft")
    assert v2["published_at"] is None
    assert v2["definition"] == v1["definition"]
    assert (v2["format"], v2["tags"], v2["description"]) == (
        v1["format"],
        v1["tags"],
        v1["description"],
    )
    assert v2["created_by"] == "admin@example.com"
    # The latest version is now the draft v2: change it, then copy by default again.
    session = {"name": "session_id", "type": "VARCHAR", "path": "$.sessionId"}
    changed = {"columns": [*v1["definition"]["columns"], session]}
    status, _ = await api.call("PATCH", f"/v1/views/{v2['id']}", json={"definition": changed})
    assert status == 200

    status, v3 = await api.call("POST", f"/v1/views/{v1['id']}/versions")

    assert status == 201, v3
    assert v3["version"] == 3
    assert v3["definition"] == changed
    status, original = await api.call("GET", f"/v1/views/{v1['id']}")
    assert (original["status"], original["definition"]) == ("published", v1["definition"])


async def test_a_new_version_copies_an_explicit_version_with_a_new_description(
    api: Api,
) -> None:
    v1 = await published_view(api)
    status, v2 = await api.call("POST", f"/v1/views/{v1['id']}/versions", json={})
    assert status == 201
    status, _ = await api.call(
        "PATCH", f"/v1/views/{v2['id']}", json={"definition": SMALL_DEFINITION}
    )
    assert status == 200

    status, v3 = await api.call(
        "POST",
        f"/v1/views/{v2['id']}/versions",
        json={"copy_from_version": 1, "description": "Add session_id column for attribution"},
    )

    assert status == 201, v3
    assert v3["version"] == 3
    assert v3["definition"] == v1["definition"]
    assert v3["description"] == "Add session_id column for attribution"
    assert v3["status"] == "draft"
    assert len({v1["id"], v2["id"], v3["id"]}) == 3
    status, body = await api.call("GET", f"/v1/views/{v3['id']}")
    assert [v["version"] for v in body["versions"]] == [1, 2, 3]


async def test_copying_from_a_version_that_does_not_exist_is_rejected(api: Api) -> None:
    v1 = await published_view(api)

    for bad in (2, 0, "1", True):
        status, body = await api.call(
            "POST", f"/v1/views/{v1['id']}/versions", json={"copy_from_version": bad}
        )
        assert status == 422, (bad, body)
        assert problem_paths(body) == ["body.copy_from_version"]
    status, body = await api.call("GET", f"/v1/views/{v1['id']}")
    assert [v["version"] for v in body["versions"]] == [1]


# ----------------------------------------------------------------- preview
async def test_preview_returns_the_reference_response_and_saves_nothing(api: Api) -> None:
    request = json.loads((FIXTURES / "preview_request.json").read_text())
    expected = json.loads((FIXTURES / "preview_response.json").read_text())

    status, body = await api.call("POST", "/v1/views/preview", json=request)

    assert status == 200, body
    elapsed = body.pop("executionTimeMs")
    expected.pop("executionTimeMs")
    assert body == expected
    assert isinstance(elapsed, (int, float))
    assert elapsed >= 0
    status, body = await api.call("POST", "/v1/views/preview", scope="metrics", json=request)
    assert status == 200, body
    assert await list_names(api, status="draft") == []


async def test_preview_rejects_more_than_100_samples(api: Api) -> None:
    request = json.loads((FIXTURES / "preview_request.json").read_text())
    request["samples"] = [request["samples"][0]] * 101

    status, body = await api.call("POST", "/v1/views/preview", json=request)

    assert status == 422, body
    assert problem_paths(body) == ["body.samples"]
    request["samples"] = request["samples"][:100]
    status, body = await api.call("POST", "/v1/views/preview", json=request)
    assert status == 200, body
    assert body["rowCount"] == 100


async def test_preview_rejects_a_bad_definition_and_missing_samples(api: Api) -> None:
    status, body = await api.call(
        "POST",
        "/v1/views/preview",
        json={"definition": {"columns": [{"name": "x", "type": "VARCHAR", "path": "$[*]"}]}},
    )
    assert status == 422, body
    assert problem_paths(body) == ["body.samples"]

    status, body = await api.call(
        "POST",
        "/v1/views/preview",
        json={
            "definition": {"columns": [{"name": "x", "type": "VARCHAR", "path": "$[*]"}]},
            "samples": ["{}"],
        },
    )
    assert status == 422, body
    assert problem_paths(body) == ["body.definition.columns[0].path"]
