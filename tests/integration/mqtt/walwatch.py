"""Watching and steering a node's WAL from a test: record what is appended, and hold
back the completion of appends (after their real fsync) to see what waits for it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from wal import AppendAck, WriteAheadLog
from wal.reader import iter_frames


@contextlib.contextmanager
def recording(wal: WriteAheadLog) -> Iterator[list[bytes]]:
    """Every append made to `wal` meanwhile (the encoded frames)."""
    chunks: list[bytes] = []
    original = wal.append_encoded

    def shim(data: bytes, frames: int) -> asyncio.Future[AppendAck]:
        future = original(data, frames)
        chunks.append(data)
        return future

    wal.append_encoded = shim  # type: ignore[method-assign]
    try:
        yield chunks
    finally:
        _restore(wal, original)


def _restore(wal: WriteAheadLog, previous: object) -> None:
    """Put back what `append_encoded` was (another shim, or the class's method)."""
    if getattr(previous, "__self__", None) is wal and "append_encoded" in wal.__dict__:
        del wal.append_encoded
    else:
        wal.append_encoded = previous  # type: ignore[method-assign]


def frames_of(chunks: list[bytes]) -> list[tuple[str | None, bytes]]:
    """(topic, message) of every frame in recorded appends."""
    return [(f.topic, f.message) for _, f in iter_frames(b"".join(chunks))]


class Gate:
    """Holds back the completion of appends to a WAL (after their real fsync) until
    `open()`: the node sees its acks' futures resolve only then."""

    def __init__(self, wal: WriteAheadLog) -> None:
        self.wal = wal
        self.is_open = False
        self.appends = 0
        self._ready: list[tuple[asyncio.Future[AppendAck], asyncio.Future[AppendAck]]] = []
        self._original = wal.append_encoded

    def __enter__(self) -> Gate:
        def shim(data: bytes, frames: int) -> asyncio.Future[AppendAck]:
            real = self._original(data, frames)
            self.appends += 1
            proxy: asyncio.Future[AppendAck] = asyncio.get_running_loop().create_future()
            real.add_done_callback(lambda f: self._arrived(f, proxy))
            return proxy

        self.wal.append_encoded = shim  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        _restore(self.wal, self._original)
        self.open()

    def _arrived(self, real: asyncio.Future[AppendAck], proxy: asyncio.Future[AppendAck]) -> None:
        self._ready.append((real, proxy))
        if self.is_open:
            self.open()

    def open(self) -> None:
        self.is_open = True
        ready, self._ready = self._ready, []
        for real, proxy in ready:
            if proxy.done():
                continue
            if real.exception() is not None:
                proxy.set_exception(real.exception())  # type: ignore[arg-type]
            else:
                proxy.set_result(real.result())
