"""A worker's resident models configured: speed options, the parallel mode and the OOM rung, in one order.

Everything that changes how a worker's models run goes through here, for a replica worker and a gang member
alike, in this fixed order (each step sees what the steps before it did):

Once, when the worker is built (`configure`):

1. What composes: a gang member runs without the speed options of `REPLICA_ONLY`, each for the reason given
   there (`composable`). The executors refuse those options for gangs up front from the same table
   (`cluster.worker_options.WorkerOptions.problems`), so a user never sees one silently dropped.
2. The speed options on the transformer (`ltx2.speed.apply_speed_options`: forward hooks, FP8 layers, attention
   kernels, compile last).
3. The pass runner: a short step's guided passes batched (`batched_passes`).
4. The parallel mode (`ltx2.parallel.modes.make_parallel_rank`): the sequence-parallel attention wraps the
   kernel step 2 chose; a sharded gang's FSDP2 splits the weights.
5. The OOM ladder's parking of block weights (as FP8, or streamed from host memory), over the weights as they
   now are; none for sharded weights, whose ladder has no such rungs (`jobs.fallback.ladder_for`).

Per render or task (`ConfiguredModels.running`):

6. The task's parallelism ('sequence' or 'guidance') switched on, for a gang member.
7. The job's OOM rung: Gemma in host memory, block weights parked, guided passes one by one (whichever pass
   runner step 3 or 6 put in place).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from jobs.fallback import reaches
from ltx2.checkpoint import CheckpointError
from ltx2.models import ResidentModels
from ltx2.offload import Fp8Blocks, StreamedBlocks
from ltx2.parallel.guidance import BatchedWhenShort, DistributedPassRunner, batched_passes_max_tokens, run_sequential
from ltx2.parallel.modes import ParallelMode, ParallelRank, make_parallel_rank
from ltx2.speed import SpeedOptions, apply_speed_options

REPLICA_ONLY: dict[str, str] = {
    "compile": "gang members run eager: compiled blocks would trace the gang's collectives, which is not verified",
    "fp8": "gang members keep the official bf16 layers: FP8 ones in the parallel modes are not verified",
    "fp8_all_blocks": "gang members keep the official bf16 layers: FP8 ones in the parallel modes are not verified",
    "fp8_attention": "a gang's parallel attention wraps the official kernel, the one its exactness is verified with",
    "fa4_attention": "a gang's parallel attention wraps the official kernel, the one its exactness is verified with",
    "batched_passes": "a guidance gang spreads a step's passes over its ranks itself; the other modes run them as "
    "upstream does",
}
"""Speed options that do not compose with a gang's parallel modes today, and why: a gang member runs without
them (`composable`), and a gang pool asked for one is refused."""


def check_parallel_checkpoint(checkpoint: Path | str, fp8: bool, parallel: ParallelMode | None) -> None:
    """Refuse an FP8 checkpoint (`fp8`) for a gang member (`parallel` not None): its layers are FP8 whatever the
    flags, and a gang's modes are verified with bf16 ones (`REPLICA_ONLY`)."""
    if fp8 and parallel is not None:
        raise CheckpointError(
            checkpoint,
            f"an FP8 checkpoint, for a gang: {REPLICA_ONLY['fp8']}",
            "use --placement replica, or the bf16 file of the model",
        )


def composable(speed: SpeedOptions, parallel: ParallelMode | None) -> SpeedOptions:
    """`speed` as a worker in `parallel` (None: a replica) runs it: a gang member's without `REPLICA_ONLY`."""
    return speed if parallel is None else replace(speed, **dict.fromkeys(REPLICA_ONLY, False))


@dataclass
class ConfiguredModels:
    """A worker's models after `configure`: what was applied, and what a job's rung switches per call."""

    models: ResidentModels
    speed: SpeedOptions
    """The speed options as applied (a gang member's without `REPLICA_ONLY`)."""
    parallel: ParallelRank | None
    """A gang member's parallel state; None for a replica."""
    fp8_weights: Fp8Blocks | None
    streaming: StreamedBlocks | None
    """The OOM ladder's FP8-weights and CPU-offload rungs, off until a job's rung asks for them (None: sharded
    weights, which are neither)."""

    @contextlib.contextmanager
    def running(self, rung: str | None, parallelism: str | None = None, text_encoder: bool = True) -> Iterator[None]:
        """Run the body with the task's `parallelism` (step 6) and then the job's OOM `rung` (step 7) switched on.
        `text_encoder`: place Gemma for the rung (a whole render moves it itself, after encoding)."""
        if parallelism is not None and self.parallel is None:
            raise ValueError(f"parallelism {parallelism!r} asked of a worker outside a gang: give None")
        parallel = self.parallel.running(parallelism) if self.parallel is not None else contextlib.nullcontext()
        with parallel, self._on_rung(rung, text_encoder):  # the rung over the pass runner the parallelism set
            yield

    @contextlib.contextmanager
    def _on_rung(self, rung: str | None, text_encoder: bool) -> Iterator[None]:
        """What a job's OOM-ladder rung changes while its render or one of its tasks runs: Gemma in host memory,
        block weights as FP8 or streamed from host memory (these stay so for the next job on the same rung:
        switching costs seconds), guided passes one by one (for this call only)."""
        models = self.models
        if text_encoder:
            models.text_encoder.to("cpu" if reaches(rung, "offload_text_encoder") else models.device)
        streamed = reaches(rung, "offload_transformer")  # streams the exact weights: FP8 adds nothing then
        fp8 = reaches(rung, "fp8_weights") and not streamed
        choice = [(p, wanted) for p, wanted in ((self.fp8_weights, fp8), (self.streaming, streamed)) if p is not None]
        if any(wanted for _, wanted in choice):
            models.loras.originals_copied()  # parking moves the weights the background copy reads
        for parking, wanted in choice:  # the unwanted one off first: never both at once
            if not wanted:
                parking.disable()
        for parking, wanted in choice:
            if wanted:
                parking.enable()
        runner = models.pass_runner
        if reaches(rung, "sequential_passes") and isinstance(runner, DistributedPassRunner) and not runner.lockstep:
            models.pass_runner = replace(runner, lockstep=True)  # batch-one forwards, one pass after another
        if reaches(rung, "sequential_passes") and isinstance(runner, BatchedWhenShort):
            models.pass_runner = run_sequential
        try:
            yield
        finally:
            models.pass_runner = runner


def configure(models: ResidentModels, speed: SpeedOptions, parallel: ParallelMode | None = None) -> ConfiguredModels:
    """Apply `speed` and the gang's `parallel` mode (None: a replica) to `models` in place, in the module's order
    (steps 1-5); the OOM rung is applied per call (`ConfiguredModels.running`)."""
    check_parallel_checkpoint(models.paths.checkpoint, models.variant.fp8, parallel)
    speed = composable(speed, parallel)
    if models.variant.fp8:  # an FP8 file's layers are FP8 whatever the flags: the options say so
        speed = replace(speed, fp8=True)
    velocity_model = models.transformer.velocity_model
    apply_speed_options(velocity_model, speed)
    if speed.batched_passes:
        models.pass_runner = BatchedWhenShort(batched_passes_max_tokens(speed.fp8, speed.fp8_attention))
    rank = make_parallel_rank(models, parallel.group, parallel.sharded) if parallel is not None else None
    whole = parallel is None or not parallel.sharded
    fp8_weights = Fp8Blocks(velocity_model, models.device) if whole else None
    streaming = StreamedBlocks(velocity_model, models.device) if whole else None
    models.loras.parked = [parking for parking in (fp8_weights, streaming) if parking is not None]
    return ConfiguredModels(models, speed, rank, fp8_weights, streaming)
