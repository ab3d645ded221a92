"""How exact are the gang modes at the real 19B width on GPUs? Two measurements, official model code.

1. bf16 noise floor: the official forward with two valid SDPA kernels (cuDNN, the default, and flash)
   differs by some relative error; a gang mode is as exact as bf16 allows when its error is of that size.
2. float32 at the real width (4096 video / 2048 audio, 32 heads) and fewer layers (LAYERS, default 8):
   sequence- and guidance-parallel against one GPU, where rounding no longer hides a real mistake.

    GPUS=2 SIZES=704x1280x121 python bench/gang_exactness.py   # rows → $OUT/gang_exactness.json
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gang_forward import anchor, build, guided_inputs, rel
from ltx_core.model.transformer import X0Model
from torch.nn.attention import SDPBackend, sdpa_kernel

from ltx2.parallel.group import free_loopback_port, init_gang_group
from ltx2.parallel.guidance import DistributedPassRunner, run_sequential
from ltx2.parallel.sequence import apply_sequence_parallel, sequence_parallel


def rank_main(rank: int, world: int, port: int, shape: tuple[int, int, int], out: str) -> None:
    device = torch.device("cuda", rank)
    init_gang_group(rank, world, port, device)
    anchor.DEV = device
    rows: list[dict] = []
    for dtype, layers in ((torch.bfloat16, 48), (torch.float32, int(os.environ.get("LAYERS", "8")))):
        anchor.DT = dtype
        anchor.CONFIG["transformer"]["num_layers"] = layers
        model, _ = build()
        x0 = X0Model(model)
        sp = apply_sequence_parallel(model, rank, world)
        v, a, passes = guided_inputs(*shape)
        with torch.inference_mode():
            ref = x0(v, a, None)
            step = run_sequential(x0, passes) if rank == 0 else None
            with sequence_parallel(sp):
                out_sp = x0(v, a, None)
            out_g = DistributedPassRunner(rank, world)(x0, passes)
            if rank == 0:
                row = {"dtype": str(dtype).removeprefix("torch."), "layers": layers, "shape": list(shape)}
                if dtype == torch.bfloat16:
                    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                        flash = x0(v, a, None)
                    row["official_cudnn_vs_flash"] = rel(flash[0], ref[0])
                row["sequence_vs_single"] = rel(out_sp[0], ref[0])
                row["sequence_audio_vs_single"] = rel(out_sp[1], ref[1])
                row["guidance_vs_single"] = max(rel(o[0], s[0]) for o, s in zip(out_g, step, strict=True))
                rows.append(row)
                print(json.dumps(row), flush=True)
        del model, x0, v, a, passes, ref
        torch.cuda.empty_cache()
        dist.barrier()
    if rank == 0:
        info = {"device": torch.cuda.get_device_name(0), "gpus": world, "date": time.strftime("%Y-%m-%d")}
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gang_exactness.json").write_text(json.dumps({"info": info, "rows": rows}, indent=1))
    dist.destroy_process_group()


def main() -> None:
    world = int(os.environ.get("GPUS", str(torch.cuda.device_count())))
    shape = tuple(map(int, os.environ.get("SIZES", "704x1280x121").split(",")[0].split("x")))
    out = os.environ.get("OUT", "bench/results")
    mp.spawn(rank_main, args=(world, free_loopback_port(), shape, out), nprocs=world, join=True)


if __name__ == "__main__":
    main()
