"""A small built-in image set: ten digit-like stroke shapes, drawn procedurally.

So that demos and tests run with no data directory (and no MNIST file is ever
committed), vilab draws its own 28×28 grey-level images: each of ten classes is a
polyline template in a [-1, 1]² box (an ellipse, a bar with a flag, a "2", …, two
loops), put through a random affine map (rotation ±0.3 rad, shear, anisotropic scale,
translation), a smooth sine warp, and rendered with a random stroke half-width and a
one-pixel anti-aliased edge:

    intensity(q) = 255 · clamp(w + ½ − min_s dist(q, segment_s), 0, 1)

for pixel centre q and half-width w ∈ [0.8, 1.7] px. Like MNIST, most pixels are 0,
strokes are mostly 255, and edges take grey levels in between, so both static and
dynamic binarization apply. Everything is a deterministic function of the seed.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = ["TINY_SIZES", "make_tiny", "tiny_split"]

#: Images per split of the built-in set (train, valid, test).
TINY_SIZES = {"train": 4000, "valid": 1000, "test": 1000}

_SIDE = 28
_CIRCLE_POINTS = 13


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int) -> np.ndarray:
    """Points on an elliptic arc, angles in degrees (y points down: -90° is the top)."""
    t = np.radians(np.linspace(a0, a1, n))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _line(*points: tuple[float, float]) -> np.ndarray:
    return np.array(points, dtype=np.float64)


def _join(*parts: np.ndarray) -> np.ndarray:
    """One polyline through the points of ``parts`` in order."""
    return np.concatenate(parts)


def _templates() -> list[list[np.ndarray]]:
    """Polylines of the ten classes, in a [-1, 1]² box with y pointing down."""
    n = _CIRCLE_POINTS
    arc, line = _arc, _line
    shapes = {
        0: [arc(0, 0, 0.55, 0.85, 0, 360, n)],
        1: [line((-0.3, -0.55), (0.05, -0.85), (0.05, 0.85))],
        2: [_join(arc(0, -0.4, 0.45, 0.45, -180, 20, 9), line((-0.5, 0.85), (0.55, 0.85)))],
        3: [arc(0, -0.42, 0.42, 0.42, -160, 90, 9), arc(0, 0.42, 0.46, 0.43, -90, 160, 9)],
        4: [line((0.25, 0.85), (0.25, -0.85), (-0.55, 0.3), (0.6, 0.3))],
        5: [
            _join(
                line((0.5, -0.85), (-0.4, -0.85), (-0.45, -0.1)),
                arc(0, 0.35, 0.5, 0.5, -125, 150, 9),
            )
        ],
        6: [arc(0, 0.38, 0.45, 0.45, 0, 360, n), line((-0.43, 0.3), (-0.2, -0.4), (0.35, -0.85))],
        7: [line((-0.55, -0.85), (0.55, -0.85), (-0.1, 0.85))],
        8: [arc(0, -0.45, 0.36, 0.38, 0, 360, n), arc(0, 0.42, 0.45, 0.43, 0, 360, n)],
        9: [arc(0, -0.38, 0.45, 0.45, 0, 360, n), line((0.45, -0.38), (0.3, 0.85))],
    }
    return [shapes[k] for k in range(10)]


def _segments() -> list[Tensor]:
    """The templates as segments: per class, (S_c, 2, 2) = segment, endpoint, (x, y)."""
    out = []
    for polylines in _templates():
        segs = [np.stack([p[:-1], p[1:]], axis=1) for p in polylines]
        out.append(torch.from_numpy(np.concatenate(segs)).float())
    return out


def _render(ends: Tensor, half_width: Tensor) -> Tensor:
    """Anti-aliased strokes. ends (N, S, 2, 2) in pixel units, half_width (N,) -> (N, 784)."""
    coords = torch.arange(_SIDE, dtype=torch.float32)
    qx = coords.repeat(_SIDE)  # row-major: x varies fastest
    qy = coords.repeat_interleave(_SIDE)
    ax, ay = ends[:, :, 0, 0, None], ends[:, :, 0, 1, None]  # (N, S, 1)
    abx, aby = ends[:, :, 1, 0, None] - ax, ends[:, :, 1, 1, None] - ay
    inv_len2 = 1.0 / (abx * abx + aby * aby).clamp_min(1e-6)
    dx, dy = qx - ax, qy - ay  # (N, S, 784)
    t = ((dx * abx).add_(dy * aby)).mul_(inv_len2).clamp_(0, 1)
    ex, ey = dx.sub_(t * abx), dy.sub_(t * aby)
    dist = ex.square_().add_(ey.square_()).amin(dim=1).sqrt_()  # (N, 784)
    return (half_width[:, None] + 0.5 - dist).clamp_(0, 1)


def make_tiny(n: int, seed: int = 0, *, chunk: int = 1000) -> tuple[Tensor, Tensor]:
    """Draw ``n`` digit-like images, a deterministic function of ``seed``.

    Args:
        n: number of images (≥ 1).
        seed: any non-negative integer.
        chunk: images rendered at once (bounds memory to about chunk × 100 kB).

    Returns:
        ``(images, labels)``: images (n, 784) uint8 grey levels 0–255, row-major 28×28;
        labels (n,) int64 in 0–9.
    """
    if n < 1:
        raise ValueError(f"n={n}: the number of images must be at least 1")
    if seed < 0:
        raise ValueError(f"seed={seed}: accepted seeds are non-negative integers")
    g = torch.Generator().manual_seed(seed)

    def u(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g)

    labels = torch.randint(0, 10, (n,), generator=g)
    angle, shear = u(-0.3, 0.3), u(-0.3, 0.3)
    sx, sy = u(0.7, 1.1), u(0.85, 1.1)
    tx, ty = u(-0.15, 0.15), u(-0.1, 0.1)
    amp, freq, phase = u(0.0, 0.1), u(1.5, 3.0), u(0.0, 2 * math.pi)
    half_width = u(0.8, 1.7)

    cos, sin = angle.cos(), angle.sin()
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shape = torch.zeros(n, 2, 2)
    shape[:, 0, 0], shape[:, 0, 1], shape[:, 1, 1] = sx, shear * sy, sy
    affine = rot @ shape  # (n, 2, 2)

    images = torch.empty(n, _SIDE * _SIDE)
    for c, template in enumerate(_segments()):
        (idx,) = (labels == c).nonzero(as_tuple=True)
        for i in idx.split(chunk):
            x, y = template[..., 0], template[..., 1]  # (S, 2) each
            x = x + amp[i, None, None] * torch.sin(freq[i, None, None] * y + phase[i, None, None])
            pts = torch.stack([x, y.expand_as(x)], -1)  # (n_i, S, 2, 2), warped
            pts = torch.einsum("nij,nspj->nspi", affine[i], pts)
            pts = pts + torch.stack([tx[i], ty[i]], -1)[:, None, None, :]
            pts = 13.5 + 9.5 * pts  # box [-1, 1] -> pixels [4, 23], like MNIST's 20-pixel box
            images[i] = _render(pts, half_width[i])
    return (images * 255).round_().to(torch.uint8), labels


_SPLIT_INDEX = {"train": 0, "valid": 1, "test": 2}
_CACHE: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}


def tiny_split(split: str, seed: int = 0) -> tuple[Tensor, Tensor]:
    """One split of the built-in set (sizes in :data:`TINY_SIZES`), cached per process.

    Each split is drawn from its own stream, derived from ``(seed, split)``.

    Returns:
        ``(images, labels)`` as in :func:`make_tiny`. Shared: do not modify.
    """
    if split not in _SPLIT_INDEX:
        raise ValueError(f"split {split!r}; accepted: {list(_SPLIT_INDEX)}")
    key = (split, seed)
    if key not in _CACHE:
        if seed < 0:
            raise ValueError(f"seed={seed}: accepted seeds are non-negative integers")
        stream = np.random.SeedSequence([seed, _SPLIT_INDEX[split]]).generate_state(1)[0]
        _CACHE[key] = make_tiny(TINY_SIZES[split], int(stream))
    return _CACHE[key]
