"""Decoded pixels travel through Ray's object store as numpy buffers: out of band, bit for bit."""

from __future__ import annotations

import pickle

import pytest
import torch

from cluster.transport import pack, unpack


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.uint8])
def test_pack_round_trips_bit_for_bit_with_the_bytes_out_of_band(dtype):
    tensor = (torch.randn(1, 3, 5, 16, 24) * 100).to(dtype)
    buffers: list[pickle.PickleBuffer] = []
    stream = pickle.dumps(pack(tensor), protocol=5, buffer_callback=buffers.append)  # what Ray does with it
    assert len(stream) < 1024 and sum(memoryview(b).nbytes for b in buffers) == tensor.nbytes  # no pickled copy
    back = unpack(pickle.loads(stream, buffers=buffers))
    assert back.dtype == dtype and back.shape == tensor.shape
    assert torch.equal(back.view(torch.uint8), tensor.view(torch.uint8))
