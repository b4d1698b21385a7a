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
