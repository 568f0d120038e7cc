"""Folders that cannot be written, for the fault tests: read-only, or on a full disk.

Root ignores permissions, so a read-only folder is made the way this machine allows: ``chmod``
for a user; for root a read-only bind mount (``EROFS``, as a read-only share gives) or, where
mounting is not allowed, ``chattr +i`` (``EPERM``). A full disk is a small tmpfs, which needs
root. A test skips, saying why, where none of these works.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _run(*argv: str) -> bool:
    return subprocess.run(argv, capture_output=True).returncode == 0


def _chmod_tree(root: Path, writable: bool) -> None:
    for path in [root, *root.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | 0o200 if writable else mode & ~0o222)


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[str]:
    """``folder`` and everything in it cannot be written while inside; yields how."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        _chmod_tree(folder, writable=False)
        try:
            yield "chmod"
        finally:
            _chmod_tree(folder, writable=True)
    elif _run("mount", "--bind", str(folder), str(folder)):
        try:
            if not _run("mount", "-o", "remount,bind,ro", str(folder)):
                pytest.skip("root here may bind-mount but not remount read-only")
            yield "read-only bind mount"
        finally:
            _run("umount", "-l", str(folder))  # lazily: a test may still hold a database open in it
    elif _run("chattr", "-R", "+i", str(folder)):
        try:
            yield "chattr +i"
        finally:
            _run("chattr", "-R", "-i", str(folder))
    else:
        pytest.skip("running as root, which ignores chmod, where neither mount nor chattr +i is allowed")


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted on ``folder`` (root only; else the test is skipped)."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or not _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)):
        pytest.skip("a full disk is simulated with a small tmpfs, which needs root and mount here")
    try:
        yield folder
    finally:
        _run("umount", "-l", str(folder))


def fill(disk: Path) -> Path:
    """Fill ``disk`` to the last byte with one file; returns it (delete it to free the space)."""
    path = disk / "filler"
    chunk = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError:
            pass
        try:  # the last partial megabyte
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass
    return path
