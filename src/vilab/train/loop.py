"""Train a VAE with an amortized flexible posterior, and evaluate it honestly.

One run directory holds everything (DESIGN.md): ``config.yaml``, ``metrics.jsonl`` (train
bound every ``log_every`` steps, validation every ``eval_every``), TensorBoard scalars and
image grids, ``checkpoint.pt`` (atomic, resumes exactly: the batch at step s depends only
on (seed, s), and the RNG state is saved), ``best.pt`` (best validation log p(x)),
figures, and ``metrics.json`` with the test log p(x) by importance sampling.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vilab.config import DataConfig, TrainConfig, dump_config
from vilab.data import Batches, load_dataset
from vilab.data.mnist import load_mnist
from vilab.estimators.loglik import importance_log_likelihood, mean_with_stderr
from vilab.train.checkpoint import atomic_write_text, load_checkpoint, save_checkpoint
from vilab.train.logging import RunLogger, read_metrics
from vilab.train.schedule import lr_factor, progress
from vilab.vae import VAE, build_vae, vae_objective


@dataclass
class VAEData:
    """Training batches and fixed validation/test tensors ``(N, 784)``."""

    train: Batches
    valid: Tensor
    test: Tensor
    valid_labels: Tensor | None
    test_labels: Tensor | None


class _GreyBatches(Batches):
    """Batches of grey levels in [0, 1] (continuous data for a Gaussian likelihood)."""

    def batch(self, step: int) -> Tensor:
        return self.dataset.images[self.indices(step)].to(self.dtype) / 255.0


def load_vae_data(cfg: DataConfig, seed: int) -> VAEData:
    """The data set of a run (see :class:`~vilab.config.DataConfig`)."""
    if cfg.name == "mnist_gray":
        from vilab.data.binarize import ImageDataset

        images, labels = load_mnist("train", cfg.data_dir)
        test, test_labels = load_mnist("test", cfg.data_dir)
        n = len(images) - 10_000
        train = ImageDataset(images[:n], labels[:n], False, "mnist_gray", "train")
        return VAEData(
            _GreyBatches(train, cfg.batch_size, seed=seed),
            images[n:].float() / 255,
            test.float() / 255,
            labels[n:],
            test_labels,
        )
    sets = {s: load_dataset(cfg.name, s, cfg.data_dir) for s in ("train", "valid", "test")}
    return VAEData(
        Batches(sets["train"], cfg.batch_size, seed=seed),
        sets["valid"].tensor(),
        sets["test"].tensor(),
        sets["valid"].labels,
        sets["test"].labels,
    )


@torch.no_grad()
def evaluate(
    vae: VAE, images: Tensor, samples: int, chunk: int, batch: int, iwae_k: int | None = None
) -> dict[str, float]:
    """Importance-sampled log p(x) over ``images`` with K = ``samples`` per image.

    Batched over images (``batch`` at a time) and samples (``chunk`` at a time) with a
    streaming log-sum-exp; returns the mean log p(x), its Monte Carlo standard error, the
    NLL, and from the same samples the ELBO and IWAE_k (k = ``iwae_k``).
    """
    was_training = vae.training
    vae.eval()
    lp, se, el, iw = [], [], [], []
    k = None if iwae_k is None else min(iwae_k, chunk, samples)
    for x in images.split(batch):
        h = vae.posterior.context(x)
        est = importance_log_likelihood(partial(vae.log_weights, x, h=h), samples, chunk, k)
        lp.append(est.log_px)
        se.append(est.stderr)
        el.append(est.elbo)
        if est.iwae is not None:
            iw.append(est.iwae)
    vae.train(was_training)
    log_px, stderr = mean_with_stderr(torch.cat(lp), torch.cat(se))
    out = {
        "log_px": log_px,
        "log_px_stderr": stderr,
        "nll": -log_px,
        "elbo": float(torch.cat(el).mean()),
        "samples": samples,
        "images": int(images.shape[0]),
    }
    if iw:
        out[f"iwae_{k}"] = float(torch.cat(iw).mean())
    return out


OPTIMIZERS = {
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
    "adamax": lambda p, lr: torch.optim.Adamax(p, lr=lr),
    "rmsprop": lambda p, lr: torch.optim.RMSprop(p, lr=lr, centered=True),
}


class VAETrainer:
    """Owns the model, optimizer, data and the step; ``train_step`` does one update."""

    def __init__(self, config: TrainConfig, data: VAEData | None = None) -> None:
        self.config = config
        torch.manual_seed(config.seed)
        self.data = data if data is not None else load_vae_data(config.data, config.seed)
        self.vae = build_vae(config)
        self.optimizer = OPTIMIZERS[config.optim.name](self.vae.parameters(), config.optim.lr)
        self.step = 0
        self.seconds = 0.0
        self.best: dict[str, Any] = {}

    def train_step(self, log_value: bool = True) -> dict[str, float]:
        """One update; ``log_value=False`` may skip work only the logged bound needs."""
        cfg = self.config
        frac = progress(self.step, self.seconds, cfg.steps, cfg.max_seconds)
        lr = cfg.optim.lr * lr_factor(self.step, frac, cfg.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x = self.data.train.batch(self.step)
        obj = vae_objective(self.vae, x, cfg.objective, self.step, log_value)
        loss = -obj.surrogate
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss at step {self.step + 1}; lower optim.lr "
                f"(now {self.config.optim.lr}) or set optim.grad_clip"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.optim.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.vae.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        self.step += 1
        return {"bound": float(obj.value.mean()), "lr": lr}

    def validate(self) -> dict[str, float]:
        e = self.config.eval
        valid = self.data.valid[: e.valid_images]
        r = evaluate(self.vae, valid, e.valid_samples, min(e.chunk, e.valid_samples), e.batch)
        return {"valid_elbo": r["elbo"], "valid_log_px": r["log_px"]}

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "seconds": self.seconds,
            "best": self.best,
            "model": self.vae.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vae.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        self.step, self.seconds = int(state["step"]), float(state["seconds"])
        self.best = dict(state["best"])


def _images(trainer: VAETrainer, run_dir: Path, logger: RunLogger | None, step: int) -> None:
    from vilab.plots.images import grid, pairs, save_grid

    vae = trainer.vae
    torch.manual_seed(1234 + step)  # fixed pictures, independent of the training RNG
    samples = grid(vae.sample(64), nrow=8)
    x = trainer.data.test[:32]
    recon = pairs(x, vae.reconstruct(x))
    save_grid(samples, run_dir / "samples.png", "samples")
    save_grid(recon, run_dir / "reconstructions.png", "input | reconstruction")
    if logger is not None and logger.writer is not None:
        logger.writer.add_image("samples", samples.unsqueeze(0), step)
        logger.writer.add_image("reconstructions", recon.unsqueeze(0), step)


def train_vae(
    config: TrainConfig,
    run_dir: str | Path,
    progress: bool = True,
    resume: bool = False,
    data: VAEData | None = None,
    tensorboard: bool = True,
) -> dict[str, Any]:
    """Train, evaluate on the test set, and write the run directory; returns metrics.
    ``config.threads`` (if set) sets torch's thread count for the process."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    trainer = VAETrainer(config, data)
    ckpt = run_dir / "checkpoint.pt"
    if resume and ckpt.exists():
        trainer.load_state_dict(load_checkpoint(ckpt))
    elif not resume:
        (run_dir / "best.pt").unlink(missing_ok=True)  # never evaluate an earlier run's model
    atomic_write_text(run_dir / "config.yaml", dump_config(config))
    logger = RunLogger(run_dir, config.steps, trainer.step, progress, tensorboard)
    latent = _LatentTracker(trainer) if config.latent_dim == 2 else None
    interrupted = False
    rng_state = torch.get_rng_state()
    try:
        t_start = time.perf_counter() - trainer.seconds
        while trainer.step < config.steps:
            values = trainer.train_step(log_value=(trainer.step + 1) % config.log_every == 0)
            trainer.seconds = time.perf_counter() - t_start
            step = trainer.step
            if step % config.log_every == 0 or step == config.steps:
                values["images_per_second"] = step * config.data.batch_size / trainer.seconds
                logger.log(step, values)
            if step % config.eval_every == 0 or step == config.steps:
                rng_state = torch.get_rng_state()
                v = trainer.validate()
                logger.log(step, v)
                if v["valid_log_px"] > trainer.best.get("valid_log_px", -math.inf):
                    trainer.best = {"step": step, **v}
                    save_checkpoint(
                        run_dir / "best.pt", {"step": step, "model": trainer.vae.state_dict()}
                    )
                _images(trainer, run_dir, logger, step)
                if latent is not None:
                    latent.snapshot(step)
                torch.set_rng_state(rng_state)
                t_start = time.perf_counter() - trainer.seconds  # evaluation is not training time
            if step % config.checkpoint_every == 0:
                save_checkpoint(ckpt, trainer.state_dict())
            logger.advance()
            if config.max_seconds is not None and trainer.seconds >= config.max_seconds:
                break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        save_checkpoint(ckpt, trainer.state_dict())
        logger.close()
    metrics: dict[str, Any] = {
        "data": config.data.name,
        "posterior": config.posterior.kind,
        "objective": config.objective.kind,
        "latent_dim": config.latent_dim,
        "parameters": sum(p.numel() for p in trainer.vae.parameters()),
        "steps": trainer.step,
        "seconds": trainer.seconds,
        "images_per_second": trainer.step * config.data.batch_size / max(trainer.seconds, 1e-9),
        "best_valid": trainer.best,
        "interrupted": interrupted,
    }
    if config.final_eval and not interrupted:
        best = run_dir / "best.pt"
        if best.exists():
            trainer.vae.load_state_dict(load_checkpoint(best)["model"])
        e = config.eval
        t0 = time.perf_counter()
        test = evaluate(trainer.vae, trainer.data.test, e.samples, e.chunk, e.batch, iwae_k=50)
        test["seconds"] = time.perf_counter() - t0
        metrics["test"] = test
    _figures(trainer, run_dir, latent)
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    return metrics


def _figures(trainer: VAETrainer, run_dir: Path, latent: _LatentTracker | None) -> None:
    from vilab.plots.curves import plot_vae_curves

    plot_vae_curves(read_metrics(run_dir / "metrics.jsonl"), run_dir / "training.png")
    _images(trainer, run_dir, None, trainer.step)
    if latent is not None:
        latent.save(run_dir)


class _LatentTracker:
    """For a 2-D latent: the test posterior means over training (seed 004's animation),
    the final latent scatter coloured by label and the decoded manifold (seed 003)."""

    def __init__(self, trainer: VAETrainer, n: int = 2000) -> None:
        self.trainer, self.n = trainer, n
        self.frames: list[tuple[int, Tensor]] = []

    @torch.no_grad()
    def means(self) -> Tensor:
        x = self.trainer.data.test[: self.n]
        z, _ = self.trainer.vae.posterior.rsample_and_log_prob(16, x)
        return z.mean(0)

    def snapshot(self, step: int) -> None:
        self.frames.append((step, self.means()))

    def save(self, run_dir: Path) -> None:
        from vilab.plots.latent import latent_animation, latent_scatter, manifold

        labels = self.trainer.data.test_labels
        labels = None if labels is None else labels[: self.n]
        latent_scatter(self.means(), labels, run_dir / "latent.png")
        manifold(self.trainer.vae, run_dir / "manifold.png")
        if self.frames:
            latent_animation(self.frames, labels, run_dir / "latent.gif")


@torch.no_grad()
def evaluate_ais(
    vae: VAE,
    images: Tensor,
    chains: int = 16,
    num_dists: int = 500,
    num_leapfrog: int = 5,
    batch: int = 100,
    init: str = "posterior",
) -> dict[str, Any]:
    """log p(x) by annealed importance sampling (:func:`vilab.estimators.ais.ais`).

    The path starts at the encoder's q(z | x) — in the base space of a flow posterior,
    where the start density is the Gaussian base and the target is
    p(x, T(ε)) |det ∂T/∂ε| (seed 002) — or at the prior (``init="prior"``). Batched over
    ``batch`` images and ``chains`` chains each. A stochastic lower bound on log p(x).
    """
    from vilab.estimators.ais import ais
    from vilab.families.gaussian import StandardNormal
    from vilab.flows.flow import FlowFamily

    if init not in ("posterior", "prior"):
        raise ValueError(f"init must be 'posterior' or 'prior', got {init!r}")
    was_training = vae.training
    vae.eval()
    requires = [p.requires_grad for p in vae.parameters()]
    for p in vae.parameters():
        p.requires_grad_(False)
    family, model = vae.posterior.family, vae.model
    lp, se, acc = [], [], []
    try:
        for x in images.split(batch):
            h = vae.posterior.context(x)
            if init == "prior":
                base: Any = StandardNormal(vae.latent_dim, context_dim=h.shape[-1]).to(h.dtype)
                push = None
            elif isinstance(family, FlowFamily):
                base, push = family.base, family.push
            else:
                base, push = family, None

            def log_target(e: Tensor, x: Tensor = x, h: Tensor = h, push: Any = push) -> Tensor:
                if push is None:
                    return model.log_joint(x, e)
                z, logdet = push(e, h)
                return model.log_joint(x, z) + logdet

            est = ais(
                partial(base.log_prob, context=h),
                lambda c, h=h, base=base: base.rsample_and_log_prob(c, h)[0],
                log_target,
                chains,
                num_dists,
                num_leapfrog,
            )
            lp.append(est.log_z)
            se.append(est.stderr)
            acc.append(est.accept_rate)
    finally:
        for p, r in zip(vae.parameters(), requires):
            p.requires_grad_(r)
        vae.train(was_training)
    log_px, stderr = mean_with_stderr(torch.cat(lp), torch.cat(se))
    return {
        "method": "ais",
        "log_px": log_px,
        "log_px_stderr": stderr,
        "nll": -log_px,
        "chains": chains,
        "num_dists": num_dists,
        "num_leapfrog": num_leapfrog,
        "init": init,
        "accept_rate": sum(acc) / len(acc),
        "images": int(images.shape[0]),
    }


def evaluate_run(
    run_dir: str | Path,
    samples: int | None = None,
    chunk: int | None = None,
    batch: int | None = None,
    split: str = "test",
    data_dir: str | None = None,
    method: str = "is",
    chains: int = 16,
    num_dists: int = 500,
    num_leapfrog: int = 5,
    images: int | None = None,
    init: str = "posterior",
) -> dict[str, Any]:
    """``vilab eval``: log p(x) of a trained run's best (else last) model, by importance
    sampling (``method="is"``) or annealed importance sampling (``"ais"``); the result
    is merged into the run's ``metrics.json`` under ``eval_<split>`` / ``ais_<split>``."""
    from vilab.config import load_train_config

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ValueError(f"{str(run_dir)!r} is not a vilab train run (no config.yaml)")
    overrides = [f"data.data_dir={data_dir}"] if data_dir else []
    config = load_train_config(run_dir / "config.yaml", overrides)
    e = config.eval
    samples, chunk, batch = samples or e.samples, chunk or e.chunk, batch or e.batch
    vae = build_vae(config)
    weights = run_dir / "best.pt" if (run_dir / "best.pt").exists() else run_dir / "checkpoint.pt"
    vae.load_state_dict(load_checkpoint(weights)["model"])
    if split not in ("test", "valid"):
        raise ValueError(f"split must be 'test' or 'valid', got {split!r}")
    if method not in ("is", "ais"):
        raise ValueError(f"method must be 'is' or 'ais', got {method!r}")
    data = load_vae_data(config.data, config.seed)
    x = data.test if split == "test" else data.valid
    x = x[:images] if images else x
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    if method == "is":
        result = evaluate(vae, x, samples, min(chunk, samples), batch, iwae_k=50)
    else:
        result = evaluate_ais(vae, x, chains, num_dists, num_leapfrog, min(batch, 100), init)
    result["seconds"] = time.perf_counter() - t0
    result["weights"] = weights.name
    path = run_dir / "metrics.json"
    metrics = json.loads(path.read_text()) if path.exists() else {}
    metrics[f"{'eval' if method == 'is' else 'ais'}_{split}"] = result
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")
    return result
