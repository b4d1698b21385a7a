"""Honest evaluation, as functions: a VAE's importance-sampled log p(x) with its standard
error and per-image k̂ (:mod:`.loglik`), AIS as a second opinion (:mod:`.ais`), both
batched and sharded with results identical to one process (:mod:`.batches`); and a fit's
exact KL and report card (:mod:`.fit`)."""

from vilab.evaluation.ais import evaluate_ais
from vilab.evaluation.batches import eval_sizes, per_batch
from vilab.evaluation.loglik import (
    FINAL_EVAL_HINT,
    KHAT_MIN_SAMPLES,
    evaluate,
    khat_summary,
)

__all__ = [
    "FINAL_EVAL_HINT",
    "KHAT_MIN_SAMPLES",
    "eval_sizes",
    "evaluate",
    "evaluate_ais",
    "khat_summary",
    "per_batch",
]
