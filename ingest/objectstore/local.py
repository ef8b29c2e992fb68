"""The local filesystem store: objects at `<root>/<bucket>/<key>`, laid out like S3.

Writes are atomic and durable (litestream's pattern): a temporary file in the object's
own directory, write, fsync, rename over the key, fsync the directory. Missing parent
directories are created one at a time, each followed by an fsync of its parent, so a
crash never loses a renamed object because its directory entry was not durable.

Temporary files are named `.edgemq-tmp-<32 hex>`. Key segments starting with that
prefix are refused, so a temporary file can never be mistaken for an object, and
`list_keys` skips them: a reader sees either no object or the whole object. A failed
write removes its temporary file; one left by a crash stays hidden (nothing sweeps it).

User metadata lives in extended attributes `user.edgemq.<name>` (names lower-cased, as
S3 returns them), set on the temporary file before the rename so they appear with the
object. On a filesystem without user xattrs (ENOTSUP) metadata is dropped silently and
`head` reports none; nothing else depends on it.

Keys are validated: no absolute keys, no empty, `.` or `..` segments, no NUL, no
reserved temporary names → PermanentStoreError(code="InvalidKey"). The bucket directory
must exist, like an S3 bucket (NoSuchBucket otherwise), unless `create_bucket=True`,
which creates it (and `root`) durably on first use. Directories left empty by `delete` stay:
removing them would race with a concurrent put into the same directory.

S3 allows both `a` and `a/b` as keys; a filesystem does not: such a collision is a
PermanentStoreError(code="KeyConflict").

Errors: ENOSPC, EIO, EDQUOT and other unexpected OSErrors → TransientStoreError;
EACCES, EPERM, EROFS → PermanentStoreError; `code` is the errno name. Errors opening
or reading the *source* file of `put_file` are raised unchanged (not a store fault).
All blocking I/O runs in a worker thread (asyncio.to_thread), one call per operation;
`put_file` copies in fixed-size chunks (bounded memory).
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress

from ingest.objectstore.base import (
    ObjectInfo,
    ObjectNotFound,
    PermanentStoreError,
    TransientStoreError,
)

TEMP_PREFIX = ".edgemq-tmp-"
XATTR_PREFIX = "user.edgemq."
COPY_CHUNK_BYTES = 1024 * 1024
_PERMANENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_CONFLICT_ERRNOS = frozenset({errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOTEMPTY})
_NO_XATTR_ERRNOS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})
_TEMP_NAME = re.compile(re.escape(TEMP_PREFIX) + "[0-9a-f]{32}")


class SourceFileError(Exception):
    """Carries an OSError raised by the source of `put_file` past the error mapping."""

    def __init__(self, err: OSError) -> None:
        super().__init__(str(err))
        self.err = err


def check_key(key: str) -> None:
    """PermanentStoreError(code="InvalidKey") unless `key` is a safe relative key."""
    problem = ""
    if not key:
        problem = "empty key"
    elif "\x00" in key:
        problem = "NUL in key"
    elif key.startswith("/"):
        problem = "absolute key"
    else:
        for segment in key.split("/"):
            if segment in ("", ".", ".."):
                problem = f"segment {segment!r}"
            elif segment.startswith(TEMP_PREFIX):
                problem = f"reserved name {segment!r}"
    if problem:
        raise PermanentStoreError(f"invalid key {key!r}: {problem}", code="InvalidKey")


def check_prefix(prefix: str) -> None:
    """Prefixes may end anywhere (`seg-0001`, `dir/`), but may not escape the bucket."""
    if "\x00" in prefix or prefix.startswith("/") or ".." in prefix.split("/"):
        raise PermanentStoreError(f"invalid prefix {prefix!r}", code="InvalidKey")


@contextmanager
def mapped_os_errors(what: str) -> Iterator[None]:
    """Turn OSErrors of the store's own files into the StoreError tree."""
    try:
        yield
    except SourceFileError as wrapped:
        raise wrapped.err from None
    except OSError as err:
        name = errno.errorcode.get(err.errno or 0, "OSError")
        message = f"{what}: {err}"
        if err.errno in _CONFLICT_ERRNOS:
            raise PermanentStoreError(message, code="KeyConflict") from err
        if err.errno == errno.ENAMETOOLONG:
            raise PermanentStoreError(message, code="InvalidKey") from err
        if err.errno in _PERMANENT_ERRNOS:
            raise PermanentStoreError(message, code=name) from err
        raise TransientStoreError(message, code=name) from err


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mkdir_durably(path: str) -> None:
    """mkdir, then fsync the parent so the new entry survives a crash."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
    _fsync_dir(os.path.dirname(path))


class LocalStore:
    """An ObjectStore over a directory (see the module docstring)."""

    def __init__(self, root: str, bucket: str, *, create_bucket: bool = False) -> None:
        if not bucket or "/" in bucket or bucket in (".", ".."):
            raise ValueError(f"invalid bucket name {bucket!r}")
        self.root = root
        self.bucket = bucket
        self.bucket_dir = os.path.join(root, bucket)
        self._create_bucket = create_bucket

    # -- blocking helpers (run in a worker thread) ---------------------------------

    def _path(self, key: str) -> str:
        return os.path.join(self.bucket_dir, *key.split("/"))

    def _require_bucket(self) -> None:
        if os.path.isdir(self.bucket_dir):
            return
        if not self._create_bucket:
            raise PermanentStoreError(f"no bucket directory {self.bucket_dir}", code="NoSuchBucket")
        missing = []
        path = os.path.abspath(self.bucket_dir)
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for directory in reversed(missing):
            _mkdir_durably(directory)

    def _ensure_parents(self, key: str) -> str:
        """Create the key's directories durably; returns the object's directory."""
        self._require_bucket()
        directory = self.bucket_dir
        for segment in key.split("/")[:-1]:
            directory = os.path.join(directory, segment)
            if not os.path.isdir(directory):
                _mkdir_durably(directory)
        return directory

    def _write_atomic(
        self, key: str, chunks: Iterator[bytes], metadata: Mapping[str, str] | None
    ) -> None:
        directory = self._ensure_parents(key)
        temp = os.path.join(directory, TEMP_PREFIX + secrets.token_hex(16))
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                self._set_metadata(temp, metadata or {})
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, self._path(key))
        except BaseException:
            with suppress(OSError):
                os.unlink(temp)
            raise
        _fsync_dir(directory)

    @staticmethod
    def _set_metadata(path: str, metadata: Mapping[str, str]) -> None:
        for name, value in metadata.items():
            try:
                os.setxattr(path, XATTR_PREFIX + name.lower(), value.encode())
            except OSError as err:
                if err.errno in _NO_XATTR_ERRNOS:
                    return
                raise

    @staticmethod
    def _get_metadata(path: str) -> dict[str, str]:
        try:
            names = os.listxattr(path)
        except OSError as err:
            if err.errno in _NO_XATTR_ERRNOS:
                return {}
            raise
        out = {}
        for name in names:
            if name.startswith(XATTR_PREFIX):
                out[name[len(XATTR_PREFIX) :]] = os.getxattr(path, name).decode()
        return out

    def _put_bytes(self, key: str, data: bytes, metadata: Mapping[str, str] | None) -> None:
        with mapped_os_errors(f"put {key}"):
            self._write_atomic(key, iter((data,)), metadata)

    def _put_file(self, key: str, path: str, metadata: Mapping[str, str] | None) -> None:
        source = open(path, "rb")  # noqa: SIM115 (closed below; errors propagate unchanged)
        try:

            def chunks() -> Iterator[bytes]:
                while True:
                    try:
                        chunk = source.read(COPY_CHUNK_BYTES)
                    except OSError as err:
                        raise SourceFileError(err) from err
                    if not chunk:
                        return
                    yield chunk

            with mapped_os_errors(f"put {key}"):
                self._write_atomic(key, chunks(), metadata)
        finally:
            source.close()

    def _get_bytes(self, key: str) -> bytes:
        with mapped_os_errors(f"get {key}"):
            self._require_bucket()
            try:
                with open(self._path(key), "rb") as f:
                    return f.read()
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                raise ObjectNotFound(key) from None

    def _head(self, key: str) -> ObjectInfo | None:
        with mapped_os_errors(f"head {key}"):
            self._require_bucket()
            path = self._path(key)
            try:
                st = os.stat(path)
                if not os.path.isfile(path):
                    return None
                return ObjectInfo(key, st.st_size, self._get_metadata(path))
            except (FileNotFoundError, NotADirectoryError):
                return None

    def _list_keys(self, prefix: str, limit: int) -> list[str]:
        with mapped_os_errors(f"list {prefix}"):
            self._require_bucket()
            # Walk only the deepest directory the prefix names completely.
            base = prefix.rsplit("/", 1)[0] + "/" if "/" in prefix else ""
            start = os.path.join(self.bucket_dir, *base.split("/")[:-1])
            found: list[str] = []
            pending = [(start, base)]
            while pending:
                directory, rel = pending.pop()
                try:
                    entries = list(os.scandir(directory))
                except (FileNotFoundError, NotADirectoryError):
                    continue
                for entry in entries:
                    if _TEMP_NAME.fullmatch(entry.name):
                        continue
                    key = rel + entry.name
                    if entry.is_dir(follow_symlinks=False):
                        if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                            pending.append((entry.path, key + "/"))
                    elif entry.is_file(follow_symlinks=False) and key.startswith(prefix):
                        found.append(key)
                        if len(found) > limit:
                            raise PermanentStoreError(
                                f"more than {limit} keys under {prefix!r}",
                                code="TooManyKeys",
                            )
            return sorted(found)

    def _delete(self, key: str) -> None:
        with mapped_os_errors(f"delete {key}"):
            self._require_bucket()
            path = self._path(key)
            try:
                if os.path.isdir(path):
                    return
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError):
                return
            _fsync_dir(os.path.dirname(path))

    # -- the ObjectStore API -------------------------------------------------------

    async def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        check_key(key)
        await asyncio.to_thread(self._put_bytes, key, bytes(data), metadata)

    async def put_file(
        self,
        key: str,
        path: str,
        *,
        content_type: str,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        check_key(key)
        await asyncio.to_thread(self._put_file, key, path, metadata)

    async def get_bytes(self, key: str) -> bytes:
        check_key(key)
        return await asyncio.to_thread(self._get_bytes, key)

    async def head(self, key: str) -> ObjectInfo | None:
        check_key(key)
        return await asyncio.to_thread(self._head, key)

    async def list_keys(self, prefix: str, *, limit: int = 100_000) -> list[str]:
        check_prefix(prefix)
        return await asyncio.to_thread(self._list_keys, prefix, limit)

    async def delete(self, key: str) -> None:
        check_key(key)
        await asyncio.to_thread(self._delete, key)

    async def close(self) -> None:
        return None


__all__ = ["LocalStore", "check_key", "check_prefix"]
