"""vilab: variational inference with flexible posteriors, built on PyTorch.

One sentence holds the architecture: a model is a log-joint, a family is a
(conditional) sampler that returns its samples with their log-density, an estimator is
a function of log-weights, and the trainer only loops.
"""

__version__ = "0.1.0"


def fit(*args, **kwargs):  # noqa: ANN002, ANN003
    """:func:`vilab.api.fit` (imported on first use)."""
    from vilab.api import fit as _fit

    return _fit(*args, **kwargs)
