"""One compiled Stan program with its data, called through ctypes (NumPy in, NumPy out).

:class:`StanModel` wraps the C interface of ``stan_shim.cpp`` (inspired by BridgeStan's
API: ``log_density_gradient``, ``param_constrain``, ``param_unconstrain``): for a batch
``z (N, D)`` of points of the unconstrained space R^D it returns

    lp_i = log p(T(z_i) | data) + log |det J_T(z_i)|   (dropping constants, Stan's propto)
    g_i  = ∇_z lp_i

from ``stan::model::log_prob_grad<true, true>`` (Stan Reference Manual, "Constraint
transforms"; Carpenter et al. 2017, "The Stan Math Library: reverse-mode automatic
differentiation in C++"), the batch split over up to ``threads`` C++ threads (at least
64 points each: starting a thread costs about 20 µs). A point where
Stan raises a domain error (an extreme z, ``reject``) gets lp = −inf and g = 0.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path
from typing import Any

import numpy as np

from vilab.targets.stan_build import StanError

_P = ctypes.c_void_p
_D = ctypes.POINTER(ctypes.c_double)
_ERR = ctypes.POINTER(ctypes.c_char_p)


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the C signatures of the shim's entry points."""
    sig: dict[str, tuple[Any, list[Any]]] = {
        "vs_new": (_P, [ctypes.c_char_p, ctypes.c_uint, _ERR]),
        "vs_delete": (None, [_P]),
        "vs_free_str": (None, [ctypes.c_void_p]),
        "vs_num_unconstrained": (ctypes.c_int, [_P]),
        "vs_num_constrained": (ctypes.c_int, [_P]),
        "vs_num_params": (ctypes.c_int, [_P]),
        "vs_param_names": (ctypes.c_void_p, [_P]),
        "vs_log_density_gradient": (
            ctypes.c_int,
            [_P, ctypes.c_int, _D, _D, _D, ctypes.c_int, _ERR],
        ),
        "vs_param_constrain": (ctypes.c_int, [_P, ctypes.c_int, _D, _D, _ERR]),
        "vs_param_unconstrain": (ctypes.c_int, [_P, ctypes.c_int, _D, _D, _ERR]),
    }
    for fn, (res, args) in sig.items():
        getattr(lib, fn).restype = res
        getattr(lib, fn).argtypes = args
    return lib


def _ptr(a: np.ndarray) -> Any:
    return a.ctypes.data_as(_D)


def data_json(data: object) -> str:
    """Stan data as a JSON string: None (no data), a dict (NumPy arrays allowed), a path
    to a ``.json`` file, or a JSON text."""
    if data is None:
        return ""
    if isinstance(data, dict):
        return json.dumps(data, default=lambda a: np.asarray(a).tolist())
    if isinstance(data, Path) or (isinstance(data, str) and not data.lstrip().startswith("{")):
        path = Path(data)
        if not path.exists():
            raise ValueError(f"Stan data file {str(path)!r} does not exist")
        return path.read_text()
    if isinstance(data, str):
        return data
    raise ValueError(f"Stan data must be a dict, a JSON file or a JSON text, got {data!r}")


def stan_name(name: str) -> str:
    """Stan's ``theta.1.2`` as ``theta[1,2]``."""
    head, *idx = name.split(".")
    return f"{head}[{','.join(idx)}]" if idx else head


class StanModel:
    """A compiled program (``lib``, a path to its shared library) bound to ``data``.

    Raises:
        StanError: Stan's message when the data do not fit the program's ``data`` block.
    """

    def __init__(self, lib: Path, data: object = None, seed: int = 0, threads: int = 2) -> None:
        self.lib = _bind(ctypes.CDLL(str(lib)))
        self.threads = threads
        err = ctypes.c_char_p()
        handle = self.lib.vs_new(data_json(data).encode(), seed, ctypes.byref(err))
        if not handle:
            raise StanError(self._message(err))
        self.handle = handle
        self.dim = self.lib.vs_num_unconstrained(handle)
        self.n_params = self.lib.vs_num_params(handle)
        raw = self.lib.vs_param_names(handle)
        text = ctypes.string_at(raw).decode()
        self.lib.vs_free_str(raw)
        self.names = tuple(stan_name(n) for n in text.splitlines() if n)

    def _message(self, err: ctypes.c_char_p) -> str:
        msg = (err.value or b"Stan failed").decode(errors="replace")
        self.lib.vs_free_str(ctypes.cast(err, ctypes.c_void_p))
        return msg.strip()

    def _rows(self, z: np.ndarray, width: int) -> np.ndarray:
        z = np.ascontiguousarray(z, dtype=np.float64)
        if z.ndim != 2 or z.shape[1] != width:
            raise ValueError(f"expected points of shape (N, {width}), got {z.shape}")
        return z

    def log_density_gradient(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``z (N, D)`` -> ``(lp (N,), grad (N, D))`` in float64."""
        z = self._rows(z, self.dim)
        lp, grad = np.empty(len(z)), np.empty_like(z)
        err = ctypes.c_char_p()
        fn = self.lib.vs_log_density_gradient
        if fn(self.handle, len(z), _ptr(z), _ptr(lp), _ptr(grad), self.threads, ctypes.byref(err)):
            raise StanError(self._message(err))
        return lp, grad

    def constrain(self, z: np.ndarray) -> np.ndarray:
        """``z (N, D)`` -> parameters and transformed parameters ``(N, P)`` (write_array)."""
        z = self._rows(z, self.dim)
        out = np.empty((len(z), len(self.names)))
        err = ctypes.c_char_p()
        if self.lib.vs_param_constrain(self.handle, len(z), _ptr(z), _ptr(out), ctypes.byref(err)):
            raise StanError(self._message(err))
        return out

    def unconstrain(self, x: np.ndarray) -> np.ndarray:
        """Constrained parameters ``(N, n_params)`` (the first ``n_params`` columns of
        :meth:`constrain`) -> ``z (N, D)`` (unconstrain_array)."""
        x = self._rows(x, self.n_params)
        out = np.empty((len(x), self.dim))
        err = ctypes.c_char_p()
        fn = self.lib.vs_param_unconstrain
        if fn(self.handle, len(x), _ptr(x), _ptr(out), ctypes.byref(err)):
            raise StanError(self._message(err))
        return out

    def __del__(self) -> None:
        handle = getattr(self, "handle", None)
        if handle:
            self.lib.vs_delete(handle)
            self.handle = None
