"""An in-memory `wal.fileops.FileOps` that knows what a power cut may leave behind.

`SimFs` models the durability rules the WAL relies on (POSIX plus what Linux file
systems in ordered-journal mode actually give):

- A file's *data* has a durable part and a volatile part. Writes only append, so the
  durable bytes are always a prefix of what readers see: ``data[:synced]``.
  ``AppendFile.sync()`` (fdatasync) makes everything written to that file durable;
  `truncate` is durable too (the real implementation fsyncs after ftruncate).
- A directory's *entries* (create by `open_append`, `makedirs`, `rename`, `unlink`)
  are volatile until `fsync_dir` of that directory. Pending operations of one
  directory are kept as an ordered list (a journal); a power cut keeps an arbitrary
  prefix of it. Each operation is atomic, so after a rename a file is under exactly
  one of its two names. `makedirs` is a pending operation of the *parent* directory:
  a directory that was created but whose parent was never fsynced may vanish,
  together with everything in it.
- Appends go to the inode, not the name: an open file keeps working after its name
  was renamed or unlinked, like a file descriptor does.
- Preallocated files (`open_preallocated`, docs/adr/0016) are zeros, durable, up to
  their allocated size, and the data overwrites them from byte 0. Growing the
  allocation (a write past its end) is a zero-fill plus fdatasync, so it also makes
  everything written before it durable. Readers see the data followed by the zero tail.

`crash(rng)` returns a NEW, fully durable `SimFs`: one possible disk after a power cut
right now. For every file that survives it keeps the durable bytes plus an arbitrary
prefix of the volatile suffix, sometimes with the last kept bytes torn (random garbage
or zeros, never touching durable bytes) and, in a preallocated file, sometimes with a
zero hole inside the kept volatile bytes (pages written back out of order), followed
by the durable zero tail; for every directory it applies an arbitrary
prefix of the pending operations. `crash_states(rng, n)` yields n such images.
`flush_page_cache()` makes all written file data durable (kernel writeback).

Fault injection:

- `fail_next(op, count, err=errno.EIO, partial=0)`: the next `count` calls of `op`
  (``"write"``, ``"sync"``, ``"rename"``, ``"unlink"``, ``"fsync_dir"``,
  ``"open_append"``, ``"open_preallocated"``, ``"truncate"``, ``"makedirs"``) raise ``OSError(err)``. A failed
  write first appends ``partial`` bytes of its data (a short write); a failed sync
  makes nothing durable.
- `arm_power_cut(after_ops, rng)`: let `after_ops` more mutating operations happen,
  then cut the power just before the next one: `cut_image` becomes `crash(rng)` of the
  state at that moment, and from then on every call (reads included, `close()`
  excluded) raises ``OSError(EIO)``, like a machine whose disk went away.
  `power_cut(rng)` does the same immediately. `on_power_cut`, if set, is called after
  the cut (from the thread that hit it) so a test can wake up without polling.

Inspection: `calls` (a Counter per operation), `mutations`, `unsynced_bytes(path)`,
`pending_dir_ops(dir)`, `durable_listdir(dir)`, `files()`.

All methods are thread-safe (the WAL calls them from its writer thread). Paths are
POSIX paths; only absolute paths are accepted. Cross-directory renames and renaming
directories are not modelled (the WAL does neither) and raise NotImplementedError.
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import random
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Literal

__all__ = ["SimAppendFile", "SimFs"]

MUTATING_OPS = frozenset(
    {
        "makedirs",
        "open_append",
        "open_preallocated",
        "write",
        "sync",
        "truncate",
        "rename",
        "unlink",
        "fsync_dir",
    }
)
HOLE_PROBABILITY = 0.2
TEAR_PROBABILITY = 0.3
TEAR_BYTES_MAX = 32


class _Inode:
    __slots__ = ("allocated", "data", "synced")

    def __init__(self, data: bytes = b"", synced: int = 0, allocated: int = 0) -> None:
        self.data = bytearray(data)
        self.synced = synced  # data[:synced] is durable
        self.allocated = allocated  # preallocated: durable zeros up to here, under the data

    def view(self) -> bytes:
        """What readers see: the data, then the rest of the zero-filled allocation."""
        return bytes(self.data) + bytes(max(0, self.allocated - len(self.data)))


class _Dir:
    __slots__ = ("durable", "entries", "pending")

    def __init__(self) -> None:
        self.entries: dict[str, _Node] = {}  # what lookups see now
        self.durable: dict[str, _Node] = {}  # what survives a power cut for sure
        self.pending: list[_DirOp] = []  # entries == durable + pending, applied in order


_Node = _Inode | _Dir


@dataclass(frozen=True, slots=True)
class _DirOp:
    kind: Literal["create", "rename", "unlink"]
    name: str
    node: _Node
    new_name: str | None = None

    def apply(self, entries: dict[str, _Node]) -> None:
        if self.kind == "create":
            entries[self.name] = self.node
        elif self.kind == "unlink":
            del entries[self.name]
        else:
            assert self.new_name is not None
            del entries[self.name]
            entries[self.new_name] = self.node  # replaces whatever had that name

    def describe(self) -> str:
        if self.kind == "rename":
            return f"rename {self.name} -> {self.new_name}"
        what = "mkdir" if isinstance(self.node, _Dir) else self.kind
        return f"{what} {self.name}"


@dataclass(slots=True)
class _Fault:
    err: int
    partial: int


def _pick(rng: random.Random, n: int) -> int:
    """A number in [0, n], with both ends much more likely than a uniform draw."""
    if n == 0:
        return 0
    roll = rng.random()
    if roll < 0.3:
        return 0
    if roll < 0.6:
        return n
    return rng.randint(0, n)


def _oserror(code: int, path: str, detail: str | None = None) -> OSError:
    return OSError(code, detail or os.strerror(code), path)


class SimAppendFile:
    """`wal.fileops.AppendFile` over a `SimFs` inode."""

    def __init__(self, fs: SimFs, inode: _Inode, path: str, chunk_bytes: int = 0) -> None:
        self._fs = fs
        self._inode = inode
        self._path = path
        self._closed = False
        self._chunk = chunk_bytes  # > 0: a preallocated file growing by this much

    def _grow(self, end: int) -> None:
        inode = self._inode
        if self._chunk and end > inode.allocated:
            # Zero-fill + fdatasync: durable zeros, and everything written so far too.
            inode.allocated = -(-end // self._chunk) * self._chunk
            inode.synced = len(inode.data)

    def write(self, data: bytes | memoryview) -> None:
        raw = bytes(data)
        with self._fs._lock:
            fault = self._fs._enter("write", self._path)
            if self._closed:
                raise _oserror(errno.EBADF, self._path)
            self._grow(len(self._inode.data) + len(raw))
            if fault is not None:
                self._inode.data += raw[: fault.partial]
                raise _oserror(fault.err, self._path, "injected write failure")
            self._inode.data += raw

    def sync(self) -> None:
        with self._fs._lock:
            fault = self._fs._enter("sync", self._path)
            if self._closed:
                raise _oserror(errno.EBADF, self._path)
            if fault is not None:
                raise _oserror(fault.err, self._path, "injected fdatasync failure")
            self._inode.synced = len(self._inode.data)

    def close(self) -> None:
        self._closed = True  # never fails, not even after a power cut


class SimFs:
    """In-memory `FileOps` with a durable/volatile model; see the module docstring."""

    def __init__(self, directories: Iterable[str] = ()) -> None:
        """`directories` exist from the start, durably (as if created long ago)."""
        self._lock = threading.RLock()
        self._root = _Dir()
        self._faults: dict[str, deque[_Fault]] = {}
        self._cut_after: int | None = None
        self._cut_rng: random.Random | None = None
        self.cut_image: SimFs | None = None
        """The disk as the armed power cut left it, once it happened."""
        self.dead = False
        """True after a power cut: every call fails with EIO."""
        self.on_power_cut: Callable[[], None] | None = None
        """Called (on whichever thread hit the cut) right after the power went off."""
        self.mutations = 0
        """Mutating operations performed so far."""
        self.calls: Counter[str] = Counter()
        """Calls per operation name (failed ones included), e.g. ``calls["sync"]``."""
        for path in directories:
            parent = self._root
            for name in self._parts(path):
                node = parent.entries.get(name)
                if node is None:
                    node = _Dir()
                    parent.entries[name] = parent.durable[name] = node
                if not isinstance(node, _Dir):
                    raise NotADirectoryError(errno.ENOTDIR, "not a directory", path)
                parent = node

    # ------------------------------------------------------------ fault control
    def fail_next(self, op: str, count: int = 1, *, err: int = errno.EIO, partial: int = 0) -> None:
        """The next `count` calls of `op` raise OSError(err); see the module docstring."""
        if op not in MUTATING_OPS:
            raise ValueError(f"cannot inject failures into {op!r}")
        with self._lock:
            queue = self._faults.setdefault(op, deque())
            queue.extend(_Fault(err, partial) for _ in range(count))

    def pending_faults(self, op: str) -> int:
        with self._lock:
            return len(self._faults.get(op, ()))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def arm_power_cut(self, after_ops: int, rng: random.Random) -> None:
        """Allow `after_ops` more mutating operations, then cut before the next one."""
        if after_ops < 0:
            raise ValueError("after_ops must be >= 0")
        with self._lock:
            if self.dead:
                raise RuntimeError("the power is already off")
            self._cut_after = after_ops
            self._cut_rng = rng

    @property
    def power_cut_armed(self) -> bool:
        return self._cut_after is not None

    def disarm_power_cut(self) -> None:
        with self._lock:
            self._cut_after = None
            self._cut_rng = None

    def power_cut(self, rng: random.Random) -> SimFs:
        """Cut the power now: return the disk image and fail every later call."""
        with self._lock:
            if self.dead:
                raise RuntimeError("the power is already off")
            image = self.crash(rng)
            self.cut_image = image
            self.dead = True
            self.disarm_power_cut()
        if self.on_power_cut is not None:
            self.on_power_cut()
        return image

    def _enter(self, op: str, path: str) -> _Fault | None:
        """Bookkeeping at the start of every call (with the lock held)."""
        self.calls[op] += 1
        if self.dead:
            raise _oserror(errno.EIO, path, "the power is off")
        if op not in MUTATING_OPS:
            return None
        if self._cut_after is not None:
            if self._cut_after == 0:
                assert self._cut_rng is not None
                self.power_cut(self._cut_rng)
                raise _oserror(errno.EIO, path, f"power cut before {op}")
            self._cut_after -= 1
        self.mutations += 1
        queue = self._faults.get(op)
        return queue.popleft() if queue else None

    # ------------------------------------------------------------------- crash
    def crash(self, rng: random.Random) -> SimFs:
        """A NEW SimFs: one state the disk may be in after a power cut now."""
        with self._lock:
            image = SimFs()
            image._root = self._crash_dir(self._root, rng, {})
            return image

    def crash_states(self, rng: random.Random, count: int) -> Iterator[SimFs]:
        """`count` independent crash images (each one `crash(rng)`)."""
        for _ in range(count):
            yield self.crash(rng)

    def _crash_dir(self, d: _Dir, rng: random.Random, memo: dict[int, _Inode]) -> _Dir:
        entries = dict(d.durable)
        for op in d.pending[: _pick(rng, len(d.pending))]:
            op.apply(entries)
        out = _Dir()
        for name in sorted(entries):
            node = entries[name]
            child: _Node
            if isinstance(node, _Dir):
                child = self._crash_dir(node, rng, memo)
            else:
                if id(node) not in memo:
                    memo[id(node)] = self._crash_inode(node, rng)
                child = memo[id(node)]
            out.entries[name] = out.durable[name] = child
        return out

    @staticmethod
    def _crash_inode(inode: _Inode, rng: random.Random) -> _Inode:
        keep = inode.synced + _pick(rng, len(inode.data) - inode.synced)
        content = bytearray(inode.data[:keep])
        volatile_kept = keep - inode.synced
        if volatile_kept and rng.random() < TEAR_PROBABILITY:
            torn = rng.randint(1, min(volatile_kept, TEAR_BYTES_MAX))
            garbage = bytes(torn) if rng.random() < 0.5 else rng.randbytes(torn)
            content[keep - torn : keep] = garbage
        if inode.allocated and volatile_kept > 1 and rng.random() < HOLE_PROBABILITY:
            start = rng.randrange(inode.synced, keep - 1)
            end = rng.randint(start + 1, keep - 1)
            content[start:end] = bytes(end - start)  # a later page reached the disk first
        content += bytes(max(0, inode.allocated - len(content)))
        return _Inode(bytes(content), len(content))

    # ------------------------------------------------------------ path helpers
    @staticmethod
    def _parts(path: str) -> list[str]:
        if not path.startswith("/"):
            raise ValueError(f"SimFs takes absolute paths, not {path!r}")
        return [p for p in posixpath.normpath(path).split("/") if p]

    def _lookup(self, path: str) -> _Node | None:
        node: _Node = self._root
        for name in self._parts(path):
            if not isinstance(node, _Dir):
                return None
            child = node.entries.get(name)
            if child is None:
                return None
            node = child
        return node

    def _dir(self, path: str) -> _Dir:
        node = self._lookup(path)
        if node is None:
            raise _oserror(errno.ENOENT, path)
        if not isinstance(node, _Dir):
            raise _oserror(errno.ENOTDIR, path)
        return node

    def _file(self, path: str) -> _Inode:
        node = self._lookup(path)
        if node is None:
            raise _oserror(errno.ENOENT, path)
        if isinstance(node, _Dir):
            raise _oserror(errno.EISDIR, path)
        return node

    def _parent(self, path: str) -> tuple[_Dir, str]:
        parts = self._parts(path)
        if not parts:
            raise _oserror(errno.EBUSY, path)
        return self._dir("/" + "/".join(parts[:-1])), parts[-1]

    # ------------------------------------------------------------ FileOps API
    def makedirs(self, path: str) -> None:
        with self._lock:
            self._check(self._enter("makedirs", path), path)
            node: _Node = self._root
            for name in self._parts(path):
                assert isinstance(node, _Dir)
                child = node.entries.get(name)
                if child is None:
                    child = _Dir()
                    op = _DirOp("create", name, child)
                    op.apply(node.entries)
                    node.pending.append(op)
                elif not isinstance(child, _Dir):
                    raise _oserror(errno.EEXIST, path)
                node = child

    def listdir(self, path: str) -> list[str]:
        with self._lock:
            self._enter("listdir", path)
            return sorted(self._dir(path).entries)

    def exists(self, path: str) -> bool:
        with self._lock:
            self._enter("exists", path)
            return self._lookup(path) is not None

    def file_size(self, path: str) -> int:
        with self._lock:
            self._enter("file_size", path)
            return len(self._file(path).view())

    def read_bytes(self, path: str) -> bytes:
        with self._lock:
            self._enter("read_bytes", path)
            return self._file(path).view()

    def open_read(self, path: str) -> BinaryIO:
        with self._lock:
            self._enter("open_read", path)
            return io.BytesIO(self._file(path).view())

    def open_append(self, path: str) -> SimAppendFile:
        with self._lock:
            self._check(self._enter("open_append", path), path)
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if isinstance(node, _Dir):
                raise _oserror(errno.EISDIR, path)
            if node is None:
                node = _Inode()
                op = _DirOp("create", name, node)
                op.apply(parent.entries)
                parent.pending.append(op)
            return SimAppendFile(self, node, path)

    def open_preallocated(self, path: str, chunk_bytes: int) -> SimAppendFile:
        """A new (or empty) file with `chunk_bytes` of durable zeros; see the docstring."""
        with self._lock:
            self._check(self._enter("open_preallocated", path), path)
            if chunk_bytes < 1:
                raise ValueError("chunk_bytes must be >= 1")
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if isinstance(node, _Dir):
                raise _oserror(errno.EISDIR, path)
            if node is not None and node.view():
                raise _oserror(errno.EEXIST, path, "not empty: preallocation needs a new file")
            if node is None:
                node = _Inode()
                op = _DirOp("create", name, node)
                op.apply(parent.entries)
                parent.pending.append(op)
            node.allocated = chunk_bytes
            return SimAppendFile(self, node, path, chunk_bytes)

    def truncate(self, path: str, size_bytes: int) -> None:
        with self._lock:
            self._check(self._enter("truncate", path), path)
            inode = self._file(path)
            inode.data = bytearray(inode.view())
            inode.allocated = 0
            if size_bytes < len(inode.data):
                del inode.data[size_bytes:]
            else:
                inode.data += bytes(size_bytes - len(inode.data))
            inode.synced = len(inode.data)  # ftruncate + fsync: all of the data is durable

    def rename(self, src: str, dst: str) -> None:
        with self._lock:
            self._check(self._enter("rename", src), src)
            src_dir, src_name = self._parent(src)
            dst_dir, dst_name = self._parent(dst)
            if src_dir is not dst_dir:
                raise NotImplementedError("SimFs models renames within one directory only")
            node = src_dir.entries.get(src_name)
            if node is None:
                raise _oserror(errno.ENOENT, src)
            if isinstance(node, _Dir):
                raise NotImplementedError("SimFs does not model renaming directories")
            if isinstance(src_dir.entries.get(dst_name), _Dir):
                raise _oserror(errno.EISDIR, dst)
            if src_name == dst_name:
                return
            op = _DirOp("rename", src_name, node, dst_name)
            op.apply(src_dir.entries)
            src_dir.pending.append(op)

    def unlink(self, path: str) -> None:
        with self._lock:
            self._check(self._enter("unlink", path), path)
            parent, name = self._parent(path)
            node = parent.entries.get(name)
            if node is None:
                raise _oserror(errno.ENOENT, path)
            if isinstance(node, _Dir):
                raise _oserror(errno.EISDIR, path)
            op = _DirOp("unlink", name, node)
            op.apply(parent.entries)
            parent.pending.append(op)

    def fsync_dir(self, path: str) -> None:
        with self._lock:
            self._check(self._enter("fsync_dir", path), path)
            d = self._dir(path)
            d.durable = dict(d.entries)
            d.pending.clear()

    @staticmethod
    def _check(fault: _Fault | None, path: str) -> None:
        if fault is not None:
            raise _oserror(fault.err, path, "injected failure")

    def flush_page_cache(self) -> None:
        """The kernel wrote every file's data back (what ~30 s of writeback does): all
        written bytes of reachable files become durable. Directory entries do not."""
        with self._lock:
            stack = [self._root]
            while stack:
                for node in stack.pop().entries.values():
                    if isinstance(node, _Dir):
                        stack.append(node)
                    else:
                        node.synced = len(node.data)

    # ------------------------------------------------------------ inspection
    def unsynced_bytes(self, path: str) -> int:
        """Bytes of `path` that a power cut may lose."""
        with self._lock:
            inode = self._file(path)
            return len(inode.data) - inode.synced

    def pending_dir_ops(self, path: str) -> list[str]:
        """Directory operations of `path` not made durable by fsync_dir yet, oldest first."""
        with self._lock:
            return [op.describe() for op in self._dir(path).pending]

    def durable_listdir(self, path: str) -> list[str]:
        """The names `path` is sure to hold after a power cut (its durable entries)."""
        with self._lock:
            return sorted(self._dir(path).durable)

    def files(self) -> dict[str, bytes]:
        """Every file reachable now, path -> content (what readers see)."""
        with self._lock:
            out: dict[str, bytes] = {}
            stack: list[tuple[str, _Dir]] = [("", self._root)]
            while stack:
                prefix, d = stack.pop()
                for name, node in d.entries.items():
                    path = f"{prefix}/{name}"
                    if isinstance(node, _Dir):
                        stack.append((path, node))
                    else:
                        out[path] = node.view()
            return dict(sorted(out.items()))
