"""vilab: variational inference with flexible posteriors, built on PyTorch.

One sentence holds the architecture: a model is a log-joint, a family is a
(conditional) sampler that returns its samples with their log-density, an estimator is
a function of log-weights, and the trainer only loops.
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``vilab.fit`` (:func:`vilab.commands.fit.fit`), imported on first use so that ``import vilab``
    stays light."""
    if name == "fit":
        from vilab.commands.fit import fit

        return fit
    raise AttributeError(f"module 'vilab' has no attribute {name!r}")
