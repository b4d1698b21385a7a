"""A multilayer perceptron: ``widths[0] -> ... -> widths[-1]``, activation between layers.

``activation="gated"`` makes every hidden layer a gated linear unit (Dauphin et al. 2017),
h = (W x + b) ⊙ σ(V x + c), the "GatedDense" layer of the VampPrior paper's MLPs (Tomczak &
Welling 2018): one ``Linear(a, 2b)`` whose halves ``nn.GLU`` multiplies."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
}


GATED = "gated"


class MLP(nn.Sequential):
    """Linear layers of the given widths with an activation after every hidden layer.

    Takes images of any ``(C, H, W)`` flattened to ``widths[0] = C·H·W`` (no constraint
    on the shape); ``(..., widths[0]) -> (..., widths[-1])``.

    Args:
        widths: ``[in, hidden..., out]`` (at least two entries).
        activation: one of ``ACTIVATIONS``, or ``"gated"`` (gated linear units).
        final_activation: also apply the activation after the last layer (for a feature
            extractor whose output feeds a parameter head).
    """

    def __init__(
        self, widths: Sequence[int], activation: str = "relu", final_activation: bool = False
    ) -> None:
        if len(widths) < 2 or any(int(w) < 1 for w in widths):
            raise ValueError(f"widths must be ≥ 2 positive sizes, got {list(widths)}")
        if activation not in ACTIVATIONS and activation != GATED:
            raise ValueError(
                f"activation must be one of {', '.join([*ACTIVATIONS, GATED])}, got {activation!r}"
            )
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            hidden = i < len(widths) - 2 or final_activation
            if hidden and activation == GATED:
                layers += [nn.Linear(a, 2 * b), nn.GLU(dim=-1)]
            else:
                layers.append(nn.Linear(a, b))
                if hidden:
                    layers.append(ACTIVATIONS[activation]())
        super().__init__(*layers)
        self.in_features, self.out_features = int(widths[0]), int(widths[-1])

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - nn.Sequential's
        return super().forward(x)
