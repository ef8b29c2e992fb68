"""The file-operations seam the WAL does all its I/O through.

Production uses `OsFileOps` (plain `os` calls). Tests substitute implementations that
fail chosen calls (fsync EIO, ENOSPC) or keep an in-memory model of what is durable
so that crash states can be generated (tests/property/test_wal_crash_model.py).
Every method is blocking: the WAL calls them from its writer thread, never from the
event loop.
"""

from __future__ import annotations

import os
from typing import BinaryIO, Protocol


class AppendFile(Protocol):
    """A file opened for appending."""

    def write(self, data: bytes | memoryview) -> None:
        """Write all of `data` at the end of the file."""
        ...

    def sync(self) -> None:
        """fdatasync: make everything written so far durable."""
        ...

    def close(self) -> None: ...


class FileOps(Protocol):
    def makedirs(self, path: str) -> None: ...
    def listdir(self, path: str) -> list[str]: ...
    def exists(self, path: str) -> bool: ...
    def file_size(self, path: str) -> int: ...
    def read_bytes(self, path: str) -> bytes: ...
    def open_read(self, path: str) -> BinaryIO: ...
    def open_append(self, path: str) -> AppendFile:
        """Open (creating if needed) for appending. Creation is durable only after fsync_dir."""
        ...

    def open_preallocated(self, path: str, chunk_bytes: int) -> AppendFile:
        """Create an empty file for appending whose space is written with zeros ahead of
        the data, `chunk_bytes` at a time, each zero-fill made durable before any data
        lands in it: an fdatasync then flushes data blocks only, no size or extent
        change. The file is longer than its data (a zero tail) until `truncate`.
        Creation is durable only after fsync_dir. docs/adr/0016."""
        ...

    def truncate(self, path: str, size_bytes: int) -> None:
        """Cut the file to `size_bytes` and make the new size durable."""
        ...

    def rename(self, src: str, dst: str) -> None: ...
    def unlink(self, path: str) -> None: ...
    def fsync_dir(self, path: str) -> None: ...


class _OsFile:
    """What both OS-backed `AppendFile`s share: one descriptor, fdatasync, close."""

    __slots__ = ("_fd",)
    _fd: int

    def sync(self) -> None:
        os.fdatasync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class OsAppendFile(_OsFile):
    __slots__ = ()

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]


ZERO_FILL_WRITE_BYTES = 1024 * 1024


class OsPreallocatedFile(_OsFile):
    """`AppendFile` writing at its own offset into a zero-filled, fsynced region that it
    extends by `chunk_bytes` (zeros written, then fdatasync) whenever a write would
    pass its end. Positional writes: the file size is the allocated size."""

    __slots__ = ("_allocated", "_chunk", "_pos")

    def __init__(self, path: str, chunk_bytes: int) -> None:
        if chunk_bytes < 1:
            raise ValueError("chunk_bytes must be >= 1")
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            if os.fstat(self._fd).st_size:
                raise FileExistsError(f"{path} is not empty: preallocation needs a new file")
        except BaseException:
            os.close(self._fd)
            raise
        self._chunk = chunk_bytes
        self._pos = 0
        self._allocated = 0

    def _zero_fill(self, end: int) -> None:
        """Zeros from the allocated end to `end` rounded up to a chunk, made durable."""
        end = -(-end // self._chunk) * self._chunk
        zeros = bytes(min(ZERO_FILL_WRITE_BYTES, end - self._allocated))
        offset = self._allocated
        while offset < end:
            view = memoryview(zeros)[: end - offset]
            offset += os.pwrite(self._fd, view, offset)
        os.fdatasync(self._fd)
        self._allocated = end

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self._pos + len(view) > self._allocated:
            self._zero_fill(self._pos + len(view))
        while view:
            written = os.pwrite(self._fd, view, self._pos)
            self._pos += written
            view = view[written:]


class OsFileOps:
    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def file_size(self, path: str) -> int:
        return os.stat(path).st_size

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def open_read(self, path: str) -> BinaryIO:
        return open(path, "rb")

    def open_append(self, path: str) -> AppendFile:
        return OsAppendFile(path)

    def open_preallocated(self, path: str, chunk_bytes: int) -> AppendFile:
        f = OsPreallocatedFile(path, chunk_bytes)
        try:
            f._zero_fill(chunk_bytes)
        except BaseException:
            f.close()
            raise
        return f

    def truncate(self, path: str, size_bytes: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, size_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


OS_FILE_OPS: FileOps = OsFileOps()
