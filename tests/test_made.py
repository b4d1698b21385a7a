"""MADE (src/vilab/flows/made.py): the autoregressive property, checked by
back-propagating every output (as nflows does), for several orders, with and without a
context."""

from __future__ import annotations

import pytest
import torch

from vilab.flows import MADE

DT = torch.float64
N, C = 6, 3


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_order(name: str, dim: int) -> list[int]:
    if name == "natural":
        return list(range(dim))
    if name == "reversed":
        return list(range(dim))[::-1]
    gen = torch.Generator().manual_seed(dim)
    while True:  # a random permutation that is neither of the above
        order = torch.randperm(dim, generator=gen).tolist()
        if dim < 3 or order not in (list(range(dim)), list(range(dim))[::-1]):
            return order


def dependencies(made: MADE, x: torch.Tensor, context: torch.Tensor | None):
    """For every output (k, i): the inputs and whether the context it depends on, found by
    back-propagating that output alone (summed over the rows of x)."""
    x = x.clone().requires_grad_(True)
    inputs = (x,) if context is None else (x, context.clone().requires_grad_(True))
    y = made(*inputs)  # (N, n_out, D)
    deps = {}
    for k in range(y.shape[-2]):
        for i in range(y.shape[-1]):
            grads = torch.autograd.grad(y[:, k, i].sum(), inputs, retain_graph=True)
            on_x = grads[0].abs().sum(0) > 0  # (D,)
            on_context = len(grads) > 1 and bool(grads[1].abs().sum() > 0)
            deps[k, i] = (on_x, on_context)
    return deps


@pytest.mark.parametrize("context_dim", [None, C], ids=["no-context", "context"])
@pytest.mark.parametrize("order_name", ["natural", "reversed", "random"])
@pytest.mark.parametrize("dim, hidden", [(2, (8,)), (3, (8, 8)), (5, (16, 12)), (7, (6, 10))])
def test_autoregressive_property(dim, hidden, order_name, context_dim):
    """Output i (both the m and the s output) depends on input j iff order[j] < order[i]:
    never on itself or later inputs, and on every earlier one (hidden widths ≥ D − 1 give
    every degree 1..D − 1). An output after the first also sees the context."""
    order = make_order(order_name, dim)
    made = MADE(dim, hidden, n_out=2, context_dim=context_dim, order=order).double()
    x = torch.randn(N, dim, dtype=DT)
    context = torch.randn(N, C, dtype=DT) if context_dim else None
    rank = torch.tensor(order)

    deps = dependencies(made, x, context)
    assert len(deps) == 2 * dim
    for (k, i), (on_x, on_context) in deps.items():
        allowed = rank < rank[i]
        assert not (on_x & ~allowed).any(), f"output ({k}, {i}) sees a later input: {on_x}"
        assert (on_x == allowed).all(), f"output ({k}, {i}) misses an earlier input: {on_x}"
        if rank[i] > 0:
            assert on_x.any()  # not vacuous
            assert on_context == (context_dim is not None)


def test_dependencies_detects_a_leak():
    """The check sees a broken mask (here: the output mask let through to every unit)."""
    made = MADE(3, (8,), n_out=2).double()
    made.out.mask.fill_(1.0)
    deps = dependencies(made, torch.randn(N, 3, dtype=DT), None)
    on_x, _ = deps[0, 0]
    assert on_x.any()  # the first output now sees inputs it must not


def test_first_output_is_constant():
    """With D = 1 (and for the first input in any order) the output is a learned constant."""
    made = MADE(1, (4,), n_out=2).double()
    y = made(torch.randn(N, 1, dtype=DT))
    assert y.shape == (N, 2, 1)
    torch.testing.assert_close(y, y[:1].expand_as(y))


@pytest.mark.parametrize("context_dim", [None, C])
def test_shapes_and_batch_dims(context_dim):
    """``(..., D) -> (..., n_out, D)``; an amortized context ``(B, C)`` broadcasts over samples
    ``(S, B, D)``, and rows of x never mix."""
    dim, s, b = 4, 5, 3
    made = MADE(dim, (8, 8), n_out=3, context_dim=context_dim).double()
    x = torch.randn(s, b, dim, dtype=DT)
    context = torch.randn(b, C, dtype=DT) if context_dim else None
    y = made(x, context)
    assert y.shape == (s, b, 3, dim)
    for j in range(b):
        y_j = made(x[:, j], None if context is None else context[j].expand(s, C))
        torch.testing.assert_close(y[:, j], y_j)


def test_masks_are_buffers():
    made = MADE(3, (8,))
    buffers = dict(made.named_buffers())
    assert {"hidden_layers.0.mask", "out.mask"} <= set(buffers)
    assert all("mask" not in name for name, _ in made.named_parameters())


@pytest.mark.parametrize(
    "order, match",
    [
        ([0, 0, 1], r"order must be a permutation of range\(3\), got \[0, 0, 1\]"),
        ([0, 1], r"order must be a permutation of range\(3\), got \[0, 1\]"),
        ([1, 2, 3], r"order must be a permutation of range\(3\), got \[1, 2, 3\]"),
        ([0, 1, 2, 3], r"order must be a permutation of range\(3\), got \[0, 1, 2, 3\]"),
    ],
)
def test_bad_order_raises(order, match):
    with pytest.raises(ValueError, match=match):
        MADE(3, (8,), order=order)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=0, hidden=(8,)), "dim must be a positive integer, got 0"),
        (dict(dim=3, hidden=()), "hidden must be a non-empty list of positive widths"),
        (dict(dim=3, hidden=(8, 0)), "hidden must be a non-empty list of positive widths"),
    ],
)
def test_bad_sizes_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MADE(**kwargs)


def test_context_mismatch_raises():
    x = torch.randn(N, 3)
    with pytest.raises(ValueError, match="built with a context and needs one"):
        MADE(3, (8,), context_dim=C)(x)
    with pytest.raises(ValueError, match="takes no context"):
        MADE(3, (8,))(x, torch.randn(N, C))


@pytest.mark.parametrize("dim", [2, 5])
def test_a_relu_made_is_autoregressive_and_differs_from_elu(dim):
    """ReLU (the spline flows' choice, zuko's) keeps the masks' property; it is another
    network than ELU's on the same weights."""
    torch.manual_seed(0)
    relu = MADE(dim, (16, 12), n_out=2, activation="relu")
    elu = MADE(dim, (16, 12), n_out=2)
    elu.load_state_dict(relu.state_dict())
    x = torch.randn(64, dim)
    assert not torch.allclose(relu(x), elu(x))
    for (_, i), (on_x, _) in dependencies(relu, x, None).items():
        assert not on_x[i:].any(), f"output {i} sees itself or a later input: {on_x}"
        assert on_x[:i].all(), f"output {i} misses an earlier input: {on_x}"


def test_an_unknown_activation_is_refused_naming_the_accepted():
    with pytest.raises(ValueError, match=r"activation 'tanh': accepted elu, relu"):
        MADE(3, (8,), activation="tanh")


def test_the_spline_autoregressive_made_uses_relu_and_iaf_elu():
    from vilab.flows.iaf import IAF
    from vilab.flows.spline import SplineAutoregressive

    assert SplineAutoregressive(3).made.activation is torch.nn.functional.relu
    assert IAF(3).made.activation is torch.nn.functional.elu
