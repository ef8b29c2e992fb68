"""A real PostgreSQL server for the scale-out tests (one per module run), with the same
absence rule as tests/integration/control: skipped on a developer machine without the
server binaries, an error under CI (`./dev test` installs Debian's `postgresql`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresServer, pg_bin, start_postgres
from tests.support.processes import kill_leftovers


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    if pg_bin() is None:
        if os.environ.get("CI"):
            raise RuntimeError("CI must run the PostgreSQL suite: install the postgresql package")
        pytest.skip("PostgreSQL server binaries not installed (./dev test installs them)")
    server = start_postgres(tempfile.mkdtemp(prefix="edgemq-pg-"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _no_leftover_children() -> Iterator[None]:
    """Whatever a failed test left running is killed (tests/support/processes.LIVE)."""
    yield
    kill_leftovers()
