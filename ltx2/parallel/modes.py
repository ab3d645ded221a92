"""One gang rank's parallel state: applied once to the resident models, switched per task.

A rank holds the whole model set (or, sharded, its share of the transformer); `ParallelRank.running`
turns on the parallelism one task asks for ('sequence' or 'guidance') and turns it off afterwards, so
the same gang can run stage 1 guidance-parallel and stage 2 sequence-parallel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from ltx2.models import ResidentModels
from ltx2.parallel.group import GangGroup
from ltx2.parallel.guidance import DistributedPassRunner
from ltx2.parallel.sequence import SequenceParallel, apply_sequence_parallel, sequence_parallel
from ltx2.parallel.sharding import gang_mesh, shard_transformer

PARALLELISMS = ("sequence", "guidance")


@dataclass(frozen=True)
class ParallelMode:
    """A gang member's part in its gang: its process group, and whether the gang shards the transformer's
    weights (FSDP2) instead of each rank holding them whole."""

    group: GangGroup
    sharded: bool


@dataclass
class ParallelRank:
    models: ResidentModels
    group: GangGroup
    sequence: SequenceParallel
    guidance: DistributedPassRunner
    sharded: bool

    @contextlib.contextmanager
    def running(self, parallelism: str | None) -> Iterator[None]:
        """Run the body with `parallelism` ('sequence', 'guidance' or None) switched on."""
        if parallelism not in (None, *PARALLELISMS):
            raise ValueError(f"unknown parallelism {parallelism!r}; use one of {PARALLELISMS}")
        if parallelism == "sequence":
            with sequence_parallel(self.sequence):
                yield
            return
        if parallelism == "guidance":
            previous = self.models.pass_runner
            self.models.pass_runner = self.guidance
            try:
                yield
            finally:
                self.models.pass_runner = previous
            return
        yield


def make_parallel_rank(models: ResidentModels, group: GangGroup, sharded: bool) -> ParallelRank:
    """Apply the gang's parallelism to `models` in place (sequence hooks always; FSDP2 if `sharded`)."""
    velocity_model = models.transformer.velocity_model
    sequence = apply_sequence_parallel(velocity_model, group.rank, group.world_size)
    if sharded:
        shard_transformer(velocity_model, gang_mesh(group.device, group.world_size))
    return ParallelRank(
        models=models,
        group=group,
        sequence=sequence,
        guidance=DistributedPassRunner(group.rank, group.world_size, lockstep=sharded),
        sharded=sharded,
    )
