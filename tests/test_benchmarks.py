"""The helpers the benchmark scripts share (``benchmarks/common.py``) and the scripts'
command lines: defaults under ``--quick``, validation with clear errors, one fit runner."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import common  # noqa: E402

from vilab.config import load_fit_config  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = common.base_parser("Title.\n\nMore.", ("a", "b"), "a")
    p.add_argument("--steps", type=int)
    p.add_argument("--rate", type=float, default=1.0)
    return p


def test_base_parser_has_the_shared_options():
    p = parser()
    assert p.description == "Title."
    args = p.parse_args(["--quick", "--data-dir", "d", "--json", "x.json", "--part", "b"])
    assert (args.part, args.quick, args.threads, args.seed) == ("b", True, 2, 0)
    assert (args.data_dir, args.json) == ("d", Path("x.json"))
    no_data = common.base_parser(None, ("a",), "a", data_dir=False).parse_args([])
    assert not hasattr(no_data, "data_dir")


@pytest.mark.parametrize(("argv", "steps"), [([], 100), (["--quick"], 5), (["--steps", "7"], 7)])
def test_fill_defaults_picks_the_quick_or_full_value(argv, steps):
    args = parser().parse_args(argv)
    common.fill_defaults(args, {"steps": (5, 100)})
    assert args.steps == steps


def test_require_names_the_option_and_the_bound(capsys):
    p = parser()
    common.require(p, p.parse_args([]), ["steps"])  # None: left to the caller
    with pytest.raises(SystemExit):
        common.require(p, p.parse_args(["--steps", "0"]), ["steps"])
    assert "--steps must be ≥ 1, got 0" in capsys.readouterr().err
    for bad in ("0", "nan"):
        with pytest.raises(SystemExit):
            common.require(p, p.parse_args(["--rate", bad]), ["rate"], 0, strict=True)
        assert f"--rate must be > 0, got {float(bad)}" in capsys.readouterr().err


def test_list_types_reject_bad_items_naming_them():
    assert common.int_list("2, 8,32") == [2, 8, 32]
    for bad in ("2,x", "0", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            common.int_list(bad)
    parse = common.choice_list("target", ("U1", "U2"))
    assert parse("U2,U1") == ["U2", "U1"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown target U9; choose from U1, U2"):
        parse("U1,U9")


def test_rotated_alternates_the_order_every_round():
    assert [common.rotated(["a", "b"], r) for r in range(3)] == [["a", "b"], ["b", "a"], ["a", "b"]]
    assert common.rotated(["a", "b", "c"], 4) == ["b", "c", "a"]


def test_combined_stderr_of_batches():
    # batch b of n_b items with mean error se_b: sqrt(Σ (n_b se_b)²) / N
    assert common.combined_stderr([0.3, 0.4], [10, 10]) == pytest.approx(0.25)
    assert common.combined_stderr([0.3, 0.4]) == pytest.approx(0.25)  # equal batches
    assert common.combined_stderr([1.0, 2.0], [1, 3]) == pytest.approx(math.sqrt(37) / 4)
    with pytest.raises(ValueError, match="2 standard errors but 1 batch sizes"):
        common.combined_stderr([1.0, 2.0], [1])


def test_from_args_fills_a_dataclass_by_option_name():
    @dataclasses.dataclass
    class Recipe:
        steps: int
        threads: int

    args = argparse.Namespace(steps=3, threads=4, other=None)
    assert common.from_args(Recipe, args, threads=1) == Recipe(3, 1)


def test_goal_line_and_notes():
    assert common.goal_line("g", "1.0×", True) == "- g: 1.0× — **PASS**"
    assert common.goal_line("g", "–", None, "why") == "- g: – — **n/a** (why)"
    assert common.join_notes("", "a", "", "b") == "a; b"


@dataclasses.dataclass
class Figures(common.FitFigures):
    name: str

    @property
    def where(self) -> str:
        return f"{self.name} on U1"


def tiny_fit(**change: Any):
    base: dict[str, Any] = {
        "target": {"name": "U1"},
        "family": {"kind": "mean_field"},
        "steps": 3,
        "samples": 16,
        "eval_samples": 200,
        "figures": False,
        "threads": 1,
    }
    return load_fit_config(base=base | change)


def test_fit_figures_record_a_fit(keep_threads):
    figures = Figures("mean_field")
    metrics = figures.run(
        tiny_fit(), then=lambda run_dir, m: {"seen": (run_dir / "config.yaml").is_file()}
    )
    assert metrics["seen"] is True  # `then` reads the run directory before it goes
    assert figures.steps == 3 and figures.error is None and figures.seconds > 0
    assert math.isfinite(figures.kl) and figures.kl_stderr > 0
    assert figures.status().startswith("KL ")
    assert figures.cell(figures.kl, figures.kl_stderr, "*").endswith("*")


def test_fit_figures_record_a_failure_instead_of_raising(keep_threads, capsys):
    def fail(run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
        raise FloatingPointError("diverged")

    figures = Figures("planar")
    assert figures.run(tiny_fit(), then=fail) == {}
    assert figures.error == "FloatingPointError" and figures.kl is None
    assert "planar on U1: diverged" in capsys.readouterr().err
    assert figures.cell(None, None) == "failed (FloatingPointError)"
    assert figures.status() == "FloatingPointError"


@pytest.mark.parametrize("script", sorted(p.stem for p in BENCHMARKS.glob("*.py")))
def test_every_name_a_script_takes_from_the_shared_modules_exists(script):
    """``common.X``, ``baselines.X`` and ``from common import X``: parts that the quick runs
    here do not reach (the peers' sides need their own environment) still resolve."""
    text = (BENCHMARKS / f"{script}.py").read_text()
    for module in ("common", "baselines"):
        shared = __import__(module)
        used = set(re.findall(rf"\b{module}\.([A-Za-z_]\w*)", text))
        for names in re.findall(rf"^from {module} import \(?([^)]*?)\)?$", text, re.M | re.S):
            used |= {n.strip() for n in names.replace("\n", ",").split(",") if n.strip()}
        missing = sorted(n for n in used - {"py"} if not hasattr(shared, n))  # not common.py
        assert not missing, f"{script}.py uses {module}.{missing}, which does not exist"


@pytest.mark.parametrize(
    "script", ["density2d", "mnist", "uivi", "posteriors", "gpu", "posteriordb"]
)
def test_scripts_parse_their_quick_defaults(script):
    module = __import__(script)
    args = module.parse_args(["--quick"])
    assert args.quick and args.threads == 2 and args.seed == 0 and args.json is None
    full = module.parse_args([])
    expected = {
        "density2d": ("steps", 20, 8_000),
        "mnist": ("eval_samples", 10, 1000),
        "uivi": ("max_seconds", 10.0, 120.0),
        "posteriors": ("seconds", 2.0, 90.0),
        "gpu": ("eval_samples", 10, 1000),
        "posteriordb": ("seconds", 10.0, 120.0),
    }[script]
    assert (getattr(args, expected[0]), getattr(full, expected[0])) == expected[1:]
    with pytest.raises(SystemExit):
        module.parse_args(["--threads", "0"])


def test_gpu_benchmark_quick_runs_every_part_on_the_cpu(
    shared_data, keep_threads, tmp_path, capsys
):
    """``benchmarks/gpu.py --quick --device cpu``: every part runs, the plain models compute
    what vilab's do (same −ELBO and log-weights with the same noise), and the results
    are written."""
    gpu = __import__("gpu")
    stub = tmp_path / "test_stub.py"  # stands in for tests/test_devices.py: collected only
    stub.write_text("def test_nothing():\n    pass\n")
    out = tmp_path / "gpu.json"
    argv = ["--quick", "--device", "cpu", "--data-dir", str(shared_data)]
    gpu.main([*argv, "--devices-test", str(stub), "--json", str(out)])
    text = capsys.readouterr().out
    for part in ("devices", "train", "eval", "precision", "seed002"):
        assert f"## ({part})" in text
    assert "**CPU**" in text and "## Goals" in text
    r = json.loads(out.read_text())
    assert r["device"] == "cpu"
    assert r["devices"]["returncode"] == 0 and "1 test collected" in r["devices"]["summary"]
    for name in ("mean_field", "iaf"):
        train = r["train"][name]
        assert set(train["rows"]) == {"vilab", "plain"}  # no compiled row on a CPU by default
        losses = train["same_noise_neg_elbo"].values()
        assert max(losses) - min(losses) < 1e-3
        assert train["goal_ratio"] > 0
        assert r["eval"][name]["same"] and r["eval"][name]["ratio"] > 0
    assert math.isfinite(r["precision"]["diff"]) and r["precision"]["max_window_gap"] >= 0
    assert [p["step"] for p in r["seed002"]["points"]] == [0, 1, 2, 3, 4]
    assert len(r["goals"]) == 7


def test_posteriordb_benchmark_names_the_issues_15_posteriors_and_two_quick_ones():
    posteriordb = __import__("posteriordb")
    assert len(posteriordb.POSTERIORS) == 15 == len(set(posteriordb.POSTERIORS))
    quick, full = posteriordb.parse_args(["--quick"]), posteriordb.parse_args([])
    assert len(quick.posteriors) == 2 and full.posteriors == list(posteriordb.POSTERIORS)
    assert set(posteriordb.VILAB) | set(posteriordb.peers()) == set(full.methods)
    assert posteriordb.parse_args(["--methods", "zuko_maf"]).methods == ["zuko_maf"]


def _card(elbo: float, khat: float = 0.5, err: float = 0.05, draws: bool = True) -> dict:
    ref = {f"{m}_error_{k}": err for m in ("mean", "sd") for k in ("q", "psis")}
    key = "reference_draws" if draws else "reference"
    if draws:
        ref |= {"w1": 1.3, "w1_psis": 1.0, "w1_floor": 1.0}
        ref |= {"ref_mcse_mean_max": 0.01, "ref_mcse_sd_max": 0.12}
    return {"elbo": elbo, "elbo_stderr": 0.01, "khat": khat, key: ref}


def test_posteriordb_benchmark_reuses_fits_of_the_same_budget_only(tmp_path):
    posteriordb = __import__("posteriordb")
    fit = posteriordb.PosteriorFit(target="arK-arK", method="zuko_maf", seed=2, card={"elbo": 1})
    args = {"seconds": 120.0, "samples": 20000, "clock": "cpu"}
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"args": args, "fits": [dataclasses.asdict(fit)]}))
    done = posteriordb.reused([path], 120.0, 20000, "cpu")
    assert done == {("arK-arK", "zuko_maf", 2): fit}
    with pytest.raises(SystemExit, match="do not compare"):
        posteriordb.reused([path], 60.0, 20000, "cpu")


def test_posteriordb_benchmark_options_clock_seeds_suite_targets_and_optional_methods():
    posteriordb = __import__("posteriordb")
    full = posteriordb.parse_args([])
    assert (full.clock, full.seeds) == ("cpu", 1) and "default_2d" not in full.methods
    args = posteriordb.parse_args(
        ["--posteriors", "funnel10", "--methods", "default", "default_2d", "--seeds", "3"]
    )
    assert args.posteriors == ["funnel10"] and args.seeds == 3
    assert posteriordb.parse_args(["--clock", "wall"]).clock == "wall"
    for bad in (["--seeds", "0"], ["--clock", "gpu"]):
        with pytest.raises(SystemExit):
            posteriordb.parse_args(bad)
    cfg = load_fit_config(overrides=["target.name=funnel10", *posteriordb.OPTIONAL["default_2d"]])
    from vilab.config import default_stack

    assert cfg.family.stack == default_stack(2)


def test_posteriordb_training_clock_reads_cpu_time_inside_only():
    import time

    from vilab.train import state

    posteriordb = __import__("posteriordb")
    with posteriordb.training_clock("cpu"):
        assert state.time.perf_counter is time.process_time
    assert state.time is time
    with posteriordb.training_clock("wall"):
        assert state.time.perf_counter is time.perf_counter


def test_posteriordb_tables_average_over_seeds_and_goals_leave_suite_targets_out():
    posteriordb = __import__("posteriordb")
    Fit = posteriordb.PosteriorFit
    p, suite = "eight_schools-eight_schools_centered", "funnel10"
    fits = [
        Fit(target=t, method=m, seed=s, card=_card(e + s, draws=t == p), steps=100, seconds=60)
        for t in (p, suite)
        for s in (0, 1)
        for m, e in (("default", 7.9), ("zuko_maf", 7.0))
    ]
    fits.append(Fit(target=p, method="pyro_iaf", seed=0, error="RuntimeError"))
    by = {t: posteriordb.summaries([f for f in fits if f.target == t]) for t in (p, suite)}
    default = by[p][0]
    assert (default.method, default.seeds) == ("default", 2)
    assert default.elbo == pytest.approx(8.4) and default.elbo_se == pytest.approx(0.5)
    assert default.get("w1") == 1.3 and default.get("w1_psis") == 1.0 and default.meets_goal()
    text = posteriordb.table(p, by[p])
    assert "(2 seeds)" in text and "8.40 ± 0.50" in text and "s.e. over seeds" in text
    assert "| pyro_iaf | | | failed (seed 0: RuntimeError)" in text
    assert "own Monte Carlo s.e., max over coordinates: means 0.010, sds 0.120" in text
    assert "nan" in posteriordb.table(suite, by[suite])  # no W1 against a closed form
    lines = posteriordb.goals(by, [], quick=False)
    assert "1 of 1 measured" in lines[0] and "behind on 0 of 1" in lines[2]
    assert "PASS" in lines[1] and "worst 1.00 × floor; worst 1.30 × floor, above on" in lines[1]
    one = posteriordb.summaries([f for f in fits if f.target == p and f.seed == 0])
    assert one[0].elbo_se == 0.01  # one seed: the card's Monte Carlo s.e.


def test_freyfaces_benchmark_scores_a_finished_row_once(tmp_path, monkeypatch):
    data = Path(common.default_data_dir(None))
    if not (data / "freyfaces").is_dir():
        pytest.skip("no Frey Faces data (set VILAB_DATA_DIR)")
    freyfaces = __import__("freyfaces")
    argv = ["freyfaces.py", "--quick", "--rows", "vampprior_vae", "--runs-dir", str(tmp_path)]

    def run(name: str) -> dict[str, Any]:
        monkeypatch.setattr(sys, "argv", [*argv, "--json", str(tmp_path / name)])
        freyfaces.main()
        return json.loads((tmp_path / name).read_text())["rows"]["vampprior_vae"]

    first = run("a.json")
    assert len(list((tmp_path / "vampprior_vae").glob("bench_eval_K100_seed0_quick.json"))) == 1
    monkeypatch.setattr(freyfaces, "evaluate", lambda *a, **k: pytest.fail("scored again"))
    assert run("b.json") == first
