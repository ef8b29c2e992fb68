"""View-to-endpoint bindings over the API (api-reference.txt "Bindings"): attach only
published views, list active and detached bindings, soft-detach with an epoch bump."""

from __future__ import annotations

from tests.integration.control.conftest import Api
from tests.integration.control.test_views import (
    ISO_MS,
    attach,
    create_endpoint,
    create_view,
    problem_paths,
    publish,
    published_view,
)

BINDING_FIELDS = {
    "id",
    "endpoint_id",
    "view_id",
    "view_name",
    "view_version",
    "is_required",
    "activated_at",
    "activated_by",
    "deactivated_at",
    "canary_start_ts",
    "status",
}


async def bindings_of(api: Api, endpoint_id: str) -> list[dict[str, object]]:
    status, body = await api.call("GET", f"/v1/endpoints/{endpoint_id}/views")
    assert status == 200, body
    assert set(body) == {"items"}
    return list(body["items"])


async def test_attaching_a_published_view_returns_the_reference_binding(api: Api) -> None:
    view = await published_view(api)
    endpoint = await create_endpoint(api)

    status, body = await api.call(
        "POST", f"/v1/endpoints/{endpoint['id']}/views", json={"view_id": view["id"]}
    )

    assert status == 201, body
    assert set(body) == BINDING_FIELDS
    assert body["endpoint_id"] == endpoint["id"]
    assert body["view_id"] == view["id"]
    assert (body["view_name"], body["view_version"]) == ("user_events", 1)
    assert body["is_required"] is False
    assert ISO_MS.match(body["activated_at"])
    assert body["activated_by"] == "admin@example.com"
    assert body["deactivated_at"] is None
    assert body["canary_start_ts"] is None
    assert body["status"] == "active"
    assert await bindings_of(api, endpoint["id"]) == [body]


async def test_is_required_and_canary_start_ts_round_trip(api: Api) -> None:
    view = await published_view(api)
    first = await create_endpoint(api)
    second = await create_endpoint(api)

    required = await attach(
        api, first["id"], view["id"], is_required=True, canary_start_ts="2026-02-01T12:00:00Z"
    )
    shifted = await attach(
        api, second["id"], view["id"], canary_start_ts="2026-02-01T14:30:00.250+02:00"
    )

    assert required["is_required"] is True
    assert required["canary_start_ts"] == "2026-02-01T12:00:00.000Z"
    assert shifted["is_required"] is False
    assert shifted["canary_start_ts"] == "2026-02-01T12:30:00.250Z"
    assert await bindings_of(api, first["id"]) == [required]
    assert await bindings_of(api, second["id"]) == [shifted]


async def test_an_attach_request_with_bad_fields_is_rejected_with_their_paths(api: Api) -> None:
    view = await published_view(api)
    endpoint = await create_endpoint(api)
    path = f"/v1/endpoints/{endpoint['id']}/views"

    for payload, expected in (
        ({}, ["body.view_id"]),
        ({"view_id": "nope"}, ["body.view_id"]),
        ({"view_id": view["id"], "is_required": "yes"}, ["body.is_required"]),
        ({"view_id": view["id"], "canary_start_ts": "yesterday"}, ["body.canary_start_ts"]),
        # A date-time without a zone is ambiguous.
        (
            {"view_id": view["id"], "canary_start_ts": "2026-02-01T12:00:00"},
            ["body.canary_start_ts"],
        ),
        ({"view_id": view["id"], "mode": "fast"}, ["body.mode"]),
    ):
        status, body = await api.call("POST", path, json=payload)
        assert status == 422, (payload, body)
        assert problem_paths(body) == expected, payload
    assert await bindings_of(api, endpoint["id"]) == []


async def test_only_published_views_can_be_attached(api: Api) -> None:
    draft = await create_view(api, "drafted")
    archived = await published_view(api, "archived")
    status, _ = await api.call("POST", f"/v1/views/{archived['id']}/archive")
    assert status == 200
    endpoint = await create_endpoint(api)
    epoch = await api.ctx.config_epoch()

    for view in (draft, archived):
        status, body = await api.call(
            "POST", f"/v1/endpoints/{endpoint['id']}/views", json={"view_id": view["id"]}
        )
        assert status == 422, body
        assert problem_paths(body) == ["body.view_id"]
    assert await bindings_of(api, endpoint["id"]) == []
    assert await api.ctx.config_epoch() == epoch
    # Once published, the draft attaches.
    await publish(api, draft["id"])
    assert (await attach(api, endpoint["id"], draft["id"]))["status"] == "active"


async def test_unknown_or_foreign_views_and_endpoints_are_not_found(api: Api) -> None:
    view = await published_view(api)
    endpoint = await create_endpoint(api)
    other = await api.new_account()
    status, foreign_view = await api.call(
        "POST",
        "/v1/views",
        key=other,
        json={
            "name": "theirs",
            "definition": {"columns": [{"name": "a", "type": "INTEGER", "path": "$.a"}]},
        },
    )
    assert status == 201
    status, _ = await api.call("POST", f"/v1/views/{foreign_view['id']}/publish", key=other)
    assert status == 200
    missing = "00000000-0000-4000-8000-000000000000"

    for endpoint_id, view_id, key in (
        (endpoint["id"], missing, None),
        (endpoint["id"], foreign_view["id"], None),
        (missing, view["id"], None),
        ("not-a-uuid", view["id"], None),
        (endpoint["id"], view["id"], other),
    ):
        status, body = await api.call(
            "POST", f"/v1/endpoints/{endpoint_id}/views", key=key, json={"view_id": view_id}
        )
        assert status == 404, (endpoint_id, view_id, body)
    status, body = await api.call("GET", f"/v1/endpoints/{endpoint['id']}/views", key=other)
    assert status == 404, body
    status, body = await api.call("GET", f"/v1/endpoints/{missing}/views")
    assert status == 404, body
    assert await bindings_of(api, endpoint["id"]) == []


async def test_attaching_a_view_that_is_already_attached_is_a_conflict(api: Api) -> None:
    view = await published_view(api)
    endpoint = await create_endpoint(api)
    binding = await attach(api, endpoint["id"], view["id"])
    epoch = await api.ctx.config_epoch()

    status, body = await api.call(
        "POST",
        f"/v1/endpoints/{endpoint['id']}/views",
        json={"view_id": view["id"], "is_required": True},
    )

    assert status == 409, body
    assert body["error"]["code"] == "conflict"
    assert await bindings_of(api, endpoint["id"]) == [binding]
    assert await api.ctx.config_epoch() == epoch


async def test_attaching_bumps_the_config_epoch_and_the_endpoints_epoch(api: Api) -> None:
    view = await published_view(api)
    endpoint = await create_endpoint(api)
    before = await api.ctx.config_epoch()

    await attach(api, endpoint["id"], view["id"])

    after = await api.ctx.config_epoch()
    assert after > before
    row = await api.ctx.db.fetchone(
        "SELECT config_epoch FROM endpoints WHERE id = ?", (endpoint["id"],)
    )
    assert row is not None
    assert int(row["config_epoch"]) == after


async def test_detaching_soft_deletes_the_binding_and_bumps_the_epoch(api: Api) -> None:
    view = await published_view(api)
    kept_view = await published_view(api, "kept")
    endpoint = await create_endpoint(api)
    binding = await attach(api, endpoint["id"], view["id"])
    kept = await attach(api, endpoint["id"], kept_view["id"])
    epoch = await api.ctx.config_epoch()

    status, body = await api.call("DELETE", f"/v1/endpoints/{endpoint['id']}/views/{binding['id']}")

    assert status == 204, body
    assert body == b""
    assert await api.ctx.config_epoch() > epoch
    items = {b["id"]: b for b in await bindings_of(api, endpoint["id"])}
    assert set(items) == {binding["id"], kept["id"]}
    detached = items[binding["id"]]
    assert detached["status"] == "inactive"
    assert isinstance(detached["deactivated_at"], str)
    assert ISO_MS.match(detached["deactivated_at"])
    assert detached["deactivated_at"] >= binding["activated_at"]
    assert {k: v for k, v in detached.items() if k not in ("status", "deactivated_at")} == {
        k: v for k, v in binding.items() if k not in ("status", "deactivated_at")
    }
    assert items[kept["id"]] == kept
    status, fetched = await api.call("GET", f"/v1/views/{view['id']}")
    assert fetched["status"] == "published"  # the view itself is not affected
    assert fetched["endpoints"] == []


async def test_detaching_twice_keeps_the_first_deactivation(api: Api) -> None:
    view = await published_view(api)
    endpoint = await create_endpoint(api)
    binding = await attach(api, endpoint["id"], view["id"])
    path = f"/v1/endpoints/{endpoint['id']}/views/{binding['id']}"
    status, _ = await api.call("DELETE", path)
    assert status == 204
    first = await bindings_of(api, endpoint["id"])
    epoch = await api.ctx.config_epoch()

    status, _ = await api.call("DELETE", path)

    assert status == 204
    assert await bindings_of(api, endpoint["id"]) == first
    assert await api.ctx.config_epoch() == epoch


async def test_detaching_an_unknown_or_foreign_binding_is_not_found(api: Api) -> None:
    view = await published_view(api)
    endpoint = await create_endpoint(api)
    elsewhere = await create_endpoint(api, "lhr")
    binding = await attach(api, endpoint["id"], view["id"])
    other = await api.new_account()

    for endpoint_id, binding_id, key in (
        (endpoint["id"], "00000000-0000-4000-8000-000000000000", None),
        (endpoint["id"], "not-a-uuid", None),
        (elsewhere["id"], binding["id"], None),
        (endpoint["id"], binding["id"], other),
    ):
        status, body = await api.call(
            "DELETE", f"/v1/endpoints/{endpoint_id}/views/{binding_id}", key=key
        )
        assert status == 404, (endpoint_id, binding_id, body)
    assert [b["status"] for b in await bindings_of(api, endpoint["id"])] == ["active"]


async def test_a_view_can_be_attached_again_after_it_was_detached(api: Api) -> None:
    view = await published_view(api)
    endpoint = await create_endpoint(api)
    old = await attach(api, endpoint["id"], view["id"])
    status, _ = await api.call("DELETE", f"/v1/endpoints/{endpoint['id']}/views/{old['id']}")
    assert status == 204

    new = await attach(api, endpoint["id"], view["id"], is_required=True)

    assert new["id"] != old["id"]
    assert (new["status"], new["deactivated_at"], new["is_required"]) == ("active", None, True)
    items = await bindings_of(api, endpoint["id"])
    assert [(b["id"], b["status"]) for b in items] == [
        (old["id"], "inactive"),
        (new["id"], "active"),
    ]
    status, fetched = await api.call("GET", f"/v1/views/{view['id']}")
    assert [e["binding_id"] for e in fetched["endpoints"]] == [new["id"]]
    status, listed = await api.call("GET", "/v1/views")
    assert listed["items"][0]["usage_count"] == 1


async def test_two_versions_of_a_view_can_be_attached_side_by_side(api: Api) -> None:
    v1 = await published_view(api)
    status, v2 = await api.call("POST", f"/v1/views/{v1['id']}/versions", json={})
    assert status == 201
    await publish(api, v2["id"])
    endpoint = await create_endpoint(api)

    b1 = await attach(api, endpoint["id"], v1["id"])
    b2 = await attach(api, endpoint["id"], v2["id"])

    assert (b1["view_version"], b2["view_version"]) == (1, 2)
    assert {b["view_id"] for b in await bindings_of(api, endpoint["id"])} == {v1["id"], v2["id"]}


async def test_a_metrics_token_lists_bindings_but_cannot_attach_or_detach(api: Api) -> None:
    view = await published_view(api)
    endpoint = await create_endpoint(api)
    binding = await attach(api, endpoint["id"], view["id"])

    status, body = await api.call("GET", f"/v1/endpoints/{endpoint['id']}/views", scope="metrics")
    assert status == 200
    assert body["items"] == [binding]
    status, _ = await api.call(
        "POST",
        f"/v1/endpoints/{endpoint['id']}/views",
        scope="metrics",
        json={"view_id": view["id"]},
    )
    assert status == 403
    status, _ = await api.call(
        "DELETE", f"/v1/endpoints/{endpoint['id']}/views/{binding['id']}", scope="metrics"
    )
    assert status == 403
    assert await bindings_of(api, endpoint["id"]) == [binding]


async def test_deleting_the_endpoint_deactivates_its_bindings(api: Api) -> None:
    view = await published_view(api)
    endpoint = await create_endpoint(api)
    await attach(api, endpoint["id"], view["id"])

    status, _ = await api.call("DELETE", f"/v1/endpoints/{endpoint['id']}")

    assert status == 204
    status, fetched = await api.call("GET", f"/v1/views/{view['id']}")
    assert fetched["endpoints"] == []
    status, listed = await api.call("GET", "/v1/views")
    assert listed["items"][0]["usage_count"] == 0
