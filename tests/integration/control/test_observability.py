"""Commits, DLQ files and view metrics (api-reference.txt "Observability"), derived from
the commit reports nodes send over the node protocol (DESIGN.md §8)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from yarl import URL

from control.services.common import fmt_ts, now_ms
from tests.integration.control.conftest import Api
from tests.integration.control.test_nodes import node_call, node_key, register
from tests.integration.control.test_views import (
    ISO_MS,
    attach,
    create_endpoint,
    problem_paths,
    published_view,
)

COMMIT_FIELDS = {"id", "node_id", "seq", "wal_bytes", "duration_ms", "uploaded_at", "artifacts"}
DLQ_FILE_FIELDS = {
    "endpoint_id",
    "endpoint_name",
    "segment_seq",
    "s3_key",
    "s3_bucket",
    "region",
    "bytes",
    "rows",
    "created_at",
    "download_url",
}
DAY_MS = 24 * 3600 * 1000
ZERO = {"processed": 0, "accepted": 0, "dropped": 0, "dlq": 0}


class Node:
    """A registered node that reports commits."""

    def __init__(self, api: Api, key: str, node_id: str) -> None:
        self.api, self.key, self.id = api, key, node_id

    @classmethod
    async def start(cls, api: Api, name: str = "n1") -> Node:
        key = await node_key(api, name)
        return cls(api, key, await register(api, key))

    async def report(self, *commits: dict[str, Any]) -> dict[str, Any]:
        status, body = await node_call(
            self.api,
            self.key,
            "POST",
            f"/v1/nodes/{self.id}/commits",
            json={"commits": list(commits)},
        )
        assert status == 200, body
        return dict(body)


def commit(
    endpoint_id: str,
    seq: int,
    uploaded_at: str,
    *,
    epoch: int = 1,
    views: list[dict[str, Any]] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    return {
        "endpoint_id": endpoint_id,
        "epoch": epoch,
        "seq": seq,
        "wal_bytes": 1024 * seq,
        "frames": 10 * seq,
        "duration_ms": 100 + seq,
        "uploaded_at": uploaded_at,
        "manifest_key": f"events/prod/iad/{endpoint_id}/commits/n1/{epoch}/seg-{seq:08d}.json",
        "artifacts": {
            "parquet": {"key": f"s3://acme-data-lake/events/prod/seg-{seq}.parquet", "bytes": seq}
        },
        "views": views or [],
        **fields,
    }


def outcome(
    view_id: str, processed: int, accepted: int, dropped: int, dlq: int, **fields: Any
) -> dict[str, Any]:
    return {
        "view_id": view_id,
        "processed": processed,
        "accepted": accepted,
        "dropped": dropped,
        "dlq": dlq,
        **fields,
    }


def ago(ms: int) -> str:
    moment = fmt_ts(now_ms() - ms)
    assert moment is not None
    return moment


async def commits_page(api: Api, endpoint_id: str, **params: Any) -> dict[str, Any]:
    status, body = await api.call("GET", f"/v1/endpoints/{endpoint_id}/commits", params=params)
    assert status == 200, body
    assert set(body) == {"items", "next_cursor"}
    return dict(body)


async def metrics(api: Api, view_id: str) -> dict[str, Any]:
    status, body = await api.call("GET", f"/v1/views/{view_id}/metrics")
    assert status == 200, body
    return dict(body)


def parse(moment: str) -> dt.datetime:
    return dt.datetime.fromisoformat(moment)


# ----------------------------------------------------------------- commits
async def test_reported_commits_are_listed_newest_first_with_the_reference_fields(
    api: Api,
) -> None:
    endpoint = await create_endpoint(api)
    node = await Node.start(api)
    # The reference's two commits (seq 16 and 17), reported oldest first.
    older = commit(endpoint["id"], 16, "2026-01-15T10:25:00.000Z", wal_bytes=1835008)
    older["duration_ms"] = 290
    older["artifacts"] = {
        "parquet": {"key": "s3://acme-data-lake/events/prod/seg-16.parquet", "bytes": 921600}
    }
    newer = commit(endpoint["id"], 17, "2026-01-15T10:30:00Z", wal_bytes=2097152)
    newer["duration_ms"] = 340
    newer["artifacts"] = {
        "parquet": {"key": "s3://acme-data-lake/events/prod/seg-17.parquet", "bytes": 1048576}
    }

    assert await node.report(older, newer) == {"acknowledged": 2, "stored": 2}

    page = await commits_page(api, endpoint["id"])
    assert page["next_cursor"] is None
    items = page["items"]
    assert [c["seq"] for c in items] == [17, 16]
    for item in items:
        assert set(item) >= COMMIT_FIELDS
        assert isinstance(item["id"], str)
        assert item["id"].isdigit()
        assert item["node_id"] == node.id
    assert int(items[0]["id"]) != int(items[1]["id"])
    assert {k: items[0][k] for k in COMMIT_FIELDS - {"id"}} == {
        "node_id": node.id,
        "seq": 17,
        "wal_bytes": 2097152,
        "duration_ms": 340,
        "uploaded_at": "2026-01-15T10:30:00.000Z",
        "artifacts": newer["artifacts"],
    }
    assert {k: items[1][k] for k in COMMIT_FIELDS - {"id"}} == {
        "node_id": node.id,
        "seq": 16,
        "wal_bytes": 1835008,
        "duration_ms": 290,
        "uploaded_at": "2026-01-15T10:25:00.000Z",
        "artifacts": older["artifacts"],
    }
    # A metrics token reads them too.
    status, body = await api.call("GET", f"/v1/endpoints/{endpoint['id']}/commits", scope="metrics")
    assert (status, body) == (200, page)


async def test_reporting_the_same_commits_twice_stores_nothing_new(api: Api) -> None:
    endpoint = await create_endpoint(api)
    node = await Node.start(api)
    batch = [commit(endpoint["id"], seq, ago(60_000 - seq)) for seq in (1, 2, 3)]
    assert (await node.report(*batch))["stored"] == 3
    first = await commits_page(api, endpoint["id"])

    again = [dict(c, wal_bytes=1, artifacts={}) for c in batch]  # a resend never overwrites
    assert await node.report(*again) == {"acknowledged": 3, "stored": 0}
    assert await node.report(batch[0], batch[0]) == {"acknowledged": 2, "stored": 0}

    assert await commits_page(api, endpoint["id"]) == first
    # Another epoch or another node is another commit.
    other = await Node.start(api, "n2")
    assert (await other.report(batch[0]))["stored"] == 1
    assert (await node.report(dict(batch[0], epoch=2)))["stored"] == 1
    assert len((await commits_page(api, endpoint["id"]))["items"]) == 5


async def test_commits_are_paged_with_before_and_next_cursor(api: Api) -> None:
    endpoint = await create_endpoint(api)
    node = await Node.start(api)
    await node.report(
        *(commit(endpoint["id"], seq, f"2026-01-15T10:{seq:02d}:00.000Z") for seq in range(1, 8))
    )

    pages = []
    params: dict[str, Any] = {"limit": 3}
    while True:
        page = await commits_page(api, endpoint["id"], **params)
        pages.append([c["seq"] for c in page["items"]])
        if page["next_cursor"] is None:
            break
        assert parse(page["next_cursor"]) == parse(page["items"][-1]["uploaded_at"])
        params = {"limit": 3, "before": page["next_cursor"]}
        assert len(pages) < 5

    assert pages == [[7, 6, 5], [4, 3, 2], [1]]
    exact = await commits_page(api, endpoint["id"], limit=7)
    assert exact["next_cursor"] is None
    assert len(exact["items"]) == 7
    before = await commits_page(api, endpoint["id"], before="2026-01-15T12:04:00+02:00")
    assert [c["seq"] for c in before["items"]] == [3, 2, 1]


async def test_commits_uploaded_at_the_same_instant_are_not_lost_between_pages(
    api: Api,
) -> None:
    endpoint = await create_endpoint(api)
    node = await Node.start(api)
    same = "2026-01-15T10:02:00.000Z"
    await node.report(
        commit(endpoint["id"], 1, "2026-01-15T10:01:00.000Z"),
        commit(endpoint["id"], 2, same),
        commit(endpoint["id"], 3, same),
        commit(endpoint["id"], 4, same),
        commit(endpoint["id"], 5, "2026-01-15T10:03:00.000Z"),
    )

    seen: list[int] = []
    for limit in (2, 1):
        seen = []
        params: dict[str, Any] = {"limit": limit}
        for _ in range(10):
            page = await commits_page(api, endpoint["id"], **params)
            seen += [c["seq"] for c in page["items"]]
            if page["next_cursor"] is None:
                break
            params = {"limit": limit, "before": page["next_cursor"]}
        assert sorted(seen) == [1, 2, 3, 4, 5], limit
        assert len(seen) == 5, limit


async def test_a_bad_commits_query_is_a_validation_error(api: Api) -> None:
    endpoint = await create_endpoint(api)
    path = f"/v1/endpoints/{endpoint['id']}/commits"

    for params, expected in (
        ({"before": "yesterday"}, ["query.before"]),
        ({"before": "2026-01-15T10:25:00"}, ["query.before"]),
        ({"limit": 0}, ["query.limit"]),
        ({"limit": 201}, ["query.limit"]),
        ({"limit": "ten", "before": "x"}, ["query.limit", "query.before"]),
    ):
        status, body = await api.call("GET", path, params=params)
        assert status == 422, (params, body)
        assert problem_paths(body) == expected


async def test_commits_of_unknown_or_foreign_endpoints_are_not_found(api: Api) -> None:
    endpoint = await create_endpoint(api)
    other = await api.new_account()

    for endpoint_id, key in (
        ("00000000-0000-4000-8000-000000000000", None),
        ("not-a-uuid", None),
        (endpoint["id"], other),
    ):
        status, body = await api.call("GET", f"/v1/endpoints/{endpoint_id}/commits", key=key)
        assert status == 404, body


async def test_commits_for_unknown_endpoints_are_acknowledged_but_not_stored(api: Api) -> None:
    endpoint = await create_endpoint(api)
    node = await Node.start(api)

    body = await node.report(
        commit("00000000-0000-4000-8000-000000000000", 1, ago(1000)),
        commit(endpoint["id"], 1, ago(1000)),
    )

    assert body == {"acknowledged": 2, "stored": 1}
    assert [c["seq"] for c in (await commits_page(api, endpoint["id"]))["items"]] == [1]


async def test_a_malformed_commit_report_is_rejected_whole_with_field_paths(api: Api) -> None:
    endpoint = await create_endpoint(api)
    view = await published_view(api)
    node = await Node.start(api)
    good = commit(endpoint["id"], 1, ago(1000))

    for bad, expected in (
        ({"seq": -1}, "body.commits[1].seq"),
        ({"uploaded_at": "2026-01-15T10:25:00"}, "body.commits[1].uploaded_at"),
        ({"manifest_key": None}, "body.commits[1].manifest_key"),
        ({"artifacts": []}, "body.commits[1].artifacts"),
        (
            {"views": [{**outcome(view["id"], 3, 1, 1, 1), "processed": "3"}]},
            "body.commits[1].views[0].processed",
        ),
        ({"views": [{"processed": 1}]}, "body.commits[1].views[0].view_id"),
        (
            {"views": [outcome(view["id"], 1, 1, 0, 0, error_code=5)]},
            "body.commits[1].views[0].error_code",
        ),
        (
            {"views": [outcome(view["id"], 1, 0, 0, 1, dlq_file={"key": 1})]},
            "body.commits[1].views[0].dlq_file",
        ),
    ):
        status, body = await node_call(
            api,
            node.key,
            "POST",
            f"/v1/nodes/{node.id}/commits",
            json={"commits": [good, dict(commit(endpoint["id"], 2, ago(500)), **bad)]},
        )
        assert status == 422, (bad, body)
        assert problem_paths(body) == [expected], bad
    status, body = await node_call(
        api, node.key, "POST", f"/v1/nodes/{node.id}/commits", json={"commits": "x"}
    )
    assert status == 422, body
    status, body = await node_call(
        api, node.key, "POST", "/v1/nodes/ghost/commits", json={"commits": [good]}
    )
    assert status == 404, body
    assert (await commits_page(api, endpoint["id"]))["items"] == []
    assert (await metrics(api, view["id"]))["endpoints"] == []


# --------------------------------------------------------------- DLQ files
async def test_dlq_files_list_the_reported_dlq_objects_with_working_download_links(
    api: Api, tmp_path: Path
) -> None:
    store = tmp_path / "objects"
    status, destination = await api.call(
        "POST",
        "/v1/destinations",
        json={
            "name": "local",
            "bucket": "acme-data-lake",
            "prefix": "events",
            "region": "local",
            "role_arn": "arn:aws:iam::000000000000:role/local",
            "endpoint_url": f"file://{store}",
        },
    )
    assert status == 201, destination
    endpoint = await create_endpoint(api, destination_id=destination["id"])
    view = await published_view(api)
    other_view = await published_view(api, "other_view")
    await attach(api, endpoint["id"], view["id"])
    key = f"events/dlq/user_events/v1/{endpoint['id']}-n1-1-00000017.parquet"
    payload = b"PAR1 rejected rows PAR1"
    (store / "acme-data-lake" / key).parent.mkdir(parents=True)
    (store / "acme-data-lake" / key).write_bytes(payload)
    node = await Node.start(api)
    dlq_file = {"key": key, "bucket": "acme-data-lake", "region": "local", "bytes": len(payload)}
    uploaded = ago(60_000)

    await node.report(
        commit(endpoint["id"], 16, ago(120_000), views=[outcome(view["id"], 5, 5, 0, 0)]),
        commit(
            endpoint["id"],
            17,
            uploaded,
            views=[
                outcome(view["id"], 50, 6, 2, 42, dlq_file=dlq_file),
                outcome(other_view["id"], 50, 50, 0, 0),
            ],
        ),
    )

    status, body = await api.call("GET", f"/v1/views/{view['id']}/dlq-files")
    assert status == 200, body
    assert set(body) >= {"view_id", "view_name", "view_version", "files", "total"}
    assert (body["view_id"], body["view_name"], body["view_version"]) == (
        view["id"],
        "user_events",
        1,
    )
    assert body["total"] == 1
    (file,) = body["files"]
    assert set(file) >= DLQ_FILE_FIELDS
    assert {k: v for k, v in file.items() if k in DLQ_FILE_FIELDS - {"download_url"}} == {
        "endpoint_id": endpoint["id"],
        "endpoint_name": file["endpoint_name"],
        "segment_seq": 17,
        "s3_key": key,
        "s3_bucket": "acme-data-lake",
        "region": "local",
        "bytes": len(payload),
        "rows": 42,
        "created_at": uploaded,
    }
    assert isinstance(file["endpoint_name"], str)
    assert ISO_MS.match(file["created_at"])
    link = URL(file["download_url"])
    assert str(link.origin()) == str(api.client.make_url("/").origin())
    assert link.path.startswith("/v1/downloads/")
    resp = await api.client.get(link.path_qs)  # no token needed: the link is signed
    assert resp.status == 200
    assert await resp.read() == payload
    tampered = link.path[:-3] + ("AAA" if not link.path.endswith("AAA") else "BBB")
    resp = await api.client.get(tampered)
    assert resp.status == 404
    status, others = await api.call("GET", f"/v1/views/{other_view['id']}/dlq-files")
    assert (status, others["files"], others["total"]) == (200, [], 0)
    status, again = await api.call("GET", f"/v1/views/{view['id']}/dlq-files", scope="metrics")
    assert status == 200
    assert again["total"] == 1


async def test_a_download_link_to_a_missing_object_is_not_found(api: Api, tmp_path: Path) -> None:
    status, destination = await api.call(
        "POST",
        "/v1/destinations",
        json={
            "name": "local",
            "bucket": "b",
            "region": "local",
            "role_arn": "arn:aws:iam::000000000000:role/local",
            "endpoint_url": f"file://{tmp_path / 'empty'}",
        },
    )
    assert status == 201, destination
    endpoint = await create_endpoint(api, destination_id=destination["id"])
    view = await published_view(api)
    node = await Node.start(api)
    dlq_file = {"key": "dlq/never-written.parquet", "bucket": "b", "region": "local", "bytes": 9}
    await node.report(
        commit(
            endpoint["id"], 1, ago(1000), views=[outcome(view["id"], 1, 0, 0, 1, dlq_file=dlq_file)]
        )
    )

    status, body = await api.call("GET", f"/v1/views/{view['id']}/dlq-files")

    assert status == 200
    resp = await api.client.get(URL(body["files"][0]["download_url"]).path)
    assert resp.status == 404


async def test_dlq_files_are_newest_first_and_a_file_without_destination_has_no_link(
    api: Api,
) -> None:
    endpoint = await create_endpoint(api)  # no destination
    view = await published_view(api)
    node = await Node.start(api)

    await node.report(
        *(
            commit(
                endpoint["id"],
                seq,
                ago(10_000 - seq),
                views=[
                    outcome(
                        view["id"],
                        seq,
                        0,
                        0,
                        seq,
                        dlq_file={"key": f"dlq/{seq}.parquet", "bucket": "b", "region": "r"},
                    )
                ],
            )
            for seq in (1, 2, 3)
        )
    )

    status, body = await api.call("GET", f"/v1/views/{view['id']}/dlq-files")
    assert status == 200
    assert body["total"] == 3
    assert [(f["segment_seq"], f["rows"]) for f in body["files"]] == [(3, 3), (2, 2), (1, 1)]
    assert all(f["download_url"] is None for f in body["files"])


async def test_dlq_files_and_metrics_of_unknown_or_foreign_views_are_not_found(
    api: Api,
) -> None:
    view = await published_view(api)
    other = await api.new_account()

    for view_id, key in (
        ("00000000-0000-4000-8000-000000000000", None),
        ("not-a-uuid", None),
        (view["id"], other),
    ):
        for suffix in ("dlq-files", "metrics"):
            status, body = await api.call("GET", f"/v1/views/{view_id}/{suffix}", key=key)
            assert status == 404, (view_id, suffix, body)


# ----------------------------------------------------------------- metrics
async def test_metrics_add_up_the_outcomes_per_endpoint_and_in_aggregate(api: Api) -> None:
    view = await published_view(api)
    prod = await create_endpoint(api)
    canary = await create_endpoint(api, "lhr")
    node = await Node.start(api)
    recent = [
        commit(prod["id"], 1, ago(3_600_000), views=[outcome(view["id"], 10000, 9850, 120, 30)]),
        commit(prod["id"], 2, ago(60_000), views=[outcome(view["id"], 5234, 5130, 92, 12)]),
    ]
    await node.report(
        # Two days ago: counts for all_time only.
        commit(prod["id"], 0, ago(2 * DAY_MS), views=[outcome(view["id"], 1000, 900, 60, 40)]),
        *recent,
        commit(canary["id"], 1, ago(120_000), views=[outcome(view["id"], 100, 100, 0, 0)]),
    )
    # A resent batch does not count twice.
    assert (await node.report(*recent))["stored"] == 0

    body = await metrics(api, view["id"])

    assert (body["view_id"], body["view_name"], body["view_version"]) == (
        view["id"],
        "user_events",
        1,
    )
    by_endpoint = {e["endpoint_id"]: e for e in body["endpoints"]}
    assert set(by_endpoint) == {prod["id"], canary["id"]}
    main = by_endpoint[prod["id"]]
    assert main["last_24h"] == {"processed": 15234, "accepted": 14980, "dropped": 212, "dlq": 42}
    assert main["all_time"] == {"processed": 16234, "accepted": 15880, "dropped": 272, "dlq": 82}
    assert main["error_rate_pct"] == 1.67
    assert {k: main[k] for k in main if "error" in k and k != "error_rate_pct"} == {
        "has_errors": False,
        "error_count_24h": 0,
        "total_error_count": 0,
        "last_error_at": None,
        "last_error_code": None,
        "last_error_message": None,
    }
    assert main["last_updated_at"] == recent[1]["uploaded_at"]
    assert isinstance(main["endpoint_name"], str)
    small = by_endpoint[canary["id"]]
    assert (
        small["last_24h"]
        == small["all_time"]
        == {
            "processed": 100,
            "accepted": 100,
            "dropped": 0,
            "dlq": 0,
        }
    )
    assert small["error_rate_pct"] == 0
    for item in body["endpoints"]:
        for window in ("last_24h", "all_time"):
            counts = item[window]
            assert counts["processed"] == counts["accepted"] + counts["dropped"] + counts["dlq"]
    assert body["aggregated"] == {
        "last_24h": {"processed": 15334, "accepted": 15080, "dropped": 212, "dlq": 42},
        "all_time": {"processed": 16334, "accepted": 15980, "dropped": 272, "dlq": 82},
        "error_rate_pct": 1.66,  # 254 / 15334
        "has_errors": False,
        "total_error_count_24h": 0,
    }
    status, read = await api.call("GET", f"/v1/views/{view['id']}/metrics", scope="metrics")
    assert status == 200
    assert read["aggregated"] == body["aggregated"]


async def test_execution_errors_set_has_errors_and_the_error_fields(api: Api) -> None:
    view = await published_view(api)
    failing = await create_endpoint(api)
    recovered = await create_endpoint(api)
    node = await Node.start(api)
    latest = ago(30_000)
    await node.report(
        commit(
            failing["id"],
            1,
            ago(2 * DAY_MS),
            views=[outcome(view["id"], 0, 0, 0, 0, error_code="view_oom", error_message="old")],
        ),
        commit(failing["id"], 2, ago(60_000), views=[outcome(view["id"], 10, 10, 0, 0)]),
        commit(
            failing["id"],
            3,
            latest,
            views=[
                outcome(
                    view["id"], 0, 0, 0, 0, error_code="view_timeout", error_message="10 s deadline"
                )
            ],
        ),
        commit(
            recovered["id"],
            1,
            ago(3 * DAY_MS),
            views=[outcome(view["id"], 0, 0, 0, 0, error_code="view_oom", error_message="x")],
        ),
        commit(recovered["id"], 2, ago(1000), views=[outcome(view["id"], 4, 3, 1, 0)]),
    )

    body = await metrics(api, view["id"])

    by_endpoint = {e["endpoint_id"]: e for e in body["endpoints"]}
    bad = by_endpoint[failing["id"]]
    assert bad["has_errors"] is True
    assert (bad["error_count_24h"], bad["total_error_count"]) == (1, 2)
    assert (bad["last_error_at"], bad["last_error_code"], bad["last_error_message"]) == (
        latest,
        "view_timeout",
        "10 s deadline",
    )
    assert bad["error_rate_pct"] == 0  # bad rows are not execution errors, and vice versa
    good = by_endpoint[recovered["id"]]
    assert good["has_errors"] is False
    assert (good["error_count_24h"], good["total_error_count"]) == (0, 1)
    assert good["last_error_code"] == "view_oom"
    assert good["error_rate_pct"] == 25.0
    assert body["aggregated"]["has_errors"] is True
    assert body["aggregated"]["total_error_count_24h"] == 1


async def test_a_view_without_outcomes_has_zero_metrics(api: Api) -> None:
    view = await published_view(api)

    body = await metrics(api, view["id"])

    assert body["endpoints"] == []
    assert body["aggregated"] == {
        "last_24h": ZERO,
        "all_time": ZERO,
        "error_rate_pct": 0,
        "has_errors": False,
        "total_error_count_24h": 0,
    }
