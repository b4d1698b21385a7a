"""Reference chains for ``logistic_breast_cancer``: posterior means and sds by long HMC.

Writes ``src/vilab/targets/reference/logistic_breast_cancer.json`` and prints its SHA-256,
which must then be copied into ``LOGISTIC_REFERENCE_SHA256`` in
``src/vilab/targets/suite.py`` (the target refuses a file whose checksum differs).

Method (all in float64, on one CPU thread):

1. the MAP m by damped Newton on log p̃ (31-D: the exact Hessian is cheap), and the
   Laplace covariance Σ = H⁻¹, H = −∇² log p̃(m), with Cholesky factor L;
2. HMC (:func:`vilab.samplers.hmc.hmc`: identity mass, jittered step size, per-chain dual
   averaging during warm-up) on the whitened posterior of u, z = m + L u, whose Jacobian
   is constant; chains start overdispersed, u₀ ~ N(0, s² I) with s = ``--spread``. Three
   leapfrog steps of ε ≈ 0.55 make a trajectory near π/2, a quarter period of the
   whitened (nearly standard) Gaussian: draws of z and of z² both mix fast (with 8 steps
   the ESS of the squares per gradient was five times lower);
3. convergence by arviz-stats: rank-normalized split R̂ and bulk / tail / sd ESS per
   coordinate (Vehtari et al. 2021, "Rank-normalization, folding, and localization");
   the file is written only if max R̂ < 1.01 and the min bulk and sd ESS > 2000 (else
   exit 1);
4. means, sds, and the Monte Carlo standard errors of both (:func:`mcse_of_sd`).

    .venv/bin/python benchmarks/reference_chains.py            # ~3 minutes, one core
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vilab.samplers.hmc import hmc
from vilab.targets.suite import BreastCancerLogistic

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "src" / "vilab" / "targets" / "reference" / "logistic_breast_cancer.json"
RHAT_MAX, ESS_MIN = 1.01, 2000.0


def map_and_laplace(target: BreastCancerLogistic, tol: float = 1e-10) -> tuple[torch.Tensor, ...]:
    """``(m, L)``: the MAP by damped Newton and the Cholesky factor of the inverse Hessian."""
    z = torch.zeros(target.dim, dtype=torch.float64)
    for _ in range(100):
        grad = torch.func.grad(target.log_prob)(z)
        hess = torch.func.hessian(target.log_prob)(z)
        step = torch.linalg.solve(-hess, grad)
        t, f0 = 1.0, float(target.log_prob(z))
        while float(target.log_prob(z + t * step)) < f0 + 1e-4 * t * float(grad @ step):
            t *= 0.5
        z = z + t * step
        if float(grad.norm()) < tol:
            break
    else:
        raise RuntimeError(f"Newton did not converge: |grad| = {float(grad.norm()):.3g}")
    hess = torch.func.hessian(target.log_prob)(z)
    chol = torch.linalg.cholesky(torch.linalg.inv(-hess))
    return z, chol


def mcse_of_sd(ary: np.ndarray, ess_sd: np.ndarray) -> np.ndarray:
    """Monte Carlo standard error of the sd per coordinate, ``ary (D, chains, draws)``.

    By the delta method, se(s) = se(s²) / (2s) with se(s²)² = Var[(z − z̄)²] / ESS_sd, where
    ESS_sd is the effective sample size of the squares (arviz-stats ``ess(method="sd")``).
    arviz-stats 0.8's ``mcse(method="sd")`` divides by the ESS of the mean instead, which
    HMC's antithetic moves make larger than the number of draws: it understated the
    error of the sds about twofold here (two runs with different seeds disagreed by up
    to 5 of its standard errors).
    """
    c2 = (ary - ary.mean(axis=(-2, -1), keepdims=True)) ** 2
    var = c2.mean(axis=(-2, -1))
    var_of_c2 = (c2**2).mean(axis=(-2, -1)) - var**2
    return np.sqrt(var_of_c2 / ess_sd / var / 4.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2000)
    p.add_argument("--draws", type=int, default=25000)
    p.add_argument("--leapfrog", type=int, default=3)
    p.add_argument("--spread", type=float, default=2.0, help="sd of the starts, whitened")
    p.add_argument("--seed", type=int, default=20240512)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    for name in ("chains", "warmup", "draws", "leapfrog"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be ≥ 1, got {getattr(args, name)}")
    if args.chains < 4:
        raise SystemExit(f"--chains must be ≥ 4 for R̂ to mean anything, got {args.chains}")

    from arviz_stats import __version__ as arviz_stats_version
    from arviz_stats.base import array_stats
    from sklearn import __version__ as sklearn_version

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    started = time.perf_counter()
    target = BreastCancerLogistic(reference=False)
    m, chol = map_and_laplace(target)
    laplace_sd = chol.pow(2).sum(-1).sqrt()
    print(
        f"MAP found; Laplace sd in [{float(laplace_sd.min()):.3g}, {float(laplace_sd.max()):.3g}]"
    )

    def log_prob_u(u: torch.Tensor) -> torch.Tensor:
        return target.log_prob(m + u @ chol.T)

    u0 = args.spread * torch.randn(args.chains, target.dim, dtype=torch.float64)
    res = hmc(
        log_prob_u,
        u0,
        num_samples=args.draws,
        burn_in=args.warmup,
        step_size=0.3,
        num_leapfrog=args.leapfrog,
        target_accept=0.8,
    )
    z = m + res.samples @ chol.T  # (draws, chains, D)
    seconds = time.perf_counter() - started
    ary = z.permute(2, 1, 0).numpy()  # (D, chains, draws)
    rhat = array_stats.rhat(ary, chain_axis=-2, draw_axis=-1)
    ess_bulk = array_stats.ess(ary, chain_axis=-2, draw_axis=-1, method="bulk")
    ess_tail = array_stats.ess(ary, chain_axis=-2, draw_axis=-1, method="tail", prob=0.05)
    mcse_mean = array_stats.mcse(ary, chain_axis=-2, draw_axis=-1, method="mean")
    ess_sd = array_stats.ess(ary, chain_axis=-2, draw_axis=-1, method="sd")
    mcse_sd = mcse_of_sd(ary, ess_sd)
    flat = ary.reshape(target.dim, -1)
    mean, sd = flat.mean(-1), flat.std(-1, ddof=1)
    rhat_max, ess_min = float(np.max(rhat)), float(np.min(ess_bulk))
    ess_sd_min = float(np.min(ess_sd))
    print(
        f"{args.chains} chains × {args.draws} draws in {seconds:.0f} s; step sizes "
        f"{res.step_size.min():.3g}–{res.step_size.max():.3g}, acceptance "
        f"{float(res.accept_rate.mean()):.3f}; max R̂ {rhat_max:.4f}; min bulk ESS "
        f"{ess_min:.0f}; min tail ESS {float(np.min(ess_tail)):.0f}; min sd ESS "
        f"{ess_sd_min:.0f}; max MCSE(mean)/sd {float(np.max(mcse_mean / sd)):.4f}; "
        f"max MCSE(sd)/sd {float(np.max(mcse_sd / sd)):.4f}"
    )
    if not (rhat_max < RHAT_MAX and min(ess_min, ess_sd_min) > ESS_MIN):
        print(f"not converged (need max R̂ < {RHAT_MAX}, min bulk and sd ESS > {ESS_MIN:.0f})")
        return 1
    settings = {
        "sampler": "HMC (vilab.samplers.hmc), identity mass on the Laplace-whitened posterior",
        "chains": args.chains,
        "warmup": args.warmup,
        "draws_per_chain": args.draws,
        "leapfrog_steps": args.leapfrog,
        "step_size_jitter": 0.5,
        "target_accept": 0.8,
        "start_spread_whitened": args.spread,
        "seed": args.seed,
    }
    source = (
        f"reference chains: {args.chains} × {args.draws} HMC draws (Laplace-whitened, "
        f"{args.leapfrog} leapfrog steps, {args.warmup} warm-up), max R̂ {rhat_max:.4f}, "
        f"min bulk ESS {ess_min:.0f}"
    )
    record = {
        "target": target.name,
        "dim": target.dim,
        "mean": mean.tolist(),
        "sd": sd.tolist(),
        "mcse_mean": mcse_mean.tolist(),
        "mcse_sd": mcse_sd.tolist(),
        "source": source,
        "settings": settings,
        "rhat_max": rhat_max,
        "ess_bulk_min": ess_min,
        "ess_tail_min": float(np.min(ess_tail)),
        "ess_sd_min": ess_sd_min,
        "accept_rate": float(res.accept_rate.mean()),
        "step_size": res.step_size.tolist(),
        "map": m.tolist(),
        "laplace_sd": laplace_sd.tolist(),
        "seconds": round(seconds, 1),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "scikit-learn": sklearn_version,
            "arviz-stats": arviz_stats_version,
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    text = json.dumps(record, indent=1, ensure_ascii=False) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(args.out)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    print(f"wrote {args.out}\nsha256 {digest}  (set LOGISTIC_REFERENCE_SHA256 in suite.py)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
