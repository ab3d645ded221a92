"""LoRAs fused into a resident model and unfused again, with ltx-core's own fusing arithmetic.

ltx-core fuses LoRAs when it builds a model, so a LoRA'd stage (the distilled stage-2 refine) would need
a second 19B copy or a reload from disk. A resident worker instead fuses in place with the official
`apply_loras` (bit-identical weights to a fresh official build) and restores the exact original weights
from a host-memory backup afterwards, so no rounding drift accumulates across jobs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from ltx_core.loader import (
    LTXV_LORA_COMFY_RENAMING_MAP,
    LoraStateDictWithStrength,
    SafetensorsStateDictLoader,
    StateDict,
    apply_loras,
)
from ltx_core.loader.fuse_loras import _prepare_deltas
from torch.distributed.tensor import DTensor, distribute_tensor

from ltx2 import fp8_lora_fusion
from ltx2.checkpoint import LORA_A, LORA_FIX, CheckpointError, check_lora_header, lora_problems, summarize
from ltx2.fp8_linear import FP8, scale_name
from ltx2.layout import linear_shapes
from ltx2.offload import ParkedBlocks


def _local(param: torch.Tensor) -> torch.Tensor:
    """The tensor this process holds: the shard of a sharded (FSDP2) parameter, else the parameter."""
    return param.to_local() if isinstance(param, DTensor) else param


def host_backup(tensor: torch.Tensor, non_blocking: bool = False) -> torch.Tensor:
    """A host copy of a weight in the weight's own layout (strides), pinned for a GPU weight.

    Why the layout: an FP8 weight is stored transposed ([in, out] view of a contiguous [out, in]); a row-major
    backup would send every copy between it and the weight through a temporary on the GPU and a transposing
    kernel. With the same strides each copy is one plain memcpy, and an FP8 job's stage 2 spends less time
    outside its steps (bench/README.md, "Numbers behind the code")."""
    backup = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, pin_memory=tensor.is_cuda)
    backup.copy_(tensor, non_blocking=non_blocking)
    return backup


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA file and its strength; strength is part of a fused set's identity."""

    path: str
    strength: float = 1.0


def check_lora_file(path: str | Path, targets: Mapping[str, tuple[int, int]]) -> None:
    """Refuse, from the file's header alone, a LoRA whose factors do not fit `targets` (a model's linear
    weights, `ltx2.layout.linear_shapes`), its names mapped as the official loader maps them."""
    check_lora_header(path, targets, LTXV_LORA_COMFY_RENAMING_MAP.apply_to_key)


def load_lora(path: str) -> StateDict:
    """A LoRA file's tensors on the CPU, with ComfyUI key names mapped to ltx-core's (the official loader)."""
    check_lora_header(path)
    return SafetensorsStateDictLoader().load(path, sd_ops=LTXV_LORA_COMFY_RENAMING_MAP, device=torch.device("cpu"))


@dataclass
class LoraFusion:
    """Fuses a set of LoRAs into `model`'s weights on demand; `unfuse` restores the originals exactly.

    All deltas of the set are summed and added in one `apply_loras` call, as the official builder does for
    a ledger's LoRA list, so the fused weights are those of a fresh official build with that list. FP8
    weights (`ltx2.fp8_linear`, ltx-core's scaled-FP8 format) go through the official scaled-FP8 fusion:
    dequantised with their scale, the delta added, re-quantised with a new scale; both are restored. On a GPU
    that arithmetic runs in two Triton passes (`ltx2.fp8_lora_fusion`: the same bits, no float32 copies).
    """

    model: torch.nn.Module
    loras: Sequence[LoraSpec]
    loader: Callable[[str], StateDict] = load_lora
    originals: dict[str, torch.Tensor] | None = None
    """Host copies of the original weights, kept across fusions (a resident model's weights never change
    otherwise): copying and pinning ~35 GB per fusion would be most of a warm 19B job's fusing time."""
    fp8_kernels: bool = True
    """Scaled-FP8 weights on a GPU fuse through `ltx2.fp8_lora_fusion` (the official arithmetic in two passes);
    False: through ltx-core's `apply_loras` itself (what `bench/lora_fusion.py` compares with)."""
    _fused: bool = field(default=False, init=False)
    _state_dicts: list[LoraStateDictWithStrength] = field(default_factory=list, init=False)
    _targets: list[str] = field(default_factory=list, init=False)
    _scales: dict[str, str] = field(default_factory=dict, init=False)
    """FP8 target weight -> its scale parameter (changed by the fusion too)."""
    _backup: dict[str, torch.Tensor] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        params = dict(self.model.named_parameters())
        linears = linear_shapes(self.model)
        for lora, lsd in zip(self.loras, self._factors(), strict=True):
            problems = lora_problems({key: tuple(t.shape) for key, t in lsd.state_dict.sd.items()}, linears)
            if problems:
                raise CheckpointError(lora.path, summarize(problems), LORA_FIX)
            for key in lsd.state_dict.sd:
                if key.endswith(LORA_A):
                    target = key.removesuffix(LORA_A) + ".weight"
                    if target not in self._targets:
                        self._targets.append(target)
                        if params[target].dtype == FP8 and scale_name(target) in params:
                            self._scales[target] = scale_name(target)

    def _factors(self) -> list[LoraStateDictWithStrength]:
        """The LoRA files' factors, read through `loader` (again after `drop_factors`)."""
        if not self._state_dicts:
            self._state_dicts = [LoraStateDictWithStrength(self.loader(x.path), x.strength) for x in self.loras]
        return self._state_dicts

    def drop_factors(self) -> None:
        """Let go of the factors (a fused state needs only the originals to be undone): a GPU copy made for
        the fusion is freed with them. A later `fuse` reads them through `loader` again."""
        self._state_dicts = []

    @property
    def targets(self) -> tuple[str, ...]:
        """The parameters this set of LoRAs changes (FP8 weights' scales included)."""
        return (*self._targets, *self._scales.values())

    def _originals_store(self) -> dict[str, torch.Tensor]:
        return self.originals if self.originals is not None else self._backup

    @property
    def fused(self) -> bool:
        return self._fused

    @torch.inference_mode(False)  # stages call this inside inference mode; sharded weights need autograd-aware ops
    @torch.no_grad()
    def fuse(self) -> None:
        """Add every LoRA delta to its weight (no-op when already fused)."""
        if self.fused:
            return
        params = dict(self.model.named_parameters())  # looked up now: sharding replaces the parameters
        originals = self._originals_store()
        for name in self.targets:
            if name not in originals:
                originals[name] = host_backup(_local(params[name]).detach())
        for name in self._targets:
            param = params[name]
            scale = params.get(self._scales.get(name, ""))
            if (
                self.fp8_kernels
                and scale is not None
                and not isinstance(param, DTensor)
                and fp8_lora_fusion.applies(param, scale)
            ):
                delta = _prepare_deltas(self._factors(), name, torch.bfloat16, param.device)
                fp8_lora_fusion.fuse_into_scaled_fp8_(param.detach(), scale.detach(), delta)
                continue
            weight = param.detach().full_tensor() if isinstance(param, DTensor) else param.detach()
            base = {name: weight}
            if name in self._scales:  # the official scaled-FP8 fusion dequantises with the scale
                base[self._scales[name]] = params[self._scales[name]].detach()
            sd = StateDict(sd=base, device=weight.device, size=weight.nbytes, dtype={weight.dtype})
            if weight.dtype == torch.float32:  # ltx-core fuses bf16/fp8 only; same deltas, added in float32
                fused = {name: weight + _prepare_deltas(self._factors(), name, torch.float32, weight.device)}
            else:
                fused = apply_loras(model_sd=sd, lora_sd_and_strengths=self._factors(), dtype=weight.dtype).sd
            if isinstance(param, DTensor):  # every rank fused the same full weight: keep this rank's shard
                fused[name] = distribute_tensor(
                    fused[name], param.device_mesh, param.placements, src_data_rank=None
                ).to_local()
            for key, value in fused.items():
                _local(params[key]).copy_(value)
        self._fused = True

    @torch.inference_mode(False)
    @torch.no_grad()
    def unfuse(self, stream: torch.cuda.Stream | None = None) -> None:
        """Restore the exact pre-fusion weights.

        By default the copies are complete on return. With `stream`, the copies to CUDA weights are only
        enqueued on that stream (no host wait): the caller orders the stream after the weights' last reader
        and every later user of the weights after the stream (`ResidentLoras.restore_in_background`).
        """
        if not self._fused:
            return
        params = dict(self.model.named_parameters())
        originals = self._originals_store()
        with torch.cuda.stream(stream):  # None: the current stream
            for name in self.targets:
                _local(params[name]).copy_(originals[name], non_blocking=True)
        if stream is None and torch.cuda.is_available():
            torch.cuda.synchronize()
        if self.originals is None:
            self._backup.clear()
        self._fused = False


PREFETCH_HEADROOM = 4 * 2**30
"""GPU memory `ResidentLoras.prefetch` leaves unused above the peak so far; with it a bf16 19B worker with Gemma
resident still prefetches most of the distilled LoRA at 704x1280 (bench/README.md, "Numbers behind the code")."""


@dataclass(frozen=True)
class LoraState:
    """What is fused into a resident transformer: the job's LoRAs, in order, a stage's own LoRAs (an IC-LoRA
    in stage 1), and whether the distilled one."""

    loras: tuple[LoraSpec, ...] = ()
    distilled: bool = False
    stage: tuple[LoraSpec, ...] = ()


@dataclass
class ResidentLoras:
    """The LoRA state of one resident transformer, switched per stage and per job.

    Switching restores the exact original weights and fuses the new list in one go (never a delta on top of
    a delta), so any sequence of jobs gives the weights of a fresh official build for each. LoRA files stay
    in host memory (the distilled one always, job LoRAs up to `cache_size` files) so a switch never
    rereads a file it has seen recently. `set_changes` counts switches of the job LoRA set: what a pool
    per LoRA set keeps low.

    A two-stage job can start the restore of the original weights early (`restore_in_background`, after its
    decode): the copy then runs on the GPU while the host finishes the job's MP4, and whatever touches the
    weights next (`use`, or parking the blocks via `originals_copied`) waits for it first.
    """

    model: torch.nn.Module
    distilled_lora: LoraSpec | None
    """What `use(distilled=True)` adds last; None for a distilled checkpoint, whose weights are already distilled."""
    cache_size: int = 4
    set_changes: int = 0
    fuses: int = 0
    _fusion: LoraFusion | None = field(default=None, init=False)
    _state: LoraState = field(default_factory=LoraState, init=False)
    _files: dict[str, StateDict] = field(default_factory=dict, init=False)
    _originals: dict[str, torch.Tensor] = field(default_factory=dict, init=False)
    _warming: threading.Thread | None = field(default=None, init=False)
    _job_set: tuple[LoraSpec, ...] = field(default=(), init=False)
    _side: torch.cuda.Stream | None = field(default=None, init=False)
    """The stream background restores and prefetches copy on (`_side_stream`: made at the first one on a GPU)."""
    _restoring: tuple[Future[torch.cuda.Event | None], LoraFusion, LoraState] | None = field(default=None, init=False)
    """A background restore: its copies are enqueued by a thread (`_restorer`), which then returns the event
    recorded on `_side` after them (None for CPU weights, restored by then); with the fusion it undoes and
    the state before it, put back if it fails."""
    _restorer: ThreadPoolExecutor | None = field(default=None, init=False)
    _prefetched: dict[str, tuple[StateDict, torch.cuda.Event]] = field(default_factory=dict, init=False)
    """LoRA files whose factors `prefetch` is copying to the GPU, with the event that marks the copy done."""
    parked: list[ParkedBlocks] = field(default_factory=list)
    """Ways the worker may park block weights (OOM ladder: streamed, FP8): fusion pauses them."""
    _linears: dict[str, tuple[int, int]] | None = field(default=None, init=False)
    """The model's linear weights (`linear_shapes`), what `check` fits LoRA headers to: made at the first check."""

    def __post_init__(self) -> None:
        self.check(self._distilled())  # read and checked at load time: a worker is ready when loaded

    def _distilled(self) -> list[LoraSpec]:
        """The distilled LoRA as a list of specs: empty for a distilled checkpoint."""
        return [self.distilled_lora] if self.distilled_lora is not None else []

    @property
    def state(self) -> LoraState:
        """What is fused now (`LoraState()` once a background restore has started: the weights are the
        originals for every later GPU operation)."""
        return self._state

    @property
    def job_set(self) -> tuple[LoraSpec, ...]:
        """The job LoRA set of the last `use`, kept through a background restore: the set this model serves
        (what `set_changes` counts changes of), even while nothing is fused between jobs."""
        return self._job_set

    def _load_for_fusion(self, path: str) -> StateDict:
        """A file's factors for a fusion: those `prefetch` copied to the GPU (the current stream waits for
        them) and the host copies of the rest, which ltx-core's fusion copies to the GPU one pair at a time."""
        if path not in self._prefetched:
            return self._load(path)
        sd, copied = self._prefetched.pop(path)
        stream = torch.cuda.current_stream(self._side.device)
        stream.wait_event(copied)
        for tensor in sd.sd.values():
            if tensor.is_cuda:
                tensor.record_stream(stream)  # allocated on the side stream, used and freed on this one
        return sd

    def prefetch(self, loras: Sequence[LoraSpec] = (), distilled: bool = False) -> int:
        """Start copying the factors of the LoRA files that `use(loras, distilled)` will fuse onto the GPU,
        on a side stream: as many as fit below the GPU's peak use so far (`max_memory_allocated`: the stage's
        steps reach it again) less `PREFETCH_HEADROOM` (the fusion copies the rest itself). Returns the bytes
        it copies; none while blocks are parked (the OOM ladder's rungs). The device's free memory is no
        measure: blocks freed by the last job's prefetch stay in PyTorch's cache for the next.

        Why: ltx-core's fusion copies each factor pair from host memory and waits for it, more than half of a
        distilled-LoRA fusion at 19B (rank 384, 7.2 GiB; bench/README.md); started during the last stage-1
        step, the copy overlaps the forwards. The GPU copies are freed once
        the fusion is done."""
        device = next(self.model.parameters()).device
        if device.type != "cuda" or LoraState(tuple(loras), distilled) == self._state:
            return 0
        if any(parking.active for parking in self.parked):  # an OOM rung: the fusion itself needs the room
            return 0
        _free, total = torch.cuda.mem_get_info(device)
        budget = total - torch.cuda.max_memory_allocated(device) - PREFETCH_HEADROOM
        specs = [*loras, *(self._distilled() if distilled else [])]
        side = self._side_stream(device)
        copied = 0
        with torch.cuda.stream(side):
            for path in dict.fromkeys(spec.path for spec in specs if spec.path not in self._prefetched):
                host = self._load(path)
                tensors = dict(host.sd)
                for key, tensor in host.sd.items():
                    if copied + tensor.nbytes > budget:
                        break
                    try:
                        tensors[key] = tensor.to(device, non_blocking=True)
                    except torch.OutOfMemoryError:  # fragmentation: the fusion copies the rest
                        budget = copied
                        break
                    copied += tensor.nbytes
                done = torch.cuda.Event()
                done.record(side)
                self._prefetched[path] = (replace(host, sd=tensors), done)
        return copied

    def _side_stream(self, device: torch.device) -> torch.cuda.Stream:
        """The stream background restores and prefetches copy on (made once)."""
        if self._side is None:
            self._side = torch.cuda.Stream(device)
        return self._side

    def _load(self, path: str) -> StateDict:
        if path in self._files:
            self._files[path] = self._files.pop(path)  # most recently used last
            return self._files[path]
        sd = load_lora(path)
        if torch.cuda.is_available():  # pinned: every fusion copies the factors to the GPU again
            sd = replace(sd, sd={k: v.pin_memory() for k, v in sd.sd.items()})
        self._files[path] = sd
        job_files = [p for p in self._files if p not in {spec.path for spec in self._distilled()}]
        while len(job_files) > self.cache_size:
            del self._files[job_files.pop(0)]
        return sd

    def warm_originals(self) -> None:
        """Copy (and pin, on a GPU) the weights the distilled LoRA changes, in a background thread, while the
        first job's stage 1 runs: the first fusion then does not pay for it (about a minute at 19B). Call it before the
        model is sharded, or not at all for a sharded model; fusing waits for it. Nothing to copy for a distilled
        checkpoint (no distilled LoRA)."""
        if self.distilled_lora is None:
            return
        distilled = self.distilled_lora.path
        targets = LoraFusion(self.model, [self.distilled_lora], loader=lambda _path: self._files[distilled]).targets

        params = dict(self.model.named_parameters())
        device = next((_local(params[name]).device for name in targets if _local(params[name]).is_cuda), None)
        side = torch.cuda.Stream(device) if device is not None else None
        if side is not None:  # the weights were written on the current stream: copy after that
            side.wait_stream(torch.cuda.current_stream(device))

        def copy() -> None:
            # Into pinned buffers, asynchronously on a side stream: a pageable copy on the default stream
            # serialises with the first job's kernels and slows its stage 1.
            for name in targets:
                if name not in self._originals:
                    with torch.cuda.stream(side):  # None on the CPU: the current stream
                        self._originals[name] = host_backup(_local(params[name]).detach(), non_blocking=True)
            if side is not None:
                side.synchronize()

        self._warming = threading.Thread(target=copy, name="lora-originals", daemon=True)
        self._warming.start()

    def originals_copied(self) -> None:
        """Wait for the background copy of the originals, and for a background restore of the weights: call
        it before any weight changes or moves (a fusion, or parking the blocks), or the copy could read
        changed weights, or parking could move weights the restore is still writing. The restore is waited
        for on the host: parking copies run on whatever stream the caller's thread has."""
        if self._warming is not None:
            self._warming.join()
            self._warming = None
        self._restored(host=True)

    def restore_in_background(self) -> None:
        """Start restoring the exact original weights now, and mark the state as the base one.

        Why: a two-stage job ends with the distilled LoRA fused and the next job's stage 1 starts without it,
        so that stage's `use` would restore the originals first: ~34 GB from pinned host memory at 19B, with
        the GPU otherwise idle (bench/README.md, "Numbers behind the code"). Called after the job's decodes,
        the copy runs on a side stream while the host finishes the MP4 (the renderer calls it there: run
        during the VAE decode, the copies slow the decode by about what they take).

        A worker thread issues the copies (enqueuing an FP8 worker's 2,352 copies holds the host for tenths of a
        second): on a GPU they are only enqueued on the side stream, after everything already on
        the current stream (the job's last forward and decodes); no host wait. `use` makes the current
        stream wait for them before anything that reads or changes the weights, `originals_copied` (parking)
        waits on the host; both wait for the thread first and re-raise its error. CPU weights are copied by
        the same thread (CPU tests take the same path). Skipped, leaving the fused
        state for the next `use` to undo, when nothing is fused, when parked blocks are enabled
        (their weights live elsewhere and parking swaps them) and for sharded (DTensor) weights (the gang's
        collectives read the shards on their own streams).
        """
        fusion = self._fusion
        if fusion is None or any(parking.active for parking in self.parked):
            return
        params = dict(self.model.named_parameters())
        targets = [params[name] for name in fusion.targets]
        if any(isinstance(param, DTensor) for param in targets):
            return
        device = next((param.device for param in targets if param.is_cuda), None)
        side = None
        self._restored()  # (none pending: a fusion is active, so `use` has waited for the last one)
        if device is not None:
            side = self._side_stream(device)
            side.wait_stream(torch.cuda.current_stream(device))  # after the job's last forward and decodes

        def restore() -> torch.cuda.Event | None:
            fusion.unfuse(stream=side)  # CPU weights (side None): copied here and now
            if side is None:
                return None
            copied = torch.cuda.Event()
            copied.record(side)
            return copied

        if self._restorer is None:
            self._restorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lora-restore")
        self._restoring = (self._restorer.submit(restore), fusion, self._state)
        self._fusion = None
        self._state = LoraState()

    def _restored(self, host: bool = False) -> None:
        """Order what comes next after a pending background restore: the current stream waits for it on
        the GPU (no host block), or with `host` the host waits for it. Clears it."""
        pending, self._restoring = self._restoring, None
        if pending is None:
            return
        restore, fusion, state = pending
        try:
            event = restore.result()  # the copies are enqueued
        except BaseException:  # the weights may still be fused: the next `use` undoes them again
            self._fusion, self._state = fusion, state
            raise
        if event is None:
            return
        if host:
            event.synchronize()
        else:
            torch.cuda.current_stream(self._side.device).wait_event(event)

    def check(self, loras: Sequence[LoraSpec]) -> None:
        """Check each file fits this model, from its header, then load (and cache) it, without fusing: errors
        before compute, and before a LoRA that cannot fit is read."""
        if self._linears is None:
            self._linears = linear_shapes(self.model)
        for lora in loras:
            if lora.path not in self._files:
                check_lora_file(lora.path, self._linears)
        LoraFusion(self.model, list(loras), loader=self._load)

    def use(self, loras: Sequence[LoraSpec] = (), distilled: bool = False, stage: Sequence[LoraSpec] = ()) -> None:
        """Make the fused state exactly `loras` + `stage` (+ the distilled LoRA last, as the official stage-2
        ledger). Only a change of `loras`, the job's set, counts as a set change."""
        self._restored()  # the weights are read (by the forwards after this) or changed (below)
        wanted = LoraState(tuple(loras), distilled, tuple(stage))
        if wanted.loras != self._job_set:
            self.set_changes += 1
            self._job_set = wanted.loras
        if wanted == self._state:
            self._prefetched.clear()  # nothing to fuse: an unclaimed prefetch is freed
            return
        self.originals_copied()
        with ExitStack() as resident:  # weights change in place: exact and on the GPU
            for parking in self.parked:
                resident.enter_context(parking.paused())
            self._switch(wanted)

    def _switch(self, wanted: LoraState) -> None:
        if self._fusion is not None:
            self._fusion.unfuse()
            self._fusion = None
        self._state = LoraState()
        specs = [*wanted.loras, *wanted.stage, *(self._distilled() if wanted.distilled else [])]
        if specs:
            fusion = LoraFusion(self.model, specs, loader=self._load_for_fusion, originals=self._originals)
            fusion.fuse()
            fusion.drop_factors()  # frees a prefetched GPU copy; a re-fuse would read the host copies
            fusion.loader = self._load
            self._fusion = fusion
            self.fuses += 1
        self._prefetched.clear()  # a prefetch for another state than this one: free it
        self._state = wanted
