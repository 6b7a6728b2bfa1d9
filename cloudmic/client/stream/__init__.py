"""The training stream: ``PatchStream``, ``Mix`` and the parts they share.

Read ``patch_stream.py`` first: it wires the parts (plan, sampling, distribute, epochs,
reader, pool, torch_adapter, cluster), each a module of its own. The names below load on
first use, so a dask worker or scheduler that unpickles a block read (``cluster.py``,
``reader.py``) never imports torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloudmic.client.stream.mix import Mix
    from cloudmic.client.stream.patch_stream import PatchStream, merge_states
    from cloudmic.client.stream.reader import is_transient

_LAZY = {"Mix": "mix", "PatchStream": "patch_stream", "merge_states": "patch_stream",
         "is_transient": "reader"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        if name in ("Mix", "PatchStream"):  # loader workers' server: before torch loads here
            from cloudmic.client.stream.workers import start_on_first_use

            start_on_first_use()
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["Mix", "PatchStream", "is_transient", "merge_states"]
