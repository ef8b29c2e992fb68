"""The HTTP connection cap's bookkeeping (ingest.admission), its setting and option;
the cap against real clients is tests/integration/ingest/test_http_connections.py."""

from __future__ import annotations

import json

import pytest

from edgemq.cli import build_parser
from ingest.admission import Admission
from ingest.http_server import refusal_response
from ingest.metrics import NodeMetrics
from ingest.settings import Limits


def test_connections_are_admitted_up_to_the_cap_and_again_after_closes() -> None:
    a = Admission(Limits(http_connections_max=3), NodeMetrics())
    assert [a.open_connection() for _ in range(5)] == [True, True, True, False, False]
    assert a.http_connections == 3
    a.close_connection()
    assert a.http_connections == 2
    assert a.open_connection() is True
    assert a.open_connection() is False
    assert a.http_connections == 3


def test_open_connections_are_a_gauge_read_at_scrape() -> None:
    metrics = NodeMetrics()
    a = Admission(Limits(http_connections_max=4), metrics)
    for _ in range(3):
        a.open_connection()
    a.close_connection()
    assert metrics.registry.get_sample_value("edgemq_http_connections") == 2


def test_the_cap_must_allow_a_connection() -> None:
    with pytest.raises(ValueError, match="http_connections_max"):
        Limits(http_connections_max=0)


def test_the_refusal_is_a_complete_503_in_the_json_error_shape() -> None:
    raw = refusal_response(7)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 503 Service Unavailable"
    headers = dict(line.split(": ", 1) for line in lines[1:])
    assert headers["Retry-After"] == "7"
    assert headers["Connection"] == "close"
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert int(headers["Content-Length"]) == len(body)
    error = json.loads(body)["error"]
    assert (error["status"], error["code"], error["reason"]) == (503, "overloaded", "connections")


def test_the_cap_is_an_option_with_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("EDGEMQ_HTTP_CONNECTIONS_MAX", raising=False)
    assert build_parser().parse_args(["node"]).http_connections_max == 1024
    assert Limits().http_connections_max == 1024
    args = build_parser().parse_args(["node", "--http-connections-max", "12"])
    assert args.http_connections_max == 12
    monkeypatch.setenv("EDGEMQ_HTTP_CONNECTIONS_MAX", "77")
    assert build_parser().parse_args(["node"]).http_connections_max == 77
