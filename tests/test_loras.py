"""Job LoRAs on the tiny model: fused exactly as the official builder fuses them, checked before compute,
switched without drift between jobs, and kept per worker (a pool per LoRA set) by the campaign runner."""

from __future__ import annotations

import itertools
import json
import urllib.request

import pytest
import torch
import yaml

from cluster.campaign_manifest import parse_manifest
from cluster.campaign_runner import CampaignRunner
from cluster.campaign_store import Store
from cluster.cli import main
from cluster.local_executor import LocalExecutor
from cluster.metrics import MetricsServer
from cluster.requests import render_request
from cluster.worker_options import WorkerOptions
from jobs.spec import validate_job
from ltx2.lora import LoraSpec, LoraState
from ltx2.render import Renderer
from ltx2.tiny import write_tiny_lora
from tests.conftest import SMALL_JOB


@pytest.fixture(scope="module")
def loras(tiny_set, tmp_path_factory):
    """Two style-LoRA stand-ins in the official file format: one on attention, one on feed-forward."""
    root = tmp_path_factory.mktemp("loras")
    return (
        write_tiny_lora(root / "style-a.safetensors", tiny_set.checkpoint, seed=1, targets="attn"),
        write_tiny_lora(root / "style-b.safetensors", tiny_set.checkpoint, seed=2, targets="ff"),
    )


def test_switching_sets_gives_the_official_build_each_time(resident, tiny_set, loras):
    """After any sequence of switches the weights equal ltx-core building the model with that LoRA list."""
    from ltx_core.loader import LTXV_LORA_COMFY_RENAMING_MAP, LoraPathStrengthAndSDOps
    from ltx_pipelines.utils.model_ledger import ModelLedger

    a, b = (LoraSpec(str(loras[0]), 0.8), LoraSpec(str(loras[1]), -1.5))
    model = resident.transformer.velocity_model
    resident.loras.use()  # earlier renders leave their last stage's LoRAs fused
    pristine = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        resident.loras.use([b])
        resident.loras.use([a], distilled=True)
        resident.loras.use([a, b], distilled=True)
        ledger = ModelLedger(
            dtype=torch.bfloat16,
            device=torch.device("cpu"),
            checkpoint_path=str(tiny_set.checkpoint),
            loras=tuple(
                LoraPathStrengthAndSDOps(path, strength, LTXV_LORA_COMFY_RENAMING_MAP)
                for path, strength in [(a.path, 0.8), (b.path, -1.5), (str(tiny_set.distilled_lora), 1.0)]
            ),
        )
        official = ledger.transformer().velocity_model.state_dict()
        ours = model.state_dict()
        assert all(torch.equal(official[k], ours[k]) for k in official)
    finally:
        resident.loras.use()
    assert all(torch.equal(v, pristine[k]) for k, v in model.state_dict().items())


def test_a_lora_changes_the_render_and_switching_back_is_exact(resident, loras):
    """Also: a two-stage render restores the original weights after its decodes (a thread; the copies in the
    background on a GPU), and the job after it renders exactly as it would have anyway."""
    model = resident.transformer.velocity_model
    resident.loras.use()
    pristine = {k: v.clone() for k, v in model.state_dict().items()}
    renderer = Renderer(resident)
    styled = validate_job({**SMALL_JOB, "loras": [{"path": str(loras[0]), "strength": 1.0}]})
    plain = validate_job(SMALL_JOB)
    first = renderer.render(render_request(styled, resident.num_layers))
    assert resident.loras.state == LoraState()  # nothing fused between jobs: the originals, bit for bit
    resident.loras.originals_copied()  # once the restore thread is done (the next job's `use` waits the same way)
    assert all(torch.equal(v, pristine[k]) for k, v in model.state_dict().items())
    assert resident.loras.job_set == (LoraSpec(str(loras[0]), 1.0),)  # the set it serves is still this one
    base = renderer.render(render_request(plain, resident.num_layers))
    again = renderer.render(render_request(styled, resident.num_layers))
    assert not torch.equal(first.video, base.video)
    assert torch.equal(first.video, again.video) and torch.equal(first.audio, again.audio)


def test_use_after_a_background_restore_fuses_exactly_what_a_direct_switch_does(resident, loras):
    a = LoraSpec(str(loras[0]), 0.8)
    model = resident.transformer.velocity_model
    resident.loras.use()
    pristine = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        resident.loras.use([a], distilled=True)
        stage_2 = {k: v.clone() for k, v in model.state_dict().items()}
        resident.loras.use([a])  # the direct switch, as a job's stage 1 after the last one's stage 2
        stage_1 = {k: v.clone() for k, v in model.state_dict().items()}
        changes = resident.loras.set_changes
        for distilled, direct in [(False, stage_1), (True, stage_2)]:
            resident.loras.use([a], distilled=True)
            resident.loras.restore_in_background()
            assert resident.loras.state == LoraState() and resident.loras.job_set == (a,)
            resident.loras.originals_copied()  # the host's wait for the restore thread's copies
            assert all(torch.equal(v, pristine[k]) for k, v in model.state_dict().items())
            resident.loras.use([a], distilled=distilled)
            assert all(torch.equal(v, direct[k]) for k, v in model.state_dict().items())
        assert resident.loras.set_changes == changes  # a restore between jobs is no change of the set
        resident.loras.use()
        resident.loras.restore_in_background()  # nothing fused: nothing to do
        assert resident.loras.state == LoraState()
    finally:
        resident.loras.use()


def test_a_background_restore_that_fails_stops_the_next_use(resident):
    """The restore runs on a thread; if it fails, the next `use` raises its error (no render on weights that
    may still be fused), and the one after undoes the fusion itself: the exact originals again."""
    model = resident.transformer.velocity_model
    resident.loras.use()
    pristine = {k: v.clone() for k, v in model.state_dict().items()}
    resident.loras.use(distilled=True)
    fusion = resident.loras._fusion

    def failing_unfuse(stream=None):
        raise RuntimeError("copy failed")

    fusion.unfuse = failing_unfuse
    resident.loras.restore_in_background()  # returns at once: the thread does the copies
    with pytest.raises(RuntimeError, match="copy failed"):
        resident.loras.use()
    del fusion.unfuse  # the copies work again
    assert resident.loras.state == LoraState(distilled=True)  # what the weights still hold
    resident.loras.use()
    assert resident.loras.state == LoraState()
    assert all(torch.equal(v, pristine[k]) for k, v in model.state_dict().items())


def test_a_fused_state_holds_no_factors_and_a_cpu_model_is_not_prefetched(resident, loras):
    """A fusion lets go of the LoRA factors once fused (a GPU prefetch is freed with them) and undoes exactly
    from the originals; a model on the CPU has nothing to prefetch (the GPU path: bench/gpu_smoke.py)."""
    a = LoraSpec(str(loras[0]), 0.8)
    model = resident.transformer.velocity_model
    resident.loras.use()
    pristine = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        assert resident.loras.prefetch([a], distilled=True) == 0
        resident.loras.use([a], distilled=True)
        fused = {k: v.clone() for k, v in model.state_dict().items()}
        fusion = resident.loras._fusion
        assert fusion is not None and fusion._state_dicts == []
        fusion.unfuse()
        assert all(torch.equal(v, pristine[k]) for k, v in model.state_dict().items())
        fusion.fuse()  # reads the factors again through the host loader
        assert all(torch.equal(v, fused[k]) for k, v in model.state_dict().items())
    finally:
        resident.loras.use()
    assert all(torch.equal(v, pristine[k]) for k, v in model.state_dict().items())


def test_a_two_stage_render_asks_for_stage_2s_lora_factors_as_its_last_stage_1_step_starts(resident, loras):
    """The renderer starts the prefetch of stage 2's LoRAs (the job's and the distilled one) once, when the last
    stage-1 step begins, so the copy overlaps that step's forwards."""
    calls = []
    steps = []
    real = resident.loras.prefetch

    def recording(*args, **kwargs):
        calls.append((args, kwargs, len(steps)))
        return real(*args, **kwargs)

    styled = validate_job({**SMALL_JOB, "loras": [{"path": str(loras[0]), "strength": 1.0}]})
    request = render_request(styled, resident.num_layers)
    resident.loras.prefetch = recording
    try:
        Renderer(resident).render(request, on_step=lambda stage, *_: steps.append(stage))
    finally:
        del resident.loras.prefetch
    stage_1_steps = steps.count("stage_1")
    assert stage_1_steps == request.steps
    assert calls == [((request.loras,), {"distilled": True}, stage_1_steps - 1)]


def test_no_background_restore_while_blocks_are_parked(resident):
    """Parked blocks hold their weights elsewhere: the fused state stays for the next `use` to undo."""
    from ltx2.offload import StreamedBlocks

    parking = StreamedBlocks(resident.transformer.velocity_model, resident.device)
    resident.loras.use(distilled=True)
    resident.loras.parked = [parking]
    try:
        parking.enable()
        resident.loras.restore_in_background()
        assert resident.loras.state == LoraState(distilled=True)
        parking.disable()
        resident.loras.restore_in_background()
        assert resident.loras.state == LoraState()
    finally:
        parking.disable()
        resident.loras.parked = []
        resident.loras.use()


@pytest.mark.parametrize(
    ("lora", "words"),
    [
        ({"path": "missing.safetensors"}, "does not exist"),
        ({"path": "/etc/hostname"}, "outside the allowed input folders"),
        ({"path": "job.yaml"}, "not a readable safetensors file"),
        ({"path": "plain.safetensors"}, "holds no lora_A/lora_B"),
        ({"path": "style-a.safetensors", "strength": 0}, "loras[0].strength"),
        ({"path": "style-a.safetensors", "strength": 7.5}, "loras[0].strength"),
    ],
    ids=["missing", "outside the roots", "not safetensors", "not a LoRA", "strength 0", "absurd strength"],
)
def test_bad_loras_are_refused_before_compute(tmp_path, capsys, tiny_set, lora, words):
    from ltx2.tiny import save_file

    write_tiny_lora(tmp_path / "style-a.safetensors", tiny_set.checkpoint)
    save_file({"weight": torch.zeros(2, 2)}, str(tmp_path / "plain.safetensors"))
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**SMALL_JOB, "loras": [lora]}))
    assert main(["validate", str(path)]) == 2
    assert words in capsys.readouterr().err


def test_the_same_lora_twice_is_refused(tmp_path, capsys, tiny_set):
    write_tiny_lora(tmp_path / "a.safetensors", tiny_set.checkpoint)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**SMALL_JOB, "loras": [{"path": "a.safetensors"}, {"path": "a.safetensors"}]}))
    assert main(["validate", str(path)]) == 2
    assert "lists the same file twice" in capsys.readouterr().err


def test_a_lora_for_another_model_fails_before_compute(resident, tmp_path):
    """A LoRA whose targets the model lacks is refused when the worker checks it, naming the weight."""
    from ltx2.checkpoint import CheckpointError
    from ltx2.tiny import save_file

    path = tmp_path / "other.safetensors"
    save_file(
        {
            "diffusion_model.transformer_blocks.97.attn1.to_q.lora_A.weight": torch.zeros(2, 8),
            "diffusion_model.transformer_blocks.97.attn1.to_q.lora_B.weight": torch.zeros(8, 2),
        },
        str(path),
    )
    with pytest.raises(CheckpointError, match=r"transformer_blocks\.97\.attn1\.to_q\.weight.*trained for this model"):
        resident.loras.check([LoraSpec(str(path))])


TINY = {"height": 64, "width": 64, "num_frames": 9, "steps": 2}


def test_two_lora_sets_in_one_campaign_land_on_two_pools(tiny_set, loras, tmp_path):
    """Rows alternate between two LoRA sets; each worker builds its set once and keeps it (no switch per job)."""
    pool = LocalExecutor(tiny_set, num_workers=2)
    try:
        sets = [[{"path": str(loras[0])}], [{"path": str(loras[1]), "strength": 0.5}]]
        rows = [{"id": f"r{i}", "prompt": f"scene {i}", "loras": sets[i % 2]} for i in range(8)]
        manifest = parse_manifest({"campaign": "styles", "defaults": TINY, "rows": rows}, base=loras[0].parent)
        store = Store(tmp_path / "db")
        store.submit(manifest.spec, manifest.jobs)
        server = MetricsServer(pool)  # what `campaign run --metrics-port` serves
        try:
            stats = CampaignRunner(store, pool, tmp_path / "out", metrics=server.farm).run()
            with urllib.request.urlopen(server.url, timeout=30) as response:
                scraped = response.read().decode()
        finally:
            server.close()
        assert stats["done"] == 8, stats
        assert 'ltx2farm_jobs{campaign="styles",state="done"} 8.0' in scraped
        assert scraped.count("ltx2farm_lora_set_changes_total{") == 2, scraped  # one series per worker
        # The scheduler's choice, read from the attempts in claim order: each worker claims the set it holds
        # while such jobs are queued and takes the other set only when none is left (work-conserving), so it
        # switches at most once; a scheduler without set affinity would switch a worker per job.
        specs = {j["id"]: json.dumps(json.loads(j["spec"])["loras"]) for j in store.jobs("styles")}
        claimed: dict[str, list[str]] = {}
        for attempt in store.attempts("styles"):  # oldest first
            claimed.setdefault(attempt["worker"], []).append(specs[attempt["job"]])
        switches = {w: sum(a != b for a, b in itertools.pairwise(sets)) for w, sets in claimed.items()}
        assert max(switches.values()) <= 1, claimed
        assert len({sets[0] for sets in claimed.values()}) == 2, claimed  # the two sets land on two pools
        # The worker counts what it built; a threaded actor may run two queued jobs out of claim order, so the
        # count is checked against the metric, not against the claims.
        infos = pool.refresh_info()
        changes = [i.lora_set_changes for i in infos]
        assert min(changes) >= 1, infos
        texts = dict((labels["worker"], text) for labels, text in pool.metrics_texts())
        assert f"ltx2farm_lora_set_changes_total {float(changes[0])}" in texts[infos[0].name]
    finally:
        pool.shutdown()


def test_worker_copies_the_originals_in_the_background_before_any_fusion(tiny_set):
    """The copy the first fusion would make is made at worker start; fusing waits for it, so it is pristine."""
    from cluster.worker import RenderWorker

    worker = RenderWorker(tiny_set, WorkerOptions(device="cpu"))
    loras = worker.models.loras
    model = worker.models.transformer.velocity_model
    pristine = {k: v.clone() for k, v in model.state_dict().items()}
    loras.use(distilled=True)  # joins the copy first
    originals = loras._originals
    assert originals and all(torch.equal(originals[name], pristine[name]) for name in originals)
    loras.use()
    assert all(torch.equal(v, pristine[k]) for k, v in model.state_dict().items())
