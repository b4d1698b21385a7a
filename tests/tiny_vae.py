"""Settings shared by test modules."""

from __future__ import annotations

# A VAE small enough to train in milliseconds a step, on the built-in tiny data set.
TINY_VAE = [
    "data.name=tiny",
    "data.batch_size=32",
    "latent_dim=4",
    "encoder.hidden=[32]",
    "decoder.hidden=[32]",
]

# A short VAE run of it: quick validation, no final evaluation.
SMALL_RUN = [
    *TINY_VAE,
    "eval.valid_images=40",
    "eval.valid_samples=4",
    "eval.chunk=4",
    "final_eval=false",
    "eval_every=100000",
]
