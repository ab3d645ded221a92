"""Large tensors through Ray's object store as numpy buffers, not pickled tensors.

Ray keeps numpy arrays out of band (pickle protocol 5): one copy into shared memory, and readers on the node
map it without copying. A torch tensor is pickled through `torch.save` instead, with the GIL held on both
ends, so a worker's next decode tile would wait behind the last one's result and the GPU idle for seconds of
a large job's decode (bench/README.md, "Numbers behind the code").
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

_AS_INTEGERS = {torch.bfloat16: torch.int16}
"""dtypes numpy lacks, carried as integers of the same width (the bytes are unchanged)."""


@dataclass(frozen=True)
class PackedTensor:
    """A tensor's bytes as a numpy array, and the dtype to read them back as."""

    array: np.ndarray
    dtype: torch.dtype


def pack(tensor: torch.Tensor) -> PackedTensor:
    """A CPU tensor as a numpy array Ray stores out of band (no copy here)."""
    carrier = _AS_INTEGERS.get(tensor.dtype, tensor.dtype)
    return PackedTensor(tensor.detach().contiguous().view(carrier).numpy(), tensor.dtype)


def unpack(packed: PackedTensor) -> torch.Tensor:
    """The tensor again, over the same memory: read-only when it comes from the object store (do not write)."""
    with warnings.catch_warnings():  # torch warns on read-only buffers; the callers only read them
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(packed.array).view(packed.dtype)
