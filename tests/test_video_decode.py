"""The whole-job tiled decode hands out each run of frames as soon as it is final, with ltx-core's numbers."""

from __future__ import annotations

import torch
from ltx_core.model.video_vae import decode_video

from ltx2.render import tiling_config
from ltx2.video_decode import decode_video_runs


def test_runs_match_ltx_core_bit_for_bit_and_come_one_group_earlier(resident):
    decoder = resident.video_decoder
    latent = torch.randn(1, 128, 9, 4, 6, generator=torch.Generator().manual_seed(3)).to(resident.dtype)  # 65 frames
    tiles = tiling_config((64, 32, 24, 8))  # 4 temporal groups of 2 x 3 spatial tiles
    groups_decoded = 0
    accumulate = type(decoder)._accumulate_temporal_group_into_buffer

    def counting(self, **kwargs):
        nonlocal groups_decoded
        groups_decoded += 1
        return accumulate(self, **kwargs)

    decoder._accumulate_temporal_group_into_buffer = counting.__get__(decoder)
    try:
        with torch.inference_mode():
            official, official_when = [], []
            for run in decode_video(latent, decoder, tiles, torch.Generator().manual_seed(0)):
                official.append(run)
                official_when.append(groups_decoded)
            groups_decoded = 0
            ours, ours_when = [], []
            for run in decode_video_runs(latent, decoder, tiles, torch.Generator().manual_seed(0)):
                ours.append(run)
                ours_when.append(groups_decoded)
    finally:
        del decoder._accumulate_temporal_group_into_buffer
    groups = len(official)
    assert groups == 4
    assert official_when == [2, 3, 4, 4]  # ltx-core: a group's frames after the next group is decoded
    assert ours_when == [1, 2, 3, 4]  # here: as soon as that group is decoded
    assert [len(r) for r in ours] == [len(r) for r in official]  # the same frames in each run
    assert torch.equal(torch.cat(ours), torch.cat(official))
    untiled = list(decode_video_runs(latent, decoder, None, torch.Generator().manual_seed(0)))
    assert len(untiled) == 1 and untiled[0].shape == torch.cat(official).shape
