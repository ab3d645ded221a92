"""The guided passes of one denoising step, run one after another, batched, or spread over a gang.

ltx-pipelines' `multi_modal_guider_factory_denoising_func` runs up to four transformer passes per step
(conditional, unconditional, STG-perturbed, modality-isolated), one after another at batch size one, and
combines them with the official `MultiModalGuider.calculate`. Here the same passes are first *listed*
(`guided_passes`, the same modalities and perturbations the official function builds), then handed to a
`PassRunner`, then combined by the same official `calculate`. Runners:

- `run_sequential`: the official order at batch one (bit-identical to the official function);
- `run_batched`: passes with the same enabled flags stacked into one forward (fewer, larger matmuls);
- `BatchedWhenShort`: `run_batched` for short sequences (stage 1 at half resolution), else one by one;
- `DistributedPassRunner`: rank r runs passes r, r+N, ... and the outputs are all-gathered, so every
  rank holds every pass and takes the same Euler step (guidance parallelism).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from ltx_core.components.guiders import MultiModalGuider, MultiModalGuiderFactory
from ltx_core.guidance.perturbations import (
    BatchedPerturbationConfig,
    Perturbation,
    PerturbationConfig,
    PerturbationType,
)
from ltx_core.model.transformer.modality import Modality
from ltx_core.types import LatentState
from ltx_pipelines.utils.helpers import modality_from_latent_state
from ltx_pipelines.utils.types import DenoisingFunc

PassOutput = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class GuidedPass:
    """One transformer pass of a guided step: which term of the guider it feeds, and its inputs."""

    term: str  # "cond" | "uncond" | "perturbed" | "isolated"
    video: Modality
    audio: Modality
    perturbation: PerturbationConfig | None = None


def guided_passes(
    video_guider: MultiModalGuider,
    audio_guider: MultiModalGuider,
    video_state: LatentState,
    audio_state: LatentState,
    v_context: torch.Tensor,
    a_context: torch.Tensor,
    sigma: torch.Tensor,
    step_index: int,
) -> list[GuidedPass]:
    """The passes `multi_modal_guider_denoising_func` runs for this step, in its order."""
    pos_video = modality_from_latent_state(
        video_state, v_context, sigma, enabled=not video_guider.should_skip_step(step_index)
    )
    pos_audio = modality_from_latent_state(
        audio_state, a_context, sigma, enabled=not audio_guider.should_skip_step(step_index)
    )
    passes = [GuidedPass("cond", pos_video, pos_audio)]
    if video_guider.do_unconditional_generation() or audio_guider.do_unconditional_generation():
        for guider in (video_guider, audio_guider):
            if guider.do_unconditional_generation() and guider.negative_context is None:
                raise ValueError("Negative context is required for unconditioned denoising")
        neg_v = video_guider.negative_context if video_guider.negative_context is not None else v_context
        neg_a = audio_guider.negative_context if audio_guider.negative_context is not None else a_context
        passes.append(
            GuidedPass(
                "uncond",
                modality_from_latent_state(video_state, neg_v, sigma),
                modality_from_latent_state(audio_state, neg_a, sigma),
            )
        )
    if video_guider.do_perturbed_generation() or audio_guider.do_perturbed_generation():
        skips = []
        if video_guider.do_perturbed_generation():
            skips.append(
                Perturbation(type=PerturbationType.SKIP_VIDEO_SELF_ATTN, blocks=video_guider.params.stg_blocks)
            )
        if audio_guider.do_perturbed_generation():
            skips.append(
                Perturbation(type=PerturbationType.SKIP_AUDIO_SELF_ATTN, blocks=audio_guider.params.stg_blocks)
            )
        passes.append(GuidedPass("perturbed", pos_video, pos_audio, PerturbationConfig(perturbations=skips)))
    if video_guider.do_isolated_modality_generation() or audio_guider.do_isolated_modality_generation():
        isolate = [
            Perturbation(type=PerturbationType.SKIP_A2V_CROSS_ATTN, blocks=None),
            Perturbation(type=PerturbationType.SKIP_V2A_CROSS_ATTN, blocks=None),
        ]
        passes.append(GuidedPass("isolated", pos_video, pos_audio, PerturbationConfig(perturbations=isolate)))
    return passes


PassRunner = Callable[[torch.nn.Module, Sequence[GuidedPass]], list[PassOutput]]


def run_sequential(transformer: torch.nn.Module, passes: Sequence[GuidedPass]) -> list[PassOutput]:
    """Each pass as its own batch-one forward, as the official function runs them."""
    outputs = []
    for p in passes:
        perturbations = None if p.perturbation is None else BatchedPerturbationConfig(perturbations=[p.perturbation])
        outputs.append(transformer(video=p.video, audio=p.audio, perturbations=perturbations))
    return outputs


def shared_positions(modalities: Sequence[Modality]) -> torch.Tensor:
    """The passes' positions as one batch: a broadcast view of their common tensor where they share one (every
    pass of a step does), so the batch keeps that tensor's identity and its cached RoPE tables
    (`ltx2.rope_cache`); else concatenated."""
    first = modalities[0].positions
    if first.shape[0] == 1 and all(m.positions is first for m in modalities):
        return first.expand(len(modalities), *first.shape[1:])
    return torch.cat([m.positions for m in modalities], dim=0)


def _stack(modalities: Sequence[Modality]) -> Modality:
    first = modalities[0]

    def cat(name: str) -> torch.Tensor | None:
        values = [getattr(m, name) for m in modalities]
        return None if values[0] is None else torch.cat(values, dim=0)

    sigma = torch.cat([m.sigma.reshape(-1) for m in modalities])  # per sample: the cross-modal AdaLN needs (B,)
    return replace(
        first,
        latent=cat("latent"),
        sigma=sigma,
        timesteps=cat("timesteps"),
        positions=shared_positions(modalities),
        context=cat("context"),
        context_mask=cat("context_mask"),
        attention_mask=cat("attention_mask"),
    )


def run_batched(transformer: torch.nn.Module, passes: Sequence[GuidedPass]) -> list[PassOutput]:
    """Passes that agree on which modalities are enabled run as one forward with a batch of passes."""
    outputs: list[PassOutput | None] = [None] * len(passes)
    groups: dict[tuple[bool, bool], list[int]] = {}
    for i, p in enumerate(passes):
        groups.setdefault((p.video.enabled, p.audio.enabled), []).append(i)
    for members in groups.values():
        if len(members) == 1:
            outputs[members[0]] = run_sequential(transformer, [passes[members[0]]])[0]
            continue
        chosen = [passes[i] for i in members]
        perturbations = BatchedPerturbationConfig(
            perturbations=[p.perturbation or PerturbationConfig.empty() for p in chosen]
        )
        video, audio = transformer(
            video=_stack([p.video for p in chosen]),
            audio=_stack([p.audio for p in chosen]),
            perturbations=perturbations,
        )
        for row, i in enumerate(members):
            outputs[i] = (video[row : row + 1], audio[row : row + 1])
    return [o for o in outputs if o is not None]


BATCHED_PASSES_MAX_TOKENS = 4096
"""Longest video sequence whose passes `BatchedWhenShort` batches. Short forwards are bound by the host's kernel
launches, so batching a step's passes pays at stage 1 of 704x1280 (3 520 tokens), for bf16 compiled blocks no
longer at 6 144 tokens, and not at full resolution; it costs some peak memory (bench/README.md, "Numbers behind
the code")."""


BATCHED_PASSES_MAX_TOKENS_FP8 = 6144
"""The same limit for a worker with FP8 matmuls and FP8 attention (`--fp8 --fp8-attention`), whose forwards are
shorter for the host to keep fed: at 6 144 tokens (stage 1 of 1024x1536) batching its passes still pays there,
where it does not for bf16 compiled blocks (bench/README.md). FP8 matmuls with bf16 attention are not measured
there: they keep the bf16 limit."""


def batched_passes_max_tokens(fp8: bool, fp8_attention: bool) -> int:
    """The `BatchedWhenShort` limit for a worker's speed options."""
    return BATCHED_PASSES_MAX_TOKENS_FP8 if fp8 and fp8_attention else BATCHED_PASSES_MAX_TOKENS


@dataclass(frozen=True)
class BatchedWhenShort:
    """Batch a step's passes (`run_batched`) where the video sequence is at most `max_video_tokens` long,
    else run them one by one (`run_sequential`): the worker default on GPUs (`SpeedOptions.batched_passes`)."""

    max_video_tokens: int = BATCHED_PASSES_MAX_TOKENS

    def __call__(self, transformer: torch.nn.Module, passes: Sequence[GuidedPass]) -> list[PassOutput]:
        short = passes[0].video.latent.shape[1] <= self.max_video_tokens
        return (run_batched if short else run_sequential)(transformer, passes)


@dataclass(frozen=True)
class DistributedPassRunner:
    """Guidance parallelism: this rank runs its share of the passes, then every rank gets every output.

    `lockstep` (for sharded weights, where every forward is a collective) makes every rank run the same
    number of batch-one forwards, padding a short share with a repeat of pass 0 whose output is dropped.
    """

    rank: int
    world_size: int
    lockstep: bool = False

    def __call__(self, transformer: torch.nn.Module, passes: Sequence[GuidedPass]) -> list[PassOutput]:
        slots = -(-len(passes) // self.world_size)
        mine = [passes[i] for i in range(self.rank, len(passes), self.world_size)]
        if self.lockstep:
            local = run_sequential(transformer, mine + [passes[0]] * (slots - len(mine)))[: len(mine)]
        else:
            local = run_batched(transformer, mine)
        gathered = []
        for modality in (0, 1):
            template = passes[0].video.latent if modality == 0 else passes[0].audio.latent
            stacked = template.new_zeros((slots, *template.shape[1:]))
            for slot, out in enumerate(local):
                stacked[slot] = out[modality][0]
            parts = [torch.empty_like(stacked) for _ in range(self.world_size)]
            dist.all_gather(parts, stacked)
            gathered.append(parts)
        # pass i was run by rank i % N as its (i // N)-th slot
        return [
            (
                gathered[0][i % self.world_size][i // self.world_size].unsqueeze(0),
                gathered[1][i % self.world_size][i // self.world_size].unsqueeze(0),
            )
            for i in range(len(passes))
        ]


def combine(guider: MultiModalGuider, passes: Sequence[GuidedPass], outputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The official combination of one modality's pass outputs (absent terms are 0.0, as upstream)."""
    terms: dict[str, torch.Tensor | float] = {"cond": 0.0, "uncond": 0.0, "perturbed": 0.0, "isolated": 0.0}
    for p, out in zip(passes, outputs, strict=True):
        terms[p.term] = out
    return guider.calculate(terms["cond"], terms["uncond"], terms["perturbed"], terms["isolated"])


def guided_denoising_func(
    video_guider_factory: MultiModalGuiderFactory,
    audio_guider_factory: MultiModalGuiderFactory | None,
    v_context: torch.Tensor,
    a_context: torch.Tensor,
    transformer: torch.nn.Module,
    run_passes: PassRunner = run_sequential,
) -> DenoisingFunc:
    """`multi_modal_guider_factory_denoising_func` with the passes run by `run_passes`."""
    last: list[torch.Tensor | None] = [None, None]
    sigma_values: list[float] | None = None

    def step(
        video_state: LatentState, audio_state: LatentState, sigmas: torch.Tensor, step_index: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal sigma_values
        if sigma_values is None:
            sigma_values = sigmas.detach().cpu().tolist()
        video_guider = video_guider_factory.build_from_sigma(sigma_values[step_index])
        audio_guider = (audio_guider_factory or video_guider_factory).build_from_sigma(sigma_values[step_index])
        skip_video, skip_audio = video_guider.should_skip_step(step_index), audio_guider.should_skip_step(step_index)
        if skip_video and skip_audio:
            return last[0], last[1]
        passes = guided_passes(
            video_guider, audio_guider, video_state, audio_state, v_context, a_context, sigmas[step_index], step_index
        )
        outputs = run_passes(transformer, passes)
        video = last[0] if skip_video else combine(video_guider, passes, [o[0] for o in outputs])
        audio = last[1] if skip_audio else combine(audio_guider, passes, [o[1] for o in outputs])
        last[0], last[1] = video, audio
        return video, audio

    return step
