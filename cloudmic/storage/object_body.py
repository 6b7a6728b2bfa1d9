"""An object's bytes, readable while they arrive.

A reader that needs a whole object (a tar shard) should not wait for its last byte before
decoding the first record, nor hold a streamed HTTP body open behind a slow consumer (the
store would time it out). So one thread drains the body of a single GET as fast as it
comes, and the reader blocks only until the bytes it asks for are there. A local file has
no such timeout: its body holds only ``max_held`` bytes ahead of the reader.
"""

from __future__ import annotations

import io
import threading
from collections import deque


class BodyClosed(Exception):
    """The reader closed the body: the thread filling it stops."""


class ObjectBody(io.RawIOBase):
    """A read-only file filled by :meth:`feed` from another thread, ended by :meth:`finish`;
    ``max_held``: :meth:`feed` waits while the body holds that many unread bytes."""

    def __init__(self, name: str, max_held: int | None = None) -> None:
        super().__init__()
        self.name = name
        self._pieces: deque[memoryview] = deque()
        self._held, self._max_held = 0, max_held
        self._cond = threading.Condition()
        self._done = False
        self._error: BaseException | None = None

    def feed(self, data: bytes) -> None:
        """More bytes, in order; raises :class:`BodyClosed` once the reader has gone."""
        with self._cond:
            while (self._max_held is not None and self._held >= self._max_held
                   and not self.closed):
                self._cond.wait()
            if self.closed:
                raise BodyClosed(self.name)
            if data:
                self._pieces.append(memoryview(data))
                self._held += len(data)
                self._cond.notify_all()

    def finish(self, error: BaseException | None = None) -> None:
        """No more bytes; ``error``: why, raised to the reader after the bytes before it."""
        with self._cond:
            if not self._done:
                self._done, self._error = True, error
            self._cond.notify_all()

    def readable(self) -> bool:
        return True

    def readinto(self, buf: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(buf).cast("B")
        with self._cond:
            while not self._pieces and not self._done and not self.closed:
                self._cond.wait()
            if self.closed:
                raise ValueError(f"{self.name}: read from a closed body")
            n = 0
            while self._pieces and n < len(out):
                piece = self._pieces[0]
                k = min(len(piece), len(out) - n)
                out[n:n + k] = piece[:k]
                n += k
                if k == len(piece):
                    self._pieces.popleft()
                else:
                    self._pieces[0] = piece[k:]
            self._held -= n
            self._cond.notify_all()  # a feed waiting for room
            if n == 0 and self._error is not None:
                raise self._error
            return n

    def close(self) -> None:
        """Drop what is held; a reader waiting gets ValueError, the filling thread
        :class:`BodyClosed` at its next :meth:`feed`."""
        with self._cond:
            super().close()
            self._pieces.clear()
            self._held = 0
            self._cond.notify_all()
