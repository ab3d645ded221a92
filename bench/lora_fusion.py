"""A rank-384 LoRA fused into the 19B transformer: ltx-core's fusion vs the farm's, on one GPU.

Random weights at the real shape (`bench/anchor/official_forward.py`), a random LoRA of the distilled LoRA's
rank on every layer `apply_fp8_linears` turns to FP8 (its factors already on the GPU, as the worker's prefetch
leaves them). For the FP8 model: `LoraFusion.fuse` through ltx-core's `apply_loras` (`fp8_kernels=False`)
and through `ltx2.fp8_lora_fusion`, timed (median of `ITERS`, each fuse followed by the exact restore), and
every fused weight and scale of the second compared with the first bit for bit. For scale, the same LoRA
into the bf16 model (ltx-core's bf16 fusion, unchanged).

    python bench/lora_fusion.py          # rows → $OUT/lora_fusion.json
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from forward_speed import save_rows
from gang_forward import anchor
from ltx_core.loader import StateDict

from ltx2.fp8_linear import FP8, apply_fp8_linears, bitwise_equal
from ltx2.lora import LoraFusion, LoraSpec

RANK = int(os.environ.get("RANK", "384"))
ITERS = int(os.environ.get("ITERS", "3"))


def random_lora(model: torch.nn.Module, layers: list[str]) -> StateDict:
    """Factors A [rank, in] and B [out, rank] for each layer, bf16 on the model's GPU."""
    g = torch.Generator(device="cuda").manual_seed(2)
    sd = {}
    for name in layers:
        out_features, in_features = model.get_submodule(name).out_features, model.get_submodule(name).in_features
        sd[f"{name}.lora_A.weight"] = torch.randn(RANK, in_features, generator=g, device="cuda").mul_(0.01).bfloat16()
        sd[f"{name}.lora_B.weight"] = torch.randn(out_features, RANK, generator=g, device="cuda").mul_(0.01).bfloat16()
    return StateDict(
        sd=sd, device=torch.device("cuda"), size=sum(t.nbytes for t in sd.values()), dtype={torch.bfloat16}
    )


def timed_fusions(fusion: LoraFusion) -> dict:
    """Host and synced seconds of `fuse` (median of ITERS after one warm-up), and its peak memory above the
    model's."""
    host, synced, peaks = [], [], []
    for i in range(ITERS + 1):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        fusion.fuse()
        returned = time.perf_counter()
        torch.cuda.synchronize()
        done = time.perf_counter()
        if i:
            host.append(returned - started)
            synced.append(done - started)
            peaks.append((torch.cuda.max_memory_allocated() - base) / 2**30)
        fusion.unfuse()
    return {
        "host_s": round(sorted(host)[len(host) // 2], 3),
        "fuse_s": round(sorted(synced)[len(synced) // 2], 3),
        "all_fuse_s": [round(s, 3) for s in synced],
        "extra_peak_gib": round(max(peaks), 2),
    }


def main() -> None:
    out = Path(os.environ.get("OUT", "bench/results"))
    info = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    info["rank"] = RANK
    rows = []
    model, _ = anchor.build_model("default")
    layers = apply_fp8_linears(model)
    lora = random_lora(model, layers)
    info["layers"] = len(layers)
    info["lora_gib"] = round(lora.size / 2**30, 2)
    info["fp8_weight_gib"] = round(sum(p.nbytes for p in model.parameters() if p.dtype == FP8) / 2**30, 2)
    originals: dict[str, torch.Tensor] = {}  # one host backup for both fusions (the worker keeps one too)

    def fusion(fp8_kernels: bool) -> LoraFusion:
        spec = [LoraSpec("bench-lora")]
        return LoraFusion(model, spec, loader=lambda _path: lora, originals=originals, fp8_kernels=fp8_kernels)

    official = fusion(fp8_kernels=False)
    rows.append({"model": "fp8", "fusion": "ltx-core apply_loras", **timed_fusions(official)})
    print(json.dumps(rows[-1]), flush=True)
    save_rows(out, "lora_fusion.json", info, rows)

    official.fuse()
    params = dict(model.named_parameters())
    reference = {name: params[name].detach().clone() for name in official.targets}
    official.unfuse()

    ours = fusion(fp8_kernels=True)
    rows.append({"model": "fp8", "fusion": "ltx2.fp8_lora_fusion (Triton)", **timed_fusions(ours)})
    ours.fuse()
    differ = [name for name in ours.targets if not bitwise_equal(params[name].detach(), reference[name])]
    ours.unfuse()
    rows[-1]["tensors_compared"] = len(ours.targets)
    rows[-1]["tensors_differing"] = len(differ)
    rows[-1]["first_differing"] = differ[:5]
    rows[-1]["speedup"] = round(rows[0]["fuse_s"] / rows[-1]["fuse_s"], 2)
    print(json.dumps(rows[-1]), flush=True)
    save_rows(out, "lora_fusion.json", info, rows)

    del reference, ours, official, model, params, lora
    originals.clear()
    gc.collect()
    torch.cuda.empty_cache()
    model, _ = anchor.build_model("default")  # bf16, for scale: ltx-core's bf16 fusion
    lora = random_lora(model, layers)
    rows.append({"model": "bf16", "fusion": "ltx-core apply_loras", **timed_fusions(fusion(fp8_kernels=True))})
    print(json.dumps(rows[-1]), flush=True)
    save_rows(out, "lora_fusion.json", info, rows)
    print(json.dumps(info))


if __name__ == "__main__":
    main()
