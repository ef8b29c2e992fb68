"""EDGEMQ_* environment defaults: converted by the option's type at parse time, and a bad
value is a usage error of the command that uses it (naming the variable), not a crash."""

from __future__ import annotations

import argparse

import pytest

from edgemq.options import add_option


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgemq node")
    add_option(parser, "--http-port", default=8080, type=int, help="HTTP port")
    add_option(parser, "--region", default="loc", help="region")
    return parser


def test_environment_value_is_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEMQ_HTTP_PORT", "9090")
    args = _parser().parse_args([])
    assert args.http_port == 9090
    assert isinstance(args.http_port, int)


def test_command_line_wins_over_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGEMQ_HTTP_PORT", "9090")
    assert _parser().parse_args(["--http-port", "7070"]).http_port == 7070


def test_default_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGEMQ_HTTP_PORT", raising=False)
    monkeypatch.delenv("EDGEMQ_REGION", raising=False)
    args = _parser().parse_args([])
    assert (args.http_port, args.region) == (8080, "loc")


def test_bad_environment_value_is_a_usage_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGEMQ_HTTP_PORT", "eighty")
    parser = _parser()  # building the parser must not fail (other commands still work)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args([])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "EDGEMQ_HTTP_PORT" in err
    assert "'eighty'" in err
