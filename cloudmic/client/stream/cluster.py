"""The dask path: blocks read and cut by the workers of a dask cluster (``scheduler=``).

The plan, the shares and the shuffle stay in the training process; only the reads move, so
the same exactly-once, equal-share and resume rules hold. It pays when the trainer has no
CPU to spare for decoding, or no route to the store, and the cluster does (bench/README).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cloudmic.client.stream.distribute import Take
from cloudmic.client.stream.reader import BlockReader, Cut


@contextmanager
def cluster_reads(scheduler: str, reader: BlockReader, takes: list[Take],
                  epoch: int) -> Iterator[Callable[[int], Any]]:
    """``submit(k)`` -> a future of ``takes[k]``'s cut block, computed on the cluster."""
    from distributed import Client

    with Client(scheduler, set_as_default=False) as client:
        remote = client.scatter(reader, broadcast=True)  # opens its store once per worker, per pass
        futures = []

        def submit(k: int) -> Any:
            fut = client.submit(_read, remote, takes[k], epoch, pure=False)
            futures.append(fut)
            return fut

        try:
            yield submit
        finally:
            client.cancel(futures)


def _read(reader: BlockReader, take: Take, epoch: int) -> Cut | None:
    """On a dask worker: read and cut one block (the reader keeps its store open there)."""
    return reader.read(take, epoch)
