"""Evaluation: progress on stderr that changes no number, the up-front cost line of the
final test evaluation, and ``vilab eval`` saying what a directory is."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from tiny_vae import TINY_VAE

from vilab.cli import main
from vilab.commands.train import train_vae
from vilab.config import load_train_config
from vilab.core.progress import Progress, duration
from vilab.evaluation import FINAL_EVAL_HINT, evaluate, evaluate_ais
from vilab.vae import build_vae

SMALL = [*TINY_VAE, "posterior.hidden=[16]", "eval.valid_images=50", "eval.valid_samples=5"]


@pytest.fixture(scope="module")
def vae_and_images():
    torch.manual_seed(0)
    vae = build_vae(load_train_config(overrides=SMALL))
    return vae, (torch.rand(30, 784) < 0.2).float()


def test_evaluate_shows_a_bar_and_its_cost_only_when_asked(vae_and_images, capsys) -> None:
    vae, x = vae_and_images
    quiet = evaluate(vae, x, 12, 5, 8, iwae_k=4, seed=3)
    assert capsys.readouterr().err == ""
    shown = evaluate(vae, x, 12, 5, 8, iwae_k=4, seed=3, progress=True, hint="cheaper: X")
    err = capsys.readouterr().err
    assert shown == quiet  # the bar draws no random numbers: the same numbers exactly
    assert "log p(x), K=12" in err and "30/30" in err and "img" in err
    cost = [line for line in err.replace("\r", "\n").splitlines() if "in all" in line]
    assert len(cost) == 1
    assert "30 images in batches of 8: about" in cost[0] and cost[0].endswith("cheaper: X")
    assert "the first of 4 took" in cost[0]


def test_evaluate_ais_shows_a_bar_only_when_asked(vae_and_images, capsys) -> None:
    vae, x = vae_and_images
    quiet = evaluate_ais(vae, x[:6], chains=2, num_dists=4, num_leapfrog=1, batch=3, seed=5)
    assert capsys.readouterr().err == ""
    shown = evaluate_ais(
        vae, x[:6], chains=2, num_dists=4, num_leapfrog=1, batch=3, seed=5, progress=True
    )
    err = capsys.readouterr().err
    assert shown == quiet
    assert "AIS log p(x), 2 chains × 4 steps" in err and "6/6" in err and "in all" in err


def test_progress_without_a_label_is_silent_and_one_part_has_no_cost_line(capsys) -> None:
    with Progress(None, 10, "img", 5, hint="cheaper") as bar:
        for _ in range(5):
            bar.advance(2)
    assert capsys.readouterr().err == ""
    with Progress("work", 10, "img", 1) as bar:
        bar.advance(10)
    err = capsys.readouterr().err
    assert "work" in err and "10/10" in err and "in all" not in err


def test_duration_reads_as_seconds_minutes_hours() -> None:
    assert [duration(s) for s in (4.2, 1500, 9000)] == ["4 s", "25 min", "2.5 h"]


def test_final_test_evaluation_says_its_cost_up_front(tmp_path, capsys) -> None:
    overrides = [*SMALL, "steps=4", "eval_every=4", "eval.samples=6", "eval.batch=250"]
    cfg = load_train_config(overrides=overrides)
    metrics = train_vae(cfg, tmp_path, progress=True, tensorboard=False)
    err = capsys.readouterr().err
    cost = [line for line in err.replace("\r", "\n").splitlines() if "in all" in line]
    assert len(cost) == 1, err
    assert cost[0].startswith("log p(x), K=6: 1000 images in batches of 250: about")
    assert cost[0].endswith(FINAL_EVAL_HINT)
    assert "eval.samples" in FINAL_EVAL_HINT and "final_eval=false" in FINAL_EVAL_HINT
    # said after the first batch, before the last three: before the bar reaches the end
    assert err.index(cost[0]) < err.rindex("1000/1000")
    assert metrics["test"]["samples"] == 6
    quiet = train_vae(cfg, tmp_path / "quiet", progress=False, tensorboard=False)
    assert "in all" not in capsys.readouterr().err
    assert quiet["test"] == {**metrics["test"], "seconds": quiet["test"]["seconds"]}


def _eval_error(capsys, run_dir) -> str:
    assert main(["eval", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def test_eval_of_a_fit_run_says_what_it_is(tmp_path, capsys) -> None:
    run = tmp_path / "fit"
    fit = ["fit", "--target", "banana", "--family", "mean_field", "--out", str(run)]
    fast = ["--steps", "5", "--eval-samples", "100", "--no-progress", "--set", "figures=false"]
    assert main([*fit, *fast]) == 0
    capsys.readouterr()
    err = _eval_error(capsys, run)
    assert "`vilab fit` run" in err and str(run / "metrics.json") in err and "exact KL" in err
    assert "unknown key" not in err
    (run / "metrics.json").unlink()
    assert "not written yet" in _eval_error(capsys, run)


def test_eval_of_a_directory_of_neither_kind_says_so(tmp_path, capsys) -> None:
    assert "does not exist (no config.yaml)" in _eval_error(capsys, tmp_path / "missing")
    assert "is not a vilab run directory (no config.yaml)" in _eval_error(capsys, tmp_path)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"colour": "red"}))
    err = _eval_error(capsys, tmp_path)
    assert "neither a `vilab train` nor a `vilab fit` run" in err and "colour" in err
    (tmp_path / "config.yaml").write_text(json.dumps([1, 2]))
    assert "must hold a mapping" in _eval_error(capsys, tmp_path)


def test_evaluate_gives_the_distribution_of_per_image_khat(vae_and_images) -> None:
    """k̂ of each image's K weights (Yao et al. 2018), summarized; the same k̂ as
    :func:`vilab.estimators.importance.pareto_khat` on weights drawn with the same seed,
    and the log p(x) is unchanged by asking for it."""
    from vilab.core.seeding import Stream, derive_seed
    from vilab.estimators.importance import pareto_khat

    vae, x = vae_and_images
    plain = evaluate(vae, x, 200, 200, 30, seed=5)
    with_khat = evaluate(vae, x, 200, 200, 30, seed=5, khat=True)
    assert with_khat["log_px"] == plain["log_px"]
    s = with_khat["khat"]
    assert s["images"] == 30 and s["q10"] <= s["median"] <= s["q90"] <= s["max"]
    assert 0.0 <= s["frac_above_0.7"] <= s["frac_above_0.5"] <= 1.0
    with torch.random.fork_rng(devices=[]):  # batch 0 of per_batch draws from this seed
        torch.manual_seed(derive_seed(5, Stream.EVAL_BATCH, 0))
        vae.eval()
        lw = vae.log_weights(x, 200, h=vae.posterior.context(x))
    k = pareto_khat(lw.double().T)
    assert s["median"] == float(k.median())  # the lower median, one of the k̂
    assert s["max"] == pytest.approx(float(k.max()))
    with pytest.raises(ValueError, match="at least 100"):
        evaluate(vae, x, 50, 50, 30, khat=True)
