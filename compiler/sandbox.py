"""The DuckDB sandbox: the only module of the project that imports duckdb.

Every query runs on a fresh in-memory connection that is locked down before any user
derived SQL reaches it:
- `enable_external_access = false`: no files, no network (read_csv, read_text, COPY,
  ATTACH, INSTALL all fail with a permission error);
- extension autoloading/autoinstall off, community and unsigned extensions off;
- Python replacement scans off: only the tables registered here are visible;
- memory and thread limits, `TimeZone = UTC`, division by zero gives NULL;
- `lock_configuration = true` last, so SQL cannot undo any of it;
- a deadline enforced with `Connection.interrupt()` from a timer thread.

All of it is blocking: callers run it off the event loop (`shared.offload`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from .errors import SandboxError, ViewExecutionError, ViewTimeout


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    memory_limit_mib: int = 512
    threads: int = 2
    deadline_s: float = 30.0
    max_expression_depth: int = 250


PREVIEW_LIMITS = SandboxLimits(memory_limit_mib=256, threads=1, deadline_s=10.0)


def open_connection(limits: SandboxLimits) -> duckdb.DuckDBPyConnection:
    config: dict[str, str | bool | int | float | list[str]] = {
        "enable_external_access": False,
        "autoload_known_extensions": False,
        "autoinstall_known_extensions": False,
        "allow_community_extensions": False,
        "allow_unsigned_extensions": False,
        "python_enable_replacements": False,
        "memory_limit": f"{limits.memory_limit_mib}MB",
        "threads": limits.threads,
        "max_expression_depth": limits.max_expression_depth,
        "error_on_division_by_zero": False,
    }
    try:
        con = duckdb.connect(":memory:", config=config)
        con.execute("SET TimeZone = 'UTC'")
        con.execute("SET lock_configuration = true")
    except duckdb.Error as err:
        raise SandboxError(f"cannot set up the DuckDB sandbox: {err}") from err
    return con


def run_query(sql: str, tables: dict[str, pa.Table], limits: SandboxLimits) -> pa.Table:
    """Run one SELECT over the registered Arrow tables and return the result as Arrow."""
    con = open_connection(limits)
    timed_out = threading.Event()

    def interrupt() -> None:
        timed_out.set()
        con.interrupt()

    timer = threading.Timer(limits.deadline_s, interrupt)
    timer.daemon = True
    try:
        for name, table in tables.items():
            con.register(name, table)
        timer.start()
        result: pa.Table = con.sql(sql).to_arrow_table()
        return result
    except duckdb.Error as err:
        if timed_out.is_set():
            raise ViewTimeout(
                f"view execution passed its {limits.deadline_s:g} s deadline"
            ) from err
        raise ViewExecutionError(f"view execution failed: {err}") from err
    finally:
        timer.cancel()
        con.close()


def engine_keywords(categories: tuple[str, ...]) -> set[str]:
    """DuckDB's keyword list for the given categories (for a test of sql.QUOTED_KEYWORDS)."""
    con = duckdb.connect(":memory:")
    try:
        rows = con.execute(
            "SELECT keyword_name, keyword_category FROM duckdb_keywords()"
        ).fetchall()
    finally:
        con.close()
    return {name for name, category in rows if category in categories}
