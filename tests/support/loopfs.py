"""Loop-device file systems for power-cut and disk-full tests (root only).

    reason = missing_root_tools("losetup", "mount", "mkfs.ext4")
    if reason: pytest.skip(reason)
    with contextlib.ExitStack() as stack:
        scratch = stack.enter_context(snapshot_scratch(tmp_path / "scratch"))
        make_image(scratch.path / "img", 64 * MIB)
        mount = stack.enter_context(LoopMount(scratch.path / "img", tmp_path / "mnt"))
        ...
        scratch.snapshot(scratch.path / "img", scratch.path / "cut")   # the power cut

What a copy of a loop device's backing file holds. The loop driver turns every block
write it receives into a write to the backing file. Dirty pages of the file system
mounted *on* the loop device have not been written to the device yet, so they are not
in the backing file: a copy holds what the device holds, which is what survives a
power cut. An `fdatasync` on the mounted file system writes the data (and, for ext4,
the journal commit) to the device and waits for it: after it, the copy has the data.

A copy must also be an instant. `cp` reads the backing file block by block while the
device goes on writing (journal commits, checkpoints, writeback), so it can pair an
old inode-table block with a journal whose tail has since moved past the transaction
that updated it, which no power cut can produce and which can lose fsynced metadata.
So the backing file lives on a small XFS image mounted from `tmp` (`snapshot_scratch`)
and the cut is `cp --reflink=always` (FICLONE): XFS takes the source's inode lock, so
the loop driver's writes wait while the clone is made. Without mkfs.xfs the scratch is
a plain directory and the copy is a `cp`, reported as `snapshot="copy"`.

Cleanup never depends on the test passing: every context manager here unmounts (lazily
if busy) and detaches its loop device on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
SCRATCH_BYTES = 768 * MIB
"""The XFS scratch image (sparse: only what is written takes space)."""
UMOUNT_ATTEMPTS = 20
UMOUNT_PAUSE_S = 0.05


def missing_root_tools(*tools: str) -> str | None:
    """Why loop-device tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (loop devices and mounts)"
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return f"needs {', '.join(missing)} (./dev installs them as root)"
    if not os.path.exists("/dev/loop-control"):
        return "needs loop devices (/dev/loop-control is missing)"
    return None


def run(
    cmd: Sequence[str | os.PathLike[str]], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a command; a failure raises with its output."""
    done = subprocess.run(
        [os.fspath(c) for c in cmd], capture_output=True, text=True, timeout=120, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done


def make_image(
    path: Path, size_bytes: int, *, fs: str = "ext4", mkfs_args: Sequence[str] = ()
) -> None:
    """A sparse file of `size_bytes` holding a fresh file system."""
    with open(path, "wb") as f:
        f.truncate(size_bytes)
    if fs == "ext4":
        # -m 0: no blocks reserved for root (the node runs as root in CI: statvfs's
        # f_bavail would otherwise differ from what root can really write).
        run(["mkfs.ext4", "-q", "-F", "-m", "0", *mkfs_args, path])
    elif fs == "xfs":
        run(["mkfs.xfs", "-q", "-f", *mkfs_args, path])
    elif fs == "btrfs":
        run(["mkfs.btrfs", "-q", "-f", *mkfs_args, path])
    else:
        raise ValueError(f"unknown file system {fs!r}")


def fsck(image: Path, fs: str = "ext4") -> tuple[int, str]:
    """Check and repair an unmounted image; (exit code, output). For e2fsck 0 is
    clean, 1 is "errors corrected" (a journal replay counts), 4+ is trouble."""
    if fs == "ext4":
        done = run(["e2fsck", "-f", "-y", image], check=False)
    elif fs == "xfs":
        done = run(["xfs_repair", image], check=False)
    else:
        done = run(["btrfs", "check", image], check=False)
    return done.returncode, done.stdout + done.stderr


def _umount(mountpoint: Path) -> None:
    for _ in range(UMOUNT_ATTEMPTS):
        if not os.path.ismount(mountpoint):
            return
        if run(["umount", mountpoint], check=False).returncode == 0:
            return
        time.sleep(UMOUNT_PAUSE_S)  # a just-killed process may still hold a file
    run(["umount", "-l", mountpoint], check=False)


class LoopMount:
    """Attach `image` to a free loop device and mount it at `mountpoint` (created);
    on exit unmount (lazily if still busy) and detach, whatever happened."""

    def __init__(self, image: Path, mountpoint: Path, *, options: str | None = None) -> None:
        self.image = image
        self.mountpoint = mountpoint
        self.options = options
        self.device: str | None = None

    def __enter__(self) -> LoopMount:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.device = run(["losetup", "--find", "--show", self.image]).stdout.strip()
        try:
            opts = ["-o", self.options] if self.options else []
            run(["mount", *opts, self.device, self.mountpoint])
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        _umount(self.mountpoint)
        if self.device is not None:
            run(["losetup", "--detach", self.device], check=False)
            self.device = None

    def __exit__(self, *exc: object) -> None:
        self.close()

    def free_bytes(self) -> int:
        st = os.statvfs(self.mountpoint)
        return st.f_bavail * st.f_frsize


@dataclass
class Scratch:
    """Where images live; `snapshot` copies one as an instant when it can."""

    path: Path
    method: str  # "reflink" (atomic, on XFS) or "copy" (cp, not an instant)

    def snapshot(self, src: Path, dst: Path) -> None:
        if self.method == "reflink":
            run(["cp", "--reflink=always", src, dst])
        else:
            run(["cp", "--sparse=always", src, dst])


@contextlib.contextmanager
def snapshot_scratch(path: Path) -> Iterator[Scratch]:
    """A directory for images: an XFS mount (reflink snapshots) when mkfs.xfs exists,
    else a plain directory. Unmounted and detached on exit."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mkfs.xfs") is None:
        yield Scratch(path, "copy")
        return
    image = path.parent / f"{path.name}.xfs"
    make_image(image, SCRATCH_BYTES, fs="xfs", mkfs_args=["-m", "reflink=1"])
    try:
        with LoopMount(image, path):
            yield Scratch(path, "reflink")
    finally:
        image.unlink(missing_ok=True)
