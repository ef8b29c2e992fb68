"""A small async database layer over SQLite (one connection, one thread) or PostgreSQL
(psycopg 3 with a bounded pool). SQL is written once with `?` placeholders; the
PostgreSQL side rewrites them to `%s`. Rows come back as dicts.

SQLite runs with `journal_mode=WAL` and `synchronous=FULL`; every statement goes through
one thread and an asyncio lock, so a transaction is never interleaved with another
coroutine's statements. PostgreSQL transactions use a pooled connection each.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

from shared.offload import BlockingPool

Row = dict[str, Any]
Params = Sequence[Any]


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


class SqliteDatabase:
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        self._pool = BlockingPool("sqlite", threads=1, waiting_max=10_000)
        self._path = path
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
        conn.execute("PRAGMA busy_timeout=5000")
        self._conn = conn

    def _fetchall(self, sql: str, params: Params) -> list[Row]:
        assert self._conn is not None
        return [dict(r) for r in self._conn.execute(sql, tuple(params)).fetchall()]

    def _execute(self, sql: str, params: Params) -> int:
        assert self._conn is not None
        return self._conn.execute(sql, tuple(params)).rowcount

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


class _PgTx:
    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.after_commit: list[Callable[[], None]] = []

    async def fetchall(self, sql: str, params: Params = ()) -> list[Row]:
        cur = await self._conn.execute(_pg(sql), tuple(params))
        if cur.description is None:
            return []
        return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: Params = ()) -> Row | None:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def execute(self, sql: str, params: Params = ()) -> int:
        cur = await self._conn.execute(_pg(sql), tuple(params))
        return int(cur.rowcount)


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
            kwargs={"row_factory": dict_row, "autocommit": True},
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


async def open_database(url: str) -> SqliteDatabase | PostgresDatabase:
    """`postgresql://…` → PostgreSQL; `sqlite:///path` or a plain path → SQLite."""
    db: SqliteDatabase | PostgresDatabase
    if url.startswith(("postgresql://", "postgres://")):
        db = PostgresDatabase(url)
    else:
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url
        db = SqliteDatabase(path)
    await db.connect()
    from .schema import migrate

    await migrate(db)
    return db
