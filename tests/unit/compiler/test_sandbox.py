import time

import pyarrow as pa
import pytest

from compiler.errors import ViewExecutionError, ViewTimeout
from compiler.sandbox import SandboxLimits, run_query

LIMITS = SandboxLimits(memory_limit_mib=128, threads=1, deadline_s=5.0)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_text('/etc/hostname')",
        "COPY (SELECT 1) TO '/tmp/edgemq-sandbox-escape.csv'",
        "ATTACH '/tmp/edgemq-sandbox.db'",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET threads = 8",
        "SET enable_external_access = true",
        "RESET lock_configuration",
        "SELECT getenv('HOME')",
    ],
)
def test_the_sandbox_refuses_files_network_extensions_and_settings(sql: str) -> None:
    with pytest.raises(ViewExecutionError):
        run_query(sql, {}, LIMITS)


def test_python_variables_are_not_visible_to_queries() -> None:
    secret = pa.table({"x": [1]})  # noqa: F841 - replacement scans would find it by name
    with pytest.raises(ViewExecutionError, match="secret"):
        run_query("SELECT * FROM secret", {}, LIMITS)


def test_registered_tables_are_queryable() -> None:
    result = run_query("SELECT sum(x) AS s FROM t", {"t": pa.table({"x": [1, 2, 3]})}, LIMITS)
    assert result.to_pylist() == [{"s": 6}]


def test_the_session_runs_in_utc_and_division_by_zero_is_null() -> None:
    result = run_query("SELECT current_setting('TimeZone') AS tz, 1 % 0 AS m", {}, LIMITS)
    assert result.to_pylist() == [{"tz": "UTC", "m": None}]


def test_a_query_past_its_deadline_is_interrupted() -> None:
    limits = SandboxLimits(memory_limit_mib=128, threads=1, deadline_s=0.3)
    started = time.monotonic()
    with pytest.raises(ViewTimeout, match="deadline"):
        run_query("SELECT count(*) FROM range(100000000000) a, range(10) b", {}, limits)
    assert time.monotonic() - started < 5
