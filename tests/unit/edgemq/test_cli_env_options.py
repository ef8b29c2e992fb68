"""EDGEMQ_* variables for `edgemq bench` (every option) and the documented exception of
`edgemq admin`'s per-invocation arguments (they read no variable)."""

from __future__ import annotations

import pytest

from edgemq.cli import build_parser

BENCH_ENV = {
    "EDGEMQ_PROFILE": "smoke",
    "EDGEMQ_ONLY": "W1, h1",
    "EDGEMQ_TIMEOUT_SCALE": "2.5",
    "EDGEMQ_BENCHMARKS_DIR": "bench",
    "EDGEMQ_RESULTS_DIR": "results",
    "EDGEMQ_OUTPUT": "report.json",
    "EDGEMQ_README": "table.md",
}


@pytest.fixture(autouse=True)
def no_edgemq_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [*BENCH_ENV, "EDGEMQ_ACCOUNT", "EDGEMQ_NODE_KEYS", "EDGEMQ_KEY_ID"]:
        monkeypatch.delenv(name, raising=False)


def test_bench_defaults_without_environment() -> None:
    args = build_parser().parse_args(["bench"])
    assert (args.profile, args.only, args.timeout_scale) == ("quick", None, 1.0)
    assert (args.benchmarks_dir, args.results_dir, args.output, args.readme) == ("", "", "", "")


def test_every_bench_option_reads_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in BENCH_ENV.items():
        monkeypatch.setenv(name, value)
    args = build_parser().parse_args(["bench"])
    assert args.profile == "smoke"
    assert args.only == ["W1", "h1"]
    assert args.timeout_scale == 2.5
    assert (args.benchmarks_dir, args.results_dir) == ("bench", "results")
    assert (args.output, args.readme) == ("report.json", "table.md")


def test_the_command_line_wins_over_the_bench_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in BENCH_ENV.items():
        monkeypatch.setenv(name, value)
    argv = ["bench", "--full", "--only", "R2", "--only", "m1", "--timeout-scale", "3"]
    args = build_parser().parse_args([*argv, "--output", "o.json"])
    assert (args.profile, args.only, args.timeout_scale) == ("full", ["R2", "m1"], 3.0)
    assert args.output == "o.json"
    # Given nowhere else, the list option builds up from the command line only.
    monkeypatch.delenv("EDGEMQ_ONLY")
    assert build_parser().parse_args(["bench", "--only", "W1"]).only == ["W1"]
    assert build_parser().parse_args(["bench", "--profile", "full"]).profile == "full"


@pytest.mark.parametrize(
    ("name", "value"), [("EDGEMQ_PROFILE", "fast"), ("EDGEMQ_TIMEOUT_SCALE", "twice")]
)
def test_a_bad_bench_variable_is_a_usage_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    parser = build_parser()  # the other commands' parsers are built all the same
    assert parser.parse_args(["status"]).json is False
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["bench"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert name in err
    assert repr(value) in err


def test_a_profile_switch_conflicts_with_another(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "--quick", "--smoke"])
    assert "not allowed with" in capsys.readouterr().err


def test_admin_arguments_name_this_invocation_and_read_no_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("EDGEMQ_ACCOUNT", "acct-from-env")
    monkeypatch.setenv("EDGEMQ_NODE_KEYS", "1")
    monkeypatch.setenv("EDGEMQ_KEY_ID", "key-from-env")
    parser = build_parser()
    listed = parser.parse_args(["admin", "list-keys"])
    assert (listed.account, listed.node_keys) == ("", False)
    with pytest.raises(SystemExit):
        parser.parse_args(["admin", "revoke-key"])  # --key-id stays required
    assert "--key-id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["admin", "create-key", "--scopes", "ingest"])  # as create-key
    assert "--account" in capsys.readouterr().err
