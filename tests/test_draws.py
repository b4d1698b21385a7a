"""Draws out as ArviZ data: names gathered into variables, constrained values, importance
log-weights, the netCDF round trip, ``vilab draws`` and what it refuses."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("arviz_base")
pytest.importorskip("h5netcdf")
pytest.importorskip("h5py")
pytest.importorskip("pyro")
xr = pytest.importorskip("xarray")

from pyro_schools import SCHOOLS  # noqa: E402

from vilab import cli  # noqa: E402
from vilab.commands.draws import write_draws  # noqa: E402
from vilab.commands.fit import FitResult, run_fit  # noqa: E402
from vilab.config import load_fit_config  # noqa: E402
from vilab.evaluation.draws import draws_to_arviz, group_names, write_netcdf  # noqa: E402

FAST = ["steps=30", "samples=32", "eval_samples=500", "report_samples=300", "figures=false"]


def _fit(out: Path, *overrides: str) -> FitResult:
    cfg = load_fit_config(overrides=[*FAST, *overrides])
    return run_fit(cfg, out, progress=False, tensorboard=False)


@pytest.fixture(scope="module")
def schools(tmp_path_factory: pytest.TempPathFactory) -> FitResult:
    """A short mean-field fit of eight schools written as a Pyro model (named, constrained
    parameters: mu, tau > 0, theta[1..8])."""
    root = tmp_path_factory.mktemp("draws")
    (root / "schools.py").write_text(textwrap.dedent(SCHOOLS))
    return _fit(root / "run", f"target.name=pyro:{root / 'schools.py'}:model")


def test_stan_names_become_variables_with_dimensions() -> None:
    names = ("mu", "theta[1]", "theta[2]", "S[1,1]", "S[2,1]", "S[1,2]", "S[2,2]", "x[1]", "x[3]")
    g = group_names(names)
    assert g["mu"] == ((), [(0, ())])
    assert g["theta"] == ((2,), [(1, (0,)), (2, (1,))])
    assert g["S"][0] == (2, 2) and (4, (1, 0)) in g["S"][1]  # column-major S[2,1] -> [1, 0]
    assert g["x[1]"] == ((), [(7, ())]) and "x" not in g  # a gap: kept name by name


def test_to_arviz_holds_named_constrained_draws_and_their_weights(schools) -> None:
    tree = schools.to_arviz(n=300, seed=1)
    post, stats = tree["posterior"], tree["sample_stats"]
    assert post["theta"].shape == (1, 300, 8) and post["mu"].shape == (1, 300)
    assert list(post["theta"]["theta_dim_0"].values) == list(range(1, 9))
    assert (post["tau"].values > 0).all()  # constrained: tau lives on (0, inf)
    lp, lq, lw = (stats[k].values[0] for k in ("lp", "log_q", "log_weight"))
    np.testing.assert_allclose(lw, lp - lq)
    assert math.isclose(np.exp(stats["log_weight_psis"].values).sum(), 1.0, rel_tol=1e-9)
    assert math.isfinite(stats.attrs["pareto_k"])
    again = draws_to_arviz(schools.family, schools.target, 300, seed=1)
    np.testing.assert_array_equal(again["posterior"]["theta"].values, post["theta"].values)
    other = schools.to_arviz(n=300, seed=2)["posterior"]["mu"].values
    assert not np.array_equal(other, post["mu"].values)


def test_the_values_are_the_targets_constrained_names(schools) -> None:
    tree = schools.to_arviz(n=50, seed=3)
    with torch.random.fork_rng():
        torch.manual_seed(3)
        z, _ = schools.family.rsample_and_log_prob(50)
    x = schools.target.constrain(z.detach()).double().numpy()
    names = schools.target.param_names()
    post = tree["posterior"]
    np.testing.assert_allclose(post["mu"].values[0], x[:, names.index("mu")])
    np.testing.assert_allclose(post["theta"].values[0, :, 7], x[:, names.index("theta[8]")])


def test_netcdf_round_trip_and_az_summary(schools, tmp_path: Path) -> None:
    tree = schools.to_arviz(n=200, seed=0)
    out = write_netcdf(tree, tmp_path / "d.nc")
    back = xr.open_datatree(out, engine="h5netcdf")
    for group in ("posterior", "sample_stats"):
        for name, var in tree[group].data_vars.items():
            np.testing.assert_array_equal(back[group][name].values, var.values)
    assert back["sample_stats"].attrs["pareto_k"] == tree["sample_stats"].attrs["pareto_k"]
    azs = pytest.importorskip("arviz_stats")
    if hasattr(azs, "summary"):  # arviz-stats' xarray layer (xarray-einstats) present
        table = azs.summary(back)
        assert "theta[8]" in table.index and "mu" in table.index
    with pytest.raises(ValueError, match="exists: draws never overwrite"):
        write_netcdf(tree, out)


def test_vilab_draws_writes_the_file_and_refuses_to_overwrite(schools, tmp_path, capsys) -> None:
    out = tmp_path / "schools.nc"
    argv = ["draws", str(schools.run_dir), "--n", "120", "--out", str(out), "--seed", "4"]
    assert cli.main(argv) == 0
    assert '"theta": [\n      8\n    ]' in capsys.readouterr().out
    back = xr.open_datatree(out, engine="h5netcdf")
    want = schools.to_arviz(n=120, seed=4)["posterior"]["theta"].values
    np.testing.assert_array_equal(back["posterior"]["theta"].values, want)
    assert cli.main(argv) == 2
    assert f"{str(out)!r} exists" in capsys.readouterr().err


def test_vilab_draws_refuses_a_bad_n_and_what_is_not_a_finished_fit(schools, tmp_path) -> None:
    with pytest.raises(SystemExit):  # argparse: expected a positive integer, got '0'
        cli.build_parser().parse_args(["draws", "run", "--n", "0", "--out", "x.nc"])
    with pytest.raises(ValueError, match="number of draws must be an integer >= 1"):
        write_draws(schools.run_dir, 0, tmp_path / "a.nc")
    with pytest.raises(ValueError, match="does not exist"):
        write_draws(tmp_path / "nowhere", 10, tmp_path / "a.nc")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="is not a vilab run directory"):
        write_draws(tmp_path / "empty", 10, tmp_path / "a.nc")
    half = tmp_path / "half"
    half.mkdir()
    (half / "config.yaml").write_text((schools.run_dir / "config.yaml").read_text())
    with pytest.raises(ValueError, match="is not a finished fit run"):
        write_draws(half, 10, tmp_path / "a.nc")
    assert not (tmp_path / "a.nc").exists()


def test_an_amortized_fit_is_refused_saying_a_context_is_needed(tmp_path) -> None:
    run = _fit(tmp_path / "amortized", "target.name=banana_family", "family.kind=mean_field")
    with pytest.raises(ValueError, match="amortized .* draws need a context"):
        write_draws(run.run_dir, 10, tmp_path / "a.nc")
    with pytest.raises(ValueError, match="amortized .* draws need a context"):
        run.to_arviz(n=10)
