"""Seeding streams: every random stream of a run is named here, once.

A run has one ``seed``; each consumer draws from its own stream ``derive_seed(seed,
stream, *keys)``, independent of the others, so that (for example) the batch at step s,
the images a validation sees and the noise of rank r never depend on each other or on how
many processes ran. The stream numbers are part of the checkpoint format: never renumber.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np


class Stream(IntEnum):
    """The seeding streams; the value is the first key after the run's seed."""

    EPOCH_ORDER = 0  #: permutation of the training set in epoch e: (seed, 0, e)
    BINARIZE = 1  #: dynamic binarization of the batch at step s: (seed, 1, s)
    RANK = 2  #: the global RNG of rank r > 0: (seed, 2, r[, step of a resume])
    EVAL_BATCH = 3  #: image batch b of a sharded evaluation: (eval seed, 3, b)
    VALIDATION = 4  #: validation at step s: (seed, 4, s)
    TEST = 5  #: the final test and ``vilab eval``: (seed, 5)


def derive_seed(seed: int, *keys: int) -> int:
    """A well-mixed 63-bit seed from ``(seed, *keys)`` (NumPy ``SeedSequence``).

    Distinct key tuples give independent streams, unlike ``seed + key``.
    """
    if seed < 0 or any(k < 0 for k in keys):
        raise ValueError(f"seed={seed}, keys={keys}: accepted values are non-negative integers")
    state = np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])
