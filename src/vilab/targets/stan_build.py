"""Compiling a Stan program into a shared library vilab loads with ctypes.

Route (issue 18): Stan's model class ``stan::model::model_base`` behind the small C
interface of ``stan_shim.cpp``, compiled with the ``stanc`` compiler, the Stan, Stan-math,
Eigen, Boost and Sundials headers and the TBB library that ship inside the httpstan wheel
(extra ``vilab[stan]``; no network, no CmdStan). One translation unit holds the
stanc-generated model and the shim::

    program.stan --stanc--> model.hpp ; unit.cpp = #include model.hpp + stan_shim.cpp
    unit.cpp --g++ -O3 -std=c++17 (httpstan's macros)--> libvilab_stan.so

A build is cached under ``$VILAB_CACHE_DIR`` (else ``~/.cache/vilab/stan``) in a folder
named by the SHA-256 of the program text, the stanc and httpstan versions, the shim's
source and the compiler flags; it is written into a temporary folder and renamed, so a
reader never sees half a library and a second build of the same program compiles nothing.
Compiling takes 30–55 s and about 2 GB of memory.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from functools import lru_cache
from pathlib import Path

from vilab.core.extras import require
from vilab.core.progress import duration

SHIM = Path(__file__).with_name("stan_shim.cpp")
LIBRARY = "libvilab_stan.so"

#: httpstan's own macros (httpstan/models.py), C++17 for Stan 2.35 headers.
DEFINES = (
    "-DBOOST_DISABLE_ASSERTS",
    "-DBOOST_PHOENIX_NO_VARIADIC_EXPRESSION",
    "-DSTAN_THREADS",
    "-D_REENTRANT",
    "-D_GLIBCXX_USE_CXX11_ABI=0",
)
FLAGS = ("-std=c++17", "-O3", "-fPIC", "-shared", "-pthread")
QUIET = ("-Wno-sign-compare", "-Wno-deprecated-declarations", "-Wno-ignored-attributes")
#: What a model links against, from the wheel's ``lib/``: TBB, and SUNDIALS (static) for
#: the ODE and DAE solvers (CVODES, IDAS) and the algebraic solver (KINSOL), as httpstan
#: links its own models; ``-z defs`` makes a missing symbol a link error, not a failure
#: when the library is loaded.
LIBS = (
    "-lsundials_cvodes",
    "-lsundials_idas",
    "-lsundials_kinsol",
    "-lsundials_nvecserial",
    "-ltbb",
    "-Wl,-z,defs",
)


class StanError(ValueError):
    """A Stan program that does not compile, data it rejects, or a failing Stan call; the
    message is Stan's own (with the line of the program where stanc gives one)."""


def httpstan_dir() -> Path:
    """The installed httpstan package: ``stanc``, ``include/`` and ``lib/libtbb.so``."""
    mod = require("httpstan", "stan", "a Stan program (stan:model.stan)", "httpstan")
    return Path(mod.__file__).parent


@lru_cache(maxsize=1)
def toolchain_version() -> str:
    """``stanc3 vX (Unix); httpstan Y``: part of every cache key."""
    from importlib.metadata import version

    home = httpstan_dir()
    out = subprocess.run([str(home / "stanc"), "--version"], capture_output=True, text=True)
    return f"{out.stdout.strip()}; httpstan {version('httpstan')}"


def cache_root() -> Path:
    """``$VILAB_CACHE_DIR`` if set, else ``~/.cache/vilab/stan``."""
    env = os.environ.get("VILAB_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "vilab" / "stan"


def program_key(code: str) -> str:
    """SHA-256 (24 hex digits) of program, toolchain, shim source and flags."""
    h = hashlib.sha256()
    for part in (code, toolchain_version(), SHIM.read_text(), " ".join(DEFINES + FLAGS + LIBS)):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def stanc(code: str, out_dir: Path, name: str = "model") -> Path:
    """Translate ``code`` to C++ (``out_dir/model.hpp``); ``name`` (the file's stem) is
    what Stan's messages call the program (``'name.stan', line 3``).

    Raises:
        StanError: stanc's message (``Syntax error in 'model.stan', line 3, column 2 ...``).
    """
    name = re.sub(r"[^A-Za-z0-9_]", "_", name)
    name = name if name[:1].isalpha() else f"m_{name}"
    src = out_dir / f"{name}.stan"
    src.write_text(code)
    hpp = out_dir / "model.hpp"
    run = subprocess.run(
        [str(httpstan_dir() / "stanc"), "--name", f"{name}_model", "--o", "model.hpp", src.name],
        cwd=out_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if run.returncode != 0:
        msg = (run.stderr or run.stdout).strip()
        lines = msg.splitlines() or ["stanc failed"]
        first = next((ln.strip() for ln in lines if "line" in ln), lines[0])
        raise StanError(msg if lines[0].strip() == first else f"{first}\n{msg}")
    return hpp


def compile_command(unit: Path, out: Path) -> list[str]:
    """The g++ command line that builds ``out`` from ``unit`` against httpstan's tree."""
    home = httpstan_dir()
    cxx = os.environ.get("CXX", "g++")
    return [
        cxx,
        *FLAGS,
        *DEFINES,
        *QUIET,
        f"-I{unit.parent}",
        f"-I{home / 'include'}",
        "-o",
        str(out),
        str(unit),
        f"-L{home / 'lib'}",
        *LIBS,
        f"-Wl,-rpath,{home / 'lib'}",
    ]


def build(code: str, name: str = "model", quiet: bool = False) -> Path:
    """The shared library of the Stan program ``code``, compiled once and cached.

    Returns the path of ``libvilab_stan.so`` in the cache folder ``cache_root()/<key>``.

    Raises:
        StanError: a stanc error (syntax, types) or a C++ compiler failure.
    """
    final = cache_root() / program_key(code + "\0" + name)
    lib = final / LIBRARY
    if lib.exists():
        return lib
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=final.parent))
    try:
        stanc(code, tmp, name)
        unit = tmp / "unit.cpp"
        unit.write_text(f'#include "model.hpp"\n#include "{SHIM}"\n')
        if not quiet:
            print("vilab: compiling the Stan program (30-55 s, ~2 GB) ...", file=sys.stderr)
        t0 = time.perf_counter()
        run = subprocess.run(compile_command(unit, tmp / LIBRARY), capture_output=True, text=True)
        if run.returncode != 0:
            errors = [ln for ln in run.stderr.splitlines() if "error" in ln]
            head = errors[0] if errors else "the C++ compiler failed"
            raise StanError(f"{head}\n{run.stderr[-4000:]}")
        if not quiet:
            print(f"vilab: compiled in {duration(time.perf_counter() - t0)}", file=sys.stderr)
        try:
            tmp.rename(final)
        except OSError:  # another process finished first: its library is the same
            pass
        return lib
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
