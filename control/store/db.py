"""A small async database layer over SQLite (one connection, one thread) or PostgreSQL
(psycopg 3 with a bounded pool). SQL is written once with `?` placeholders; the
PostgreSQL side rewrites them to `%s`. Rows come back as dicts.

SQLite runs with `journal_mode=WAL` and `synchronous=FULL`; every statement goes through
one thread and an asyncio lock, so a transaction is never interleaved with another
coroutine's statements. PostgreSQL transactions use a pooled connection each.

Concurrency with several control replicas (docs/adr/0009): a statement that breaks a
UNIQUE constraint raises `DuplicateKey` on both stores (the API answers 409), a
PostgreSQL deadlock or serialization failure raises `Contention` (503, retry), and
`tx.lock(name)` serializes check-then-write sequences on one name across replicas
(a transaction-scoped advisory lock on PostgreSQL; SQLite's `BEGIN IMMEDIATE` already
serializes every writing transaction).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from shared.offload import BlockingPool

Row = dict[str, Any]
Params = Sequence[Any]


class DuplicateKey(Exception):
    """A write broke a UNIQUE constraint (another writer got there first)."""


class Contention(Exception):
    """The store gave up on a statement: a PostgreSQL deadlock, serialization failure,
    lock wait past `PG_LOCK_TIMEOUT_MS` or statement past `PG_STATEMENT_TIMEOUT_MS`, or
    SQLite's write lock held by another process past its busy timeout. Retry."""


class StoreUnavailable(ValueError):
    """A read-only open found no store, or one whose schema version this binary does
    not know (older or newer). A ValueError: operator commands report it, exit 2."""


# PostgreSQL session limits (docs/control-plane.md): a request never waits forever on
# a lock or a stalled statement while holding one of the pool's connections.
PG_LOCK_TIMEOUT_MS = 5_000
"""Longest wait for a row or advisory lock (`tx.lock`) before answering 503."""
PG_STATEMENT_TIMEOUT_MS = 15_000
"""Longest single statement (migrations raise it for themselves)."""
PG_IDLE_IN_TRANSACTION_TIMEOUT_MS = 30_000
"""A transaction left idle this long (a stalled holder of locks) is ended by the server."""
SQLITE_BUSY_TIMEOUT_MS = 5_000
"""Longest wait for SQLite's write lock held by another process, then 503."""


def lock_key(name: str) -> int:
    """A stable signed 64-bit number for an advisory lock named `name`."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def _sqlite_error(err: sqlite3.Error) -> Exception:
    text = str(err)
    if isinstance(err, sqlite3.IntegrityError) and text.startswith("UNIQUE constraint failed"):
        return DuplicateKey(text)
    if isinstance(err, sqlite3.OperationalError) and "database is locked" in text:
        return Contention(text)  # another process held the write lock past busy_timeout
    return err


class Executor(Protocol):
    """A database or an open transaction. Transactions also have `after_commit`, a list
    of callbacks run once the transaction has committed."""

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]: ...
    async def fetchone(self, sql: str, params: Params = ()) -> Row | None: ...
    async def execute(self, sql: str, params: Params = ()) -> int: ...


class Database(Executor, Protocol):
    dialect: str

    def transaction(self) -> Any:
        """`async with db.transaction() as tx:` — tx has fetchall/fetchone/execute."""
        ...

    async def close(self) -> None: ...


# ------------------------------------------------------------------- SQLite
class _SqliteTx:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db
        self.after_commit: list[Callable[[], None]] = []

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        return await self._db._pool.run(self._db._fetchall, sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Params = ()) -> int:
        return await self._db._pool.run(self._db._execute, sql, params)

    async def lock(self, name: str) -> None:
        """Serialize with other transactions locking `name`: a no-op here, since
        `BEGIN IMMEDIATE` holds the database's write lock for the whole transaction."""


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, path: str, *, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> None:
        self._pool = BlockingPool("sqlite", threads=1, waiting_max=10_000)
        self._path = path
        self._busy_timeout_ms = int(busy_timeout_ms)
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        await self._pool.run(self._connect)

    def _connect(self) -> None:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={self._busy_timeout_ms}")
        self._conn = conn

    def _fetchall(self, sql: str, params: Params) -> list[Row]:
        assert self._conn is not None
        try:
            return [dict(r) for r in self._conn.execute(sql, tuple(params)).fetchall()]
        except (sqlite3.IntegrityError, sqlite3.OperationalError) as err:
            mapped = _sqlite_error(err)
            if mapped is err:
                raise
            raise mapped from err

    def _execute(self, sql: str, params: Params) -> int:
        assert self._conn is not None
        try:
            return self._conn.execute(sql, tuple(params)).rowcount
        except (sqlite3.IntegrityError, sqlite3.OperationalError) as err:
            mapped = _sqlite_error(err)
            if mapped is err:
                raise
            raise mapped from err

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._lock:
            return await self._pool.run(self._fetchall, sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._lock:
            return await self._pool.run(self._execute, sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteTx]:
        async with self._lock:
            await self._pool.run(self._execute, "BEGIN IMMEDIATE", ())
            tx = _SqliteTx(self)
            try:
                yield tx
            except BaseException:
                await self._pool.run(self._execute, "ROLLBACK", ())
                raise
            await self._pool.run(self._execute, "COMMIT", ())
        for callback in tx.after_commit:
            callback()

    async def close(self) -> None:
        if self._conn is not None:
            await self._pool.run(self._conn.close)
            self._conn = None
        self._pool.shutdown()


# --------------------------------------------------------------- PostgreSQL
def _pg(sql: str) -> str:
    return sql.replace("?", "%s")


def _pg_error(err: Exception) -> Exception:
    """psycopg's errors as the store's own (`DuplicateKey`, `Contention`), else `err`."""
    from psycopg import errors

    if isinstance(err, errors.UniqueViolation):
        return DuplicateKey(str(err).splitlines()[0])
    if isinstance(
        err,
        (
            errors.DeadlockDetected,
            errors.SerializationFailure,
            errors.LockNotAvailable,  # lock_timeout
            errors.QueryCanceled,  # statement_timeout
        ),
    ):
        return Contention(str(err).splitlines()[0])
    return err


class _PgTx:
    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.after_commit: list[Callable[[], None]] = []

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        import psycopg

        try:
            cur = await self._conn.execute(_pg(sql), tuple(params))
            if cur.description is None:
                return []
            return list(await cur.fetchall())
        except psycopg.Error as err:
            mapped = _pg_error(err)
            if mapped is err:
                raise
            raise mapped from err

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Params = ()) -> int:
        import psycopg

        try:
            cur = await self._conn.execute(_pg(sql), tuple(params))
        except psycopg.Error as err:
            mapped = _pg_error(err)
            if mapped is err:
                raise
            raise mapped from err
        return int(cur.rowcount)

    async def lock(self, name: str) -> None:
        """Wait for, then hold until commit, the advisory lock named `name`: a
        check-then-write under it sees what the previous holder committed (READ
        COMMITTED reads a fresh snapshot per statement)."""
        await self.execute("SELECT pg_advisory_xact_lock(?)", (lock_key(name),))


PG_OPTIONS = (
    f"-c lock_timeout={PG_LOCK_TIMEOUT_MS} -c statement_timeout={PG_STATEMENT_TIMEOUT_MS} "
    f"-c idle_in_transaction_session_timeout={PG_IDLE_IN_TRANSACTION_TIMEOUT_MS}"
)
"""Session settings of every pooled connection (they replace `options` in the URL)."""


class PostgresDatabase:
    dialect = "postgresql"

    def __init__(self, url: str, *, pool_max: int = 10) -> None:
        from psycopg.rows import dict_row
        from psycopg_pool import AsyncConnectionPool

        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_max,
            open=False,
            kwargs={"row_factory": dict_row, "autocommit": True, "options": PG_OPTIONS},
            timeout=10.0,
        )

    async def connect(self) -> None:
        await self._pool.open(wait=True, timeout=30.0)

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        async with self._pool.connection() as conn:
            return await _PgTx(conn).fetchall(sql, params)

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Params = ()) -> int:
        async with self._pool.connection() as conn:
            return await _PgTx(conn).execute(sql, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PgTx]:
        async with self._pool.connection() as conn:
            tx = _PgTx(conn)
            async with conn.transaction():
                yield tx
        for callback in tx.after_commit:
            callback()

    async def close(self) -> None:
        await self._pool.close()


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL (`sqlite:///path` or a plain path); None for PostgreSQL."""
    if url.startswith(("postgresql://", "postgres://")):
        return None
    return url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url


def _database(url: str) -> SqliteDatabase | PostgresDatabase:
    path = sqlite_path(url)
    return PostgresDatabase(url) if path is None else SqliteDatabase(path)


async def open_database(url: str) -> SqliteDatabase | PostgresDatabase:
    """`postgresql://…` → PostgreSQL; `sqlite:///path` or a plain path → SQLite.
    Creates the store if needed and applies missing migrations."""
    db = _database(url)
    await db.connect()
    from .schema import migrate

    try:
        await migrate(db)
    except BaseException:
        await db.close()
        raise
    return db


async def open_existing(url: str) -> SqliteDatabase | PostgresDatabase:
    """The store at `url` for reading, as it is: no migration, nothing created.
    `StoreUnavailable` when there is no store there or its schema version is not
    exactly the one this binary knows (a newer CLI must not judge, or migrate, a
    store older replicas still run on; an older CLI cannot read a newer one)."""
    path = sqlite_path(url)
    if path is not None and not await asyncio.to_thread(os.path.isfile, path):
        raise StoreUnavailable(f"no control store at {path}")
    db = _database(url)
    await db.connect()
    try:
        from .schema import MIGRATIONS, schema_version

        version = await schema_version(db)
        if version == 0:
            raise StoreUnavailable(f"{url_for_humans(url)} holds no control store")
        if version != len(MIGRATIONS):
            relation = "newer" if version > len(MIGRATIONS) else "older"
            raise StoreUnavailable(
                f"the control store is at schema version {version}, {relation} than the "
                f"version {len(MIGRATIONS)} this edgemq knows; use an edgemq of the same "
                "version as the control plane (a control plane of this version upgrades "
                "the store when it starts)"
            )
    except BaseException:
        await db.close()
        raise
    return db


def url_for_humans(url: str) -> str:
    """The URL without a password (for messages)."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://…@{rest.rsplit('@', 1)[1]}"
    return url
