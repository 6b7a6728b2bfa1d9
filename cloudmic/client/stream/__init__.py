"""The training stream: ``PatchStream``, ``Mix`` and the parts they share.

Read ``patch_stream.py`` first: it wires the parts (plan, sampling, distribute, reader,
pool, torch_adapter, cluster), each a module of its own.
"""

from cloudmic.client.stream.mix import Mix
from cloudmic.client.stream.patch_stream import PatchStream, merge_states
from cloudmic.client.stream.reader import is_transient

__all__ = ["Mix", "PatchStream", "is_transient", "merge_states"]
