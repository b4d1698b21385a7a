"""The GPU paths, checked on the CPU: the device setting, precision, the sync-free step
(conditional updates on the device, flags read back at sync points), checkpoints across
kinds of device, and evaluation sized for the device."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tiny_vae import SMALL_RUN

import vilab.core.device as device_module
import vilab.train.optim as optim_module
import vilab.train.vae as loop_module
from vilab.commands.train import train_vae
from vilab.config import ConfigError, load_fit_config, load_train_config
from vilab.core.checkpoint import load_checkpoint
from vilab.core.device import fork_rng, resolve_device, rng_state, set_rng_state
from vilab.estimators.objectives import Objective
from vilab.evaluation import eval_sizes, evaluate
from vilab.train.guard import ema_update_if_finite, step_if_finite
from vilab.train.optim import load_optimizer_state
from vilab.train.rundir import config_changes
from vilab.train.vae import VAETrainer

SMALL = SMALL_RUN

pytestmark = pytest.mark.usefixtures("keep_threads")


# -- the device setting -----------------------------------------------------------------------
def test_auto_is_the_cpu_here_and_cpu_is_the_cpu():
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "cpu:0", "auto:1", "", "cuda:-1"])
def test_a_malformed_device_is_refused_naming_the_accepted_forms(bad):
    with pytest.raises(ValueError, match=r"accepted auto, cpu, cuda, cuda:N"):
        resolve_device(bad)
    with pytest.raises(ConfigError, match="device"):
        load_train_config(overrides=[f"device={bad!r}"] if bad else ["device=''"])


def test_asking_for_a_gpu_that_is_not_there_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setattr(device_module, "cuda_count", lambda: 0)
    with pytest.raises(ValueError, match=r"'cuda'.*(no CUDA|not visible).*device=cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(device_module, "cuda_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(ValueError, match=r"2 CUDA device\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("auto") == torch.device("cuda", 0)


def test_one_process_per_gpu_in_a_multi_process_job(monkeypatch):
    monkeypatch.setattr(device_module, "cuda_count", lambda: 2)
    assert resolve_device("auto", local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=0) == torch.device("cuda", 0)
    assert resolve_device("cpu", local_rank=1) == torch.device("cpu")
    with pytest.raises(ValueError, match=r"LOCAL_RANK=2 has no GPU.*--nproc 2"):
        resolve_device("cuda", local_rank=2)
    with pytest.raises(ValueError, match=r"'cuda:1' in a multi-process job"):
        resolve_device("cuda:1", local_rank=0)
    monkeypatch.setattr(device_module, "cuda_count", lambda: 0)
    assert resolve_device("auto", local_rank=3) == torch.device("cpu")


def test_a_train_on_a_missing_gpu_fails_before_any_file_is_written(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    cfg = load_train_config(overrides=[*SMALL, "device=cuda"])
    with pytest.raises(ValueError, match="device 'cuda'"):
        train_vae(cfg, tmp_path / "run", False, tensorboard=False)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_device_tf32_and_compile_may_change_on_resume_precision_may_not():
    stored = load_train_config(overrides=SMALL).model_dump(mode="json")
    moved = load_train_config(overrides=[*SMALL, "device=cpu", "tf32=true", "compile=true"])
    assert config_changes(stored, moved) == []
    bf16 = load_train_config(overrides=[*SMALL, "precision=bf16"])
    assert config_changes(stored, bf16) == ["precision: 'float32' → 'bf16'"]


def test_the_fit_config_has_a_device_too():
    assert load_fit_config().device == "auto"
    with pytest.raises(ConfigError, match="accepted auto, cpu, cuda, cuda:N"):
        load_fit_config(overrides=["device=tpu"])


def test_the_command_line_refuses_a_bad_device_before_anything_runs(capsys):
    from vilab.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["train", "--device", "gpu0"])
    assert exit_.value.code == 2
    assert "accepted auto, cpu, cuda, cuda:N" in capsys.readouterr().err


# -- precision ---------------------------------------------------------------------------------
def test_bf16_runs_the_networks_in_bfloat16_and_the_densities_in_float32():
    cfg = load_train_config(overrides=[*SMALL, "precision=bf16", "posterior.kind=iaf"])
    trainer = VAETrainer(cfg)
    seen: dict[str, torch.dtype] = {}
    for name, net in [("encoder", trainer.vae.posterior.encoder), ("decoder", trainer.vae.model)]:
        first = next(m for m in net.modules() if isinstance(m, torch.nn.Linear))
        first.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.dtype))
    x = trainer.data.valid[:8]
    h = trainer.vae.posterior.context(x)
    log_w = trainer.vae.log_weights(x, 3)
    assert seen == {"encoder": torch.bfloat16, "decoder": torch.bfloat16}
    assert h.dtype == log_w.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in trainer.vae.parameters())
    assert trainer.train_step().finite is True
    seen.clear()
    trainer.vae.eval()  # evaluation is float32: the reported log p(x) is the model's
    trainer.vae.log_weights(x, 3)
    assert seen == {"encoder": torch.float32, "decoder": torch.float32}


def test_bf16_is_refused_where_it_is_not_offered():
    with pytest.raises(ConfigError, match=r"bf16 is refused for posterior.kind=uivi"):
        load_train_config(overrides=["precision=bf16", "posterior.kind=uivi"])
    with pytest.raises(ConfigError, match=r"identity encoder"):
        load_train_config(overrides=["precision=bf16", "encoder.kind=identity"])


def test_bf16_stays_close_to_float32_on_the_same_run():
    """A short run from the same seed: the bound of the bfloat16 networks follows the
    float32 one (the GPU benchmark measures the final NLL on MNIST)."""
    bounds = {}
    for precision in ("float32", "bf16"):
        trainer = VAETrainer(load_train_config(overrides=[*SMALL, f"precision={precision}"]))
        bounds[precision] = [trainer.train_step().values["bound"] for _ in range(60)]
    gap = max(abs(a - b) for a, b in zip(bounds["float32"], bounds["bf16"]))
    assert gap < 1.0, gap
    assert bounds["bf16"] != bounds["float32"]  # it did run in another precision


# -- the sync-free step ------------------------------------------------------------------------
OPTIMIZERS = {
    "fused adam": lambda p: torch.optim.Adam(p, lr=0.1, fused=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.1, centered=True),
    "adamax": lambda p: torch.optim.Adamax(p, lr=0.1),
    "sgd momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_conditional_step_is_the_step_when_finite_and_nothing_when_not(name):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    twin = torch.nn.Parameter(w.detach().clone())
    opt, ref = OPTIMIZERS[name]([w]), OPTIMIZERS[name]([twin])
    for p, o in ((w, opt), (twin, ref)):
        (p**2).sum().backward()
        o.step()
    state = {k: v.clone() for k, v in opt.state[w].items()}
    before = w.detach().clone()
    for bad in (math.nan, math.inf):
        w.grad = torch.full_like(w, bad)
        step_if_finite(opt, torch.tensor(False))
        assert torch.equal(w.detach(), before)
        for k, v in opt.state[w].items():
            assert torch.equal(v, state[k]), k
    g = torch.randn(4, 3)
    w.grad, twin.grad = g.clone(), g.clone()
    step_if_finite(opt, torch.tensor(True))
    ref.step()
    assert torch.equal(w.detach(), twin.detach())
    for k, v in opt.state[w].items():
        assert torch.equal(v, ref.state[twin][k]), k


def test_a_conditional_step_needs_a_first_checked_step():
    w = torch.nn.Parameter(torch.ones(2))
    w.grad = torch.ones(2)
    with pytest.raises(ValueError, match="first step checked"):
        step_if_finite(torch.optim.RMSprop([w]), torch.tensor(True))


def test_the_moving_average_moves_only_on_finite_steps():
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    model = torch.nn.Linear(3, 2)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    twin = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    ema.update_parameters(model)
    twin.update_parameters(model)
    with torch.no_grad():
        model.weight.add_(1.0)
    frozen = [p.clone() for p in ema.module.parameters()]
    ema_update_if_finite(ema, model, 0.9, torch.tensor(False))
    assert all(torch.equal(a, b) for a, b in zip(ema.module.parameters(), frozen))
    ema_update_if_finite(ema, model, 0.9, torch.tensor(True))
    twin.update_parameters(model)
    for a, b in zip(ema.module.parameters(), twin.module.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


def gpu_options(name: str, device: torch.device) -> dict[str, bool]:
    return {"fused": True} if name == "adam" else {}


@pytest.fixture
def gpu_like_steps(monkeypatch):
    """The trainer's GPU behaviour on the CPU: fused Adam and the sync-free step."""
    monkeypatch.setattr(loop_module, "sync_free", lambda device: True)
    monkeypatch.setattr(optim_module, "optimizer_options", gpu_options)


def nan_on_calls(monkeypatch, bad: set[int]) -> None:
    original, calls = loop_module.vae_objective, [0]

    def patched(*args, **kwargs) -> Objective:
        obj = original(*args, **kwargs)
        calls[0] += 1
        return Objective(obj.value, obj.surrogate * math.nan) if calls[0] in bad else obj

    monkeypatch.setattr(loop_module, "vae_objective", patched)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").open()]


def test_a_sync_free_step_returns_its_flag_on_the_device(gpu_like_steps, monkeypatch):
    trainer = VAETrainer(load_train_config(overrides=SMALL))
    assert trainer.sync_free and trainer.optimizer.param_groups[0]["fused"]
    assert trainer.train_step().finite is True  # the first step is checked
    before = {k: v.clone() for k, v in trainer.vae.state_dict().items()}
    nan_on_calls(monkeypatch, {1})
    flag = trainer.train_step(log_value=False).finite
    assert isinstance(flag, torch.Tensor) and flag.shape == () and not bool(flag)
    for k, v in trainer.vae.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize(
    ("optim", "bad", "extra", "expected"),
    [
        ("adam", {3, 4}, ["steps=12", "log_every=5"], (12, 2, 0)),
        ("rmsprop", {6, 7, 8}, ["steps=12", "checkpoint_every=4", "log_every=3"], (12, 3, 1)),
        (
            "adam",
            {6, 7, 8},
            ["steps=12", "checkpoint_every=4", "log_every=3", "optim.ema=0.9"],
            (12, 3, 1),
        ),
    ],
)
def test_sync_free_training_is_the_same_run_as_checked_training(
    monkeypatch, tmp_path, optim, bad, extra, expected
):
    """Flags read back at the sync points and replayed give the same skips, rollbacks,
    records and weights as a read every step (the rollback falls on a sync point here)."""
    cfg = load_train_config(
        overrides=[*SMALL, f"optim.name={optim}", "faults.max_bad_steps=3", *extra]
    )
    runs = {}
    for mode in ("checked", "sync_free"):
        with monkeypatch.context() as m:
            if mode == "sync_free":
                m.setattr(loop_module, "sync_free", lambda device: True)
                m.setattr(optim_module, "optimizer_options", gpu_options)
            nan_on_calls(m, bad)
            out = tmp_path / mode
            metrics = train_vae(cfg, out, False, tensorboard=False)
            runs[mode] = (metrics, records(out), load_checkpoint(out / "checkpoint.pt"))
    (m1, r1, c1), (m2, r2, c2) = runs["checked"], runs["sync_free"]
    assert (m2["steps"], m2["skipped_steps"], m2["rollbacks"]) == expected
    assert (m1["steps"], m1["skipped_steps"], m1["rollbacks"]) == expected

    def strip(rec: list[dict]) -> list[dict]:  # fused Adam rounds otherwise than foreach
        skip = ("images_per_second", "time")
        return [{k: pytest.approx(v, rel=1e-5) for k, v in r.items() if k not in skip} for r in rec]

    assert strip(r1) == strip(r2)
    for k, v in c1["model"].items():
        torch.testing.assert_close(c2["model"][k], v, rtol=1e-5, atol=1e-6)


def test_a_rollback_waits_for_the_next_sync_point(gpu_like_steps, monkeypatch, tmp_path):
    nan_on_calls(monkeypatch, {6, 7})
    cfg = load_train_config(
        overrides=[
            *SMALL,
            "steps=12",
            "checkpoint_every=4",
            "log_every=5",
            "faults.max_bad_steps=2",
        ]
    )
    m = train_vae(cfg, tmp_path, False, tensorboard=False)
    assert (m["steps"], m["skipped_steps"], m["rollbacks"], m["lr_scale"]) == (12, 2, 1, 0.5)
    rec = records(tmp_path)
    assert [r["step"] for r in rec if "rollback" in r] == [4]
    assert [r["step"] for r in rec if "bound" in r] == [5, 10, 12]


# -- checkpoints across kinds of device --------------------------------------------------------
def test_the_rng_state_covers_the_devices_of_the_run():
    cpu = torch.device("cpu")
    state = rng_state(cpu)
    assert set(state) == {"cpu"}
    a = torch.rand(3)
    assert set_rng_state(state, cpu) is True
    assert torch.equal(torch.rand(3), a)
    assert set_rng_state(state["cpu"], cpu) is True  # an older checkpoint's bare state
    with fork_rng(cpu):  # a block with its own numbers leaves the run's stream as it was
        torch.manual_seed(123)
        torch.rand(5)
    assert torch.equal(torch.rand(3), a)


def test_a_checkpoint_of_a_gpu_run_resumes_on_the_cpu(tmp_path, monkeypatch):
    """A GPU checkpoint holds fused/capturable optimizer groups and a CUDA RNG state; on the
    CPU it loads with this optimizer's flags and the CPU stream."""
    cfg = load_train_config(overrides=[*SMALL, "steps=4", "log_every=1"])
    train_vae(cfg, tmp_path, False, tensorboard=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    for g in state["optimizer"]["param_groups"]:
        g.update(fused=True, capturable=True)
    state["rng"] = [{"cpu": state["rng"][0]["cpu"], "cuda": torch.zeros(16, dtype=torch.uint8)}]
    trainer = VAETrainer(load_train_config(overrides=[*SMALL, "steps=6"]))
    trainer.load_state_dict(state)
    group = trainer.optimizer.param_groups[0]
    assert not group.get("fused") and not group.get("capturable")
    assert trainer.train_step().finite is True and trainer.step == 5


def test_optimizer_groups_take_this_optimizer_s_device_flags():
    w = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.Adam([w], fused=True)
    saved = {"state": {}, "param_groups": [{"params": [0], "fused": None, "capturable": False}]}
    load_optimizer_state(opt, saved)
    assert opt.param_groups[0]["fused"] is True
    assert saved["param_groups"][0]["fused"] is None  # the saved state is not changed


# -- evaluation on the device ------------------------------------------------------------------
def test_evaluation_sizes_default_to_today_s_on_the_cpu():
    trainer = VAETrainer(load_train_config(overrides=SMALL))
    x = trainer.data.valid[:30]
    assert eval_sizes(trainer.vae, x, 5000, None, None) == (100, 20)
    assert eval_sizes(trainer.vae, x, 50, None, 7) == (50, 7)
    assert eval_sizes(trainer.vae, x, 5000, 300, None) == (300, 20)


def test_evaluation_results_come_back_on_the_cpu_and_match_the_explicit_sizes():
    trainer = VAETrainer(load_train_config(overrides=SMALL))
    x = trainer.data.valid[:30]
    auto = evaluate(trainer.vae, x, 200, None, None, iwae_k=5, seed=3)
    given = evaluate(trainer.vae, x, 200, 100, 20, iwae_k=5, seed=3)
    assert auto == given


def test_the_data_moves_to_the_device_whole():
    trainer = VAETrainer(load_train_config(overrides=SMALL))
    meta = trainer.data.to("meta")
    assert meta.valid.device.type == meta.test.device.type == "meta"
    assert meta.train.dataset.images.device.type == "meta"
    assert trainer.data.train.dataset.images.device.type == "cpu"  # a copy, not a move
    assert trainer.data.to("cpu") is trainer.data


@pytest.mark.slow
def test_a_compiled_step_trains_like_the_eager_one():
    """``compile=true`` (torch.compile of the loss, forward and backward) trains the same
    model: the compiled code draws its noise with inductor's generator (seeded from the
    run's), so the bounds agree to their Monte Carlo noise, not bit for bit (about a
    minute of compilation on two cores)."""
    bounds = {}
    for compiled in (False, True):
        cfg = load_train_config(overrides=[*SMALL, f"compile={str(compiled).lower()}"])
        trainer = VAETrainer(cfg)
        bounds[compiled] = [trainer.train_step().values["bound"] for _ in range(4)]
    assert bounds[True] == pytest.approx(bounds[False], rel=3e-3)
    assert bounds[True][-1] > bounds[True][0]


# -- several GPUs ------------------------------------------------------------------------------
@pytest.mark.parametrize(("cuda", "backend"), [(True, "cpu:gloo,cuda:nccl"), (False, "gloo")])
def test_the_process_group_adds_nccl_for_cuda_tensors_where_there_is_cuda(
    monkeypatch, cuda, backend
):
    import torch.distributed as dist

    from vilab.distributed import world_from_env

    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda b, timeout: seen.update(backend=b))
    monkeypatch.setattr(dist, "get_rank", lambda: 3)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    env = {
        "WORLD_SIZE": "4",
        "RANK": "3",
        "LOCAL_RANK": "1",
        "MASTER_ADDR": "h",
        "MASTER_PORT": "1",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    world = world_from_env()
    assert seen == {"backend": backend}
    assert (world.rank, world.size, world.local_rank) == (3, 4, 1)


@pytest.mark.parametrize("bad", [{"chunk": 0}, {"batch": 0}, {"chunk": -3}])
def test_a_bad_chunk_or_batch_is_refused_even_though_none_means_sized_for_the_device(bad):
    trainer = VAETrainer(load_train_config(overrides=SMALL))
    sizes = {"chunk": None, "batch": None, **bad}
    name, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=rf"{name}={value}; accepted: a positive integer"):
        evaluate(trainer.vae, trainer.data.valid[:4], 10, sizes["chunk"], sizes["batch"])
