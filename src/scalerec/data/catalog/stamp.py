"""A write stamp shared by every process on one machine: 8 bytes in a memory-mapped file beside the
database, rewritten with a fresh random value after each commit of a kind of write.

A reader that sees the stamp it saw last knows that no writer of this code committed since its last
read of the table (the writer rewrites the stamp after its commit and before it acknowledges), so
it skips the query; fresh random values (never a counter) mean two racing writers cannot leave the
stamp at a value a reader already saw.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path


class WriteStamp:
    """``read()`` the current value (a memory load, no system call); ``bump()`` after a commit.
    The mapping lives as long as the object (never closed under a reading thread)."""

    SIZE = 8

    def __init__(self, path: Path, *, create: bool) -> None:
        self.path = path
        self._map: mmap.mmap | None = None
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        try:
            fd = os.open(str(path), flags, 0o644)
        except OSError:  # a read-only data directory, or no stamp yet: readers query every time
            return
        try:
            if os.fstat(fd).st_size < self.SIZE:
                os.ftruncate(fd, self.SIZE)  # zero-filled; several processes racing here agree
            self._map = mmap.mmap(fd, self.SIZE)
        except OSError:
            self._map = None
        finally:
            os.close(fd)

    def read(self) -> bytes | None:
        """The stamp's bytes, or None where there is no stamp (then every read must query)."""
        m = self._map
        return None if m is None else m[: self.SIZE]

    def bump(self) -> None:
        m = self._map
        if m is not None:
            m[: self.SIZE] = os.urandom(self.SIZE)
