"""Shared fixtures of the fault scenarios (tests/fault/harness.py has the harness).

- `moto_server` / `moto`: moto's S3/STS/IAM server as a process for the session, base
  AWS credentials in the environment per test (tests/support/moto_server.py);
- `seed`: the scenario's seed, printed, replayable with EDGEMQ_TEST_SEED;
- `free_tcp_port`: a callable giving a free 127.0.0.1 port (the harness takes its own;
  per-test directories are pytest's `tmp_path`, where every process logs);
- a safety net killing any child process a failed or timed-out test left running.

Report lines: every scenario prints one `REPORT {json}` line (visible with `-s`, and in
the captured output of a failure), appends it to `$EDGEMQ_REPORT_DIR/reliability.jsonl`
when that variable is set, and the lines of the session are repeated in the terminal
summary.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.fault.harness import REPORTS, scenario_seed
from tests.support.moto_server import moto_fixture, moto_server_fixture
from tests.support.postgres import free_port
from tests.support.processes import kill_leftovers
from tests.support.report import REPORT_DIR_ENV

__all__ = ["moto_fixture", "moto_server_fixture"]


def _report_destination() -> str:
    directory = os.environ.get(REPORT_DIR_ENV)
    if directory:
        return f"{os.path.join(directory, 'reliability.jsonl')} (and stdout)"
    return f"stdout only (set {REPORT_DIR_ENV} to also append them to a reliability.jsonl)"


def pytest_report_header(config: pytest.Config) -> str:
    return f"fault scenario REPORT lines: {_report_destination()}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORTS:
        return
    import json

    terminalreporter.section("fault scenario reports")
    terminalreporter.write_line(f"written to {_report_destination()}")
    for line in REPORTS:
        terminalreporter.write_line("REPORT " + json.dumps(line, default=str))


@pytest.fixture
def seed() -> int:
    return scenario_seed()


@pytest.fixture
def free_tcp_port() -> Callable[[], int]:
    return free_port


@pytest.fixture(autouse=True)
def _no_child_left_behind() -> Iterator[None]:
    yield
    left = kill_leftovers()
    assert left == 0, f"{left} child process(es) were still running after the test"
