"""Speed options for the transformer, applied to the unmodified ltx-core model by small functions.

- `fp8`: the transformer's linear layers hold FP8 (e4m3) weights in ltx-core's scaled-FP8 format (one
  scale per tensor; the official policy's layers stay bf16) and quantize their input on the fly (one
  scale per row on a GPU); the matmul is `torch._scaled_mm` (`ltx2.fp8_linear`). Halves the weights and
  runs the matmuls at the FP8 rate. Needs FP8 tensor cores (compute capability ≥ 8.9); the CPU runs the
  same code slowly (tests). Compiled FP8 blocks also get persistent row reductions and the FF GELU through
  a sigmoid (`KernelTuning`).
- `shared_timesteps`: a modality whose tokens all share one timestep (every token of a text-to-video
  job, or of any job without conditioning latents) reaches the model with one timestep per batch row
  instead of one per token. Same values, broadcast: ltx-core embeds the timestep per token and each block
  reads per-token shift/scale/gate tensors, which is most of what the fused norm/modulation kernels move.
- `split_kv_attention`: few-query, many-key attention calls (the video-to-audio layer) through torch's flash
  kernel, which splits the keys over the SMs (`ltx2.split_kv_attention`; CUDA only).
- `rope_cache`: the RoPE tables built once per positions tensor, not in every forward (`ltx2.rope_cache`).
- `compile`: each transformer block compiled by `torch.compile` with static shapes, so norms, RoPE,
  AdaLN modulation and gating fuse into fewer kernels (RoPE written so that it fuses: `ltx2.fusible_rope`;
  in bf16 blocks the FF's GELU in the matmul's epilogue: `ltx2.gelu_epilogue`).
  The first forward at a new shape compiles.
  Blocks are compiled in place (`Module.compile`), so parameter names (and LoRA fusion by name) do not
  change, and each attention layer gets the callable the official `AttentionFunction` enum dispatches
  to: dynamo cannot trace a call on the enum member, which split every block into seven graphs.

`SpeedOptions` holds what a worker is told (or defaults to); `KernelTuning`, nested in it, how compiled
blocks' kernels are written and tuned, which only the benchmarks set (bench/README.md has the measurements
behind every default here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from ltx_core.model.transformer.gelu_approx import GELUApprox
from ltx_core.model.transformer.modality import Modality


@dataclass(frozen=True)
class KernelTuning:
    """How compiled blocks' kernels are written and tuned. Each None is resolved from the speed options
    (`SpeedOptions.reductions_persistent`, `gelu_in_epilogue`, `gelu_by_sigmoid`); the benchmarks set them
    to compare (bench/forward_speed.py), workers never do."""

    compile_mode: str | None = None
    """`torch.compile` mode for the blocks (None: inductor's default; "max-autotune-no-cudagraphs" tunes the
    matmul kernels, "reduce-overhead" adds CUDA graphs)."""
    tune_fused_kernels: bool = False
    """Inductor's coordinate-descent tuning of the block sizes of the fused (Triton) kernels, without
    max-autotune's matmul search: the FP8 input casts are row reductions over 4-16k features."""
    persistent_reductions: bool | None = None
    """Let inductor write row reductions of up to 16k features (the FP8 input casts: a row's amax, then its
    cast) as persistent kernels that read the row once, each benchmarked against the looped kernel at the
    first call (`triton.multi_kernel`; inductor's own default: rows of up to 1k features). None: on in
    compiled blocks of inductor's default mode on GPUs (the other modes take no options): it pays with FP8
    matmuls, and in bf16 with the real checkpoint's split RoPE, whose q/k RMS norm + RoPE kernel then reads
    each row once.
    Such blocks skip inductor's FX graph cache: torch 2.11 fails to reload a cached graph holding a multi-kernel
    (a triton `JITFunction` without its hash lock), so every worker compiles them afresh."""
    sigmoid_gelu: bool | None = None
    """The FF layers' tanh GELU written through a sigmoid (`gelu_tanh_by_sigmoid`, the same function) in
    compiled blocks; None: with FP8 matmuls, where the FF output layer's per-row input cast made the fused
    GELU kernel compute-bound (the sigmoid halves it); in bf16 it does not pay."""
    gelu_epilogue: bool | None = None
    """With `compile`: the FF input layers' bias + tanh GELU in cuBLASLt's matmul epilogue (`ltx2.gelu_epilogue`)
    instead of a fused kernel re-reading the hidden state. None: in bf16 blocks (FP8 blocks fuse their GELU with
    the per-row input cast instead, `sigmoid_gelu`)."""
    fusible_rope: bool = True
    """With `compile`: the attention layers' RoPE written without in-place slice updates
    (`ltx2.fusible_rope`, the same operations), so inductor fuses it into one pass over q and k instead of
    materialising them between steps. Off only to compare."""


@dataclass(frozen=True)
class SpeedOptions:
    """What a worker runs its transformer with: the choices its flags make (`fp8`, `fp8_all_blocks`, `compile`,
    `fp8_attention`, `fa4_attention`, `batched_passes`) and the rest, on by default where they run
    (`default_speed_options`). All off here: `SpeedOptions()` is the official path."""

    fp8: bool = False
    """FP8 matmuls (`ltx2.fp8_linear`): opt-in, the outputs change by the FP8 rounding."""
    fp8_all_blocks: bool = False
    """With `fp8`: blocks 0 and 43-47 in FP8 too (`ltx2.fp8_linear.EVERY_BLOCK`), which the official FP8
    policy keeps in bf16: faster, its error on real weights not measured."""
    compile: bool = False
    fp8_attention: bool = False
    """The video self-attention in FP8 through cuDNN (`ltx2.fp8_attention`; Hopper or newer)."""
    fa4_attention: bool = False
    """bf16 attention through FlashAttention-4 (`ltx2.fa4_attention`; Hopper or Blackwell, `flash-attn-4`
    installed) for the attention calls of 8 192+ query and key tokens (the video self-attention at full
    resolution) not given another kernel (`fp8_attention` takes that layer first). On by default where it
    can run (`default_speed_options`)."""
    batched_passes: bool = False
    """A guided step's passes as one batched forward where the video sequence is short (stage 1 at half
    resolution; `ltx2.parallel.guidance.BatchedWhenShort`), set on the worker's pass runner rather than on
    the model. On by default on GPUs, where short forwards are bound by the host's kernel launches."""
    shared_timesteps: bool = False
    """One timestep per batch row where all of a modality's tokens share it (`apply_shared_timesteps`); on
    by default: the same numbers, less memory traffic per block."""
    split_kv_attention: bool = False
    """Few-query, many-key attention calls (the video-to-audio cross-attention) through torch's flash kernel,
    which splits the keys over the SMs (`ltx2.split_kv_attention`; CUDA only, other calls keep their kernel).
    On by default on GPUs (`default_speed_options`)."""
    rope_cache: bool = False
    """The RoPE tables computed once per positions tensor (`ltx2.rope_cache`) instead of at every forward:
    the same numbers, fewer kernels and one fewer blocking copy at the start of each forward. On by default
    (`default_speed_options`)."""
    tuning: KernelTuning = field(default_factory=KernelTuning)
    """How compiled blocks' kernels are written and tuned (benchmarks only)."""

    def reductions_persistent(self, gpu: bool = True) -> bool:
        """Whether compiled blocks get `persistent_reductions` (None resolved: on for Triton's kernels, i.e. on
        GPUs; inductor's CPU code has no such kernels, and the FX graph cache would be lost for nothing)."""
        wanted = self.tuning.persistent_reductions
        default = gpu and self.tuning.compile_mode is None
        return self.compile and (default if wanted is None else wanted)

    def gelu_in_epilogue(self) -> bool:
        """Whether compiled blocks get `gelu_epilogue` (None resolved)."""
        wanted = self.tuning.gelu_epilogue
        return self.compile and (not self.fp8 if wanted is None else wanted)

    def gelu_by_sigmoid(self) -> bool:
        """Whether compiled blocks get `sigmoid_gelu` (None resolved)."""
        wanted = self.tuning.sigmoid_gelu
        return self.compile and (self.fp8 if wanted is None else wanted)


def default_speed_options(device: torch.device | str) -> SpeedOptions:
    """What a worker runs with unless told otherwise: compiled blocks on a GPU (the same model, faster per
    forward after one compile per new shape), plain eager on the CPU (inductor's CPU compile costs more than
    it saves on the tiny model), FA4 attention where it runs, one timestep per row where tokens share it, a
    short step's guided passes batched on GPUs. FP8 is opt-in: it changes the numbers more."""
    from ltx2.fa4_attention import fa4_available

    gpu = torch.device(device).type == "cuda"
    return SpeedOptions(
        compile=gpu,
        batched_passes=gpu,
        shared_timesteps=True,
        fa4_attention=fa4_available(device),
        split_kv_attention=gpu,
        rope_cache=True,
    )


COMPILE_RECOMPILE_LIMIT = 1024
"""Dynamo's default (8 graphs per code object) is used up by a few shapes × 48 block instances, after
which it silently runs the blocks eagerly; a farm worker meets many shapes, so the limit is raised."""


BLOCK_INDEX_SOURCE = "L['self'].idx"
"""A block's index, which the official block passes to the perturbation checks (STG skips chosen blocks).
Dynamo treats a module's int attributes as constants and would compile one graph per block (48 per
shape); declared dynamic, the unperturbed passes of all blocks share one graph and the STG pass adds
one guard (`idx == k`), not 48 graphs."""


def traceable_attention(function: object) -> object:
    """What `AttentionFunction.__call__` would run for `function`, as an object dynamo can trace.

    Same kernels, same numbers: the enum's own dispatch (xformers if installed, else PyTorch SDPA for
    DEFAULT), only resolved once here instead of on every call. Other callables are returned as given.
    """
    from ltx_core.model.transformer import attention

    if not isinstance(function, attention.AttentionFunction):
        return function
    kind = function
    if kind is attention.AttentionFunction.DEFAULT:
        xformers = attention.memory_efficient_attention is not None
        kind = attention.AttentionFunction.XFORMERS if xformers else attention.AttentionFunction.PYTORCH
    return {
        attention.AttentionFunction.PYTORCH: attention.PytorchAttention,
        attention.AttentionFunction.XFORMERS: attention.XFormersAttention,
        attention.AttentionFunction.FLASH_ATTENTION_3: attention.FlashAttention3,
    }[kind]()


GELU_TANH_COEFF = 2 * math.sqrt(2 / math.pi)


def gelu_tanh_by_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """The official tanh-approximate GELU, 0.5x(1 + tanh(z)) with z = sqrt(2/pi)(x + 0.044715x^3), written as
    x * sigmoid(2z), the same function: compiled, a sigmoid is one fast exp and a division, where the tanh
    is libdevice's accurate tanh, which made the FF hidden layer's fused kernel compute-bound."""
    wide = x.float()
    return (wide * torch.sigmoid(GELU_TANH_COEFF * (wide + 0.044715 * wide * wide * wide))).to(x.dtype)


class SigmoidGELUApprox(GELUApprox):
    """ltx-core's `GELUApprox` with its GELU as `gelu_tanh_by_sigmoid`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gelu_tanh_by_sigmoid(self.proj(x))


def swap_module_class(
    velocity_model: torch.nn.Module,
    official: type[torch.nn.Module],
    replacement: type[torch.nn.Module],
    where: Callable[[torch.nn.Module], bool] = lambda _: True,
) -> torch.nn.Module:
    """Turn every module of exactly the `official` class (for which `where` holds) into `replacement`, a subclass
    with another forward, in place: the same object, parameters and names (LoRA fusion and checkpoints address
    them by name; compiled graphs read the live weights)."""
    for module in velocity_model.modules():
        if type(module) is official and where(module):
            module.__class__ = replacement
    return velocity_model


def apply_sigmoid_gelu(velocity_model: torch.nn.Module) -> torch.nn.Module:
    """Give every ltx-core `GELUApprox` (the FF layers' input projection + tanh GELU) the sigmoid form, in
    place: same parameters and names, same function (`gelu_tanh_by_sigmoid`)."""
    return swap_module_class(velocity_model, GELUApprox, SigmoidGELUApprox)


def shared_timestep(modality: Modality) -> Modality:
    """`modality` with one timestep per batch row (shape (B, 1, ...)) if every token of each row has the
    same one (the model broadcasts it), else unchanged. Costs one device sync: the check reads the values."""
    timesteps = modality.timesteps
    if timesteps.ndim < 2 or timesteps.shape[1] == 1:
        return modality
    first = timesteps[:, :1]
    if not torch.equal(timesteps, first.expand_as(timesteps)):
        return modality  # conditioning tokens (timestep 0) among noisy ones
    return replace(modality, timesteps=first)


def _share_timesteps(_: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    shared = lambda m: shared_timestep(m) if isinstance(m, Modality) else m  # noqa: E731
    return tuple(shared(a) for a in args), {k: shared(v) for k, v in kwargs.items()}


def apply_shared_timesteps(velocity_model: torch.nn.Module) -> torch.nn.Module:
    """Hand the velocity model one timestep per batch row where a modality's tokens share it (a forward
    pre-hook on the unmodified model; what wraps it, e.g. the X0 conversion, still sees per-token values)."""
    velocity_model.register_forward_pre_hook(_share_timesteps, with_kwargs=True)
    return velocity_model


def apply_compile(
    velocity_model: torch.nn.Module,
    backend: str = "inductor",
    mode: str | None = None,
    tune: bool = False,
    persistent_reductions: bool = False,
) -> torch.nn.Module:
    """Compile every transformer block in place (static shapes: a job's shapes repeat for every step).
    `tune` and `persistent_reductions` are inductor options of the default mode: torch.compile takes a
    mode or options, not both."""
    import torch._dynamo.config as dynamo_config
    from ltx_core.model.transformer.attention import Attention

    sources = {s for s in torch.compiler.config.dynamic_sources.split(",") if s}
    torch.compiler.config.dynamic_sources = ",".join(sorted(sources | {BLOCK_INDEX_SOURCE}))
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, COMPILE_RECOMPILE_LIMIT)
    dynamo_config.accumulated_recompile_limit = max(
        dynamo_config.accumulated_recompile_limit, 4 * COMPILE_RECOMPILE_LIMIT
    )
    for module in velocity_model.modules():
        if isinstance(module, Attention):
            module.attention_function = traceable_attention(module.attention_function)
    options = {"coordinate_descent_tuning": True} if tune else {}
    if persistent_reductions:
        options |= {"triton.multi_kernel": 1, "fx_graph_cache": False}
    if mode is not None and options:
        raise ValueError(f"compile mode {mode!r} takes no inductor options: turn off tune / persistent_reductions")
    for block in velocity_model.transformer_blocks:
        block.compile(dynamic=False, backend=backend, mode=mode, options=options or None)
    return velocity_model


def apply_speed_options(velocity_model: torch.nn.Module, options: SpeedOptions) -> torch.nn.Module:
    """Apply `options` to the model in place, in this order: the forward's hooks (timesteps, RoPE tables), the
    FP8 linear layers, the attention kernels (then split-KV, which wraps the kernel each layer got), the FF's
    GELU forms, the fusible RoPE, and compiling last, over the modules as they now are. `batched_passes` is
    not the model's: the worker sets its pass runner (`ltx2.configure`)."""
    if options.shared_timesteps:
        apply_shared_timesteps(velocity_model)
    if options.rope_cache:
        from ltx2.rope_cache import apply_rope_cache

        apply_rope_cache(velocity_model)
    if options.fp8:
        from ltx2.fp8_linear import EVERY_BLOCK, EXCLUDED_LAYER_SUBSTRINGS, apply_fp8_linears

        apply_fp8_linears(velocity_model, EVERY_BLOCK if options.fp8_all_blocks else EXCLUDED_LAYER_SUBSTRINGS)
    if options.fp8_attention:
        from ltx2.fp8_attention import apply_fp8_attention

        apply_fp8_attention(velocity_model)
    if options.fa4_attention:
        from ltx2.fa4_attention import apply_fa4_attention

        apply_fa4_attention(velocity_model)
    if options.split_kv_attention:  # after the layers' kernels are chosen, wrapping them
        from ltx2.split_kv_attention import apply_split_kv_attention

        apply_split_kv_attention(velocity_model)
    if options.gelu_by_sigmoid():
        apply_sigmoid_gelu(velocity_model)
    if options.gelu_in_epilogue():  # after the sigmoid form, which takes the layers it is given first
        from ltx2.gelu_epilogue import apply_gelu_epilogue

        apply_gelu_epilogue(velocity_model)
    if options.compile and options.tuning.fusible_rope:
        from ltx2.fusible_rope import apply_fusible_rope

        apply_fusible_rope(velocity_model)
    if options.compile:
        apply_compile(
            velocity_model,
            mode=options.tuning.compile_mode,
            tune=options.tuning.tune_fused_kernels,
            persistent_reductions=options.reductions_persistent(
                gpu=next(velocity_model.parameters()).device.type == "cuda"
            ),
        )
    return velocity_model
