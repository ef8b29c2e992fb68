"""Run the control plane: open the store, load signing keys, serve HTTP until told to stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from aiohttp import web

from .auth import Signer
from .http.app import create_app
from .secrets_store import DOWNLOAD_LINKS, shared_secret
from .services.common import Context, ControlSettings
from .store import open_database
from .store.db import open_existing

log = logging.getLogger(__name__)
DEFAULT_DATABASE_URL = "sqlite:///./edgemq-data/control.db"
WATCHER_STOP_S = 20.0
"""Longest wait at close for the epoch watcher's current read (bounded by the store's
statement timeout)."""


def _prepare_sqlite_dir(url: str) -> None:
    if url.startswith(("postgresql://", "postgres://")):
        return
    path = url.removeprefix("sqlite:///")
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)


@asynccontextmanager
async def open_context(
    database_url: str, settings: ControlSettings | None = None
) -> AsyncIterator[Context]:
    settings = settings or ControlSettings()
    await asyncio.to_thread(_prepare_sqlite_dir, database_url)
    db = await open_database(database_url)
    watcher: asyncio.Task[None] | None = None
    try:
        signer = await Signer.load(db)
        if not settings.download_secret:
            secret = await shared_secret(db, DOWNLOAD_LINKS)
            settings = replace(settings, download_secret=secret)
        ctx = Context(db=db, signer=signer, settings=settings)
        watcher = asyncio.create_task(ctx.watch_epoch(), name="epoch-watcher")
        yield ctx
    finally:
        if watcher is not None:
            ctx.watch_stop.set()
            try:
                async with asyncio.timeout(WATCHER_STOP_S):
                    await watcher
            except TimeoutError:
                log.warning("the epoch watcher did not stop in %s s", WATCHER_STOP_S)
        await db.close()


@asynccontextmanager
async def open_read_only(
    database_url: str, settings: ControlSettings | None = None
) -> AsyncIterator[Context]:
    """A context for reading the store as it is (`edgemq status`, `edgemq admin
    list-*`): no migration, no signing key or secret created, no epoch watcher.
    `StoreUnavailable` (a ValueError) when there is no store at `database_url` or its
    schema version differs from this binary's."""
    db = await open_existing(database_url)
    try:
        signer = await Signer.load(db, create=False)
        yield Context(db=db, signer=signer, settings=settings or ControlSettings())
    finally:
        await db.close()


async def serve(
    database_url: str,
    host: str,
    port: int,
    settings: ControlSettings | None = None,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
) -> None:
    settings = settings or ControlSettings(public_url=f"http://{host}:{port}")
    async with open_context(database_url, settings) as ctx:
        # Long polls in flight are cut after a short grace instead of holding the exit.
        runner = web.AppRunner(create_app(ctx), access_log=None, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        log.warning(
            "control plane listening on http://%s:%d (store: %s)", host, port, ctx.db.dialect
        )
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM) if handle_signals else ()
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        try:
            await stop.wait()
        finally:
            for sig in signals:
                loop.remove_signal_handler(sig)
            ctx.close_long_polls()
            await runner.cleanup()
