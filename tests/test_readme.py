"""README.md is true as written: every code block in it runs here.

Conventions of README.md that these tests rely on (and check):

* Shell commands assume the virtual environment is active: README.md says
  ``. .venv/bin/activate`` once, in "Install", before the first ``vilab`` command.
* A ```python block whose first line is ``# name.py`` *is* the file ``name.py``; it is
  written into the working directory. Every other ```python block is executed, in README
  order and in one namespace, so a block may use what an earlier one defined.
* In a ```bash block every line is a command (``#`` starts a comment):

  - ``vilab …`` (after optional ``VAR=value`` assignments) is parsed with
    :func:`vilab.cli.build_parser` and its config loaded (an unknown flag or key, or a
    missing config or target file, fails), then run through :func:`vilab.cli.main` with
    cost-cutting ``--set`` options appended (they come last, so they win). A command that
    needs MNIST runs only if ``$VILAB_DATA_DIR`` holds it; one with ``--nproc`` runs
    only with the slow tests.
  - ``torchrun … -m vilab …``: the ``vilab`` part is parsed and its config loaded.
  - ``make X``: ``X`` is a target of the Makefile.
  - ``python3 -m venv`` / ``pip install``: the torch pin equals the Makefile's.

  Any other program fails the test, so that no README command goes unchecked.

Everything runs in one temporary working directory (``configs/`` linked into it), so the
run directories the README names (``runs/vae_mean_field``, …) are created by the README's
own earlier commands.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import vilab
from vilab import cli
from vilab.config import FitConfig, TrainConfig, load_fit_config, load_train_config

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
ACTIVATE = ". .venv/bin/activate"

# Appended to every command that runs here: small and fast, the same code paths.
FAST_FIT = [
    "--set", "steps=3", "--set", "samples=64", "--set", "eval_samples=2000",
    "--set", "figures=false", "--set", "family.log_q_samples=10", "--set", "threads=1",
    "--set", "report_samples=500",
    "--no-progress",
]  # fmt: skip
FAST_TRAIN = [
    "--set", "steps=3", "--set", "eval.samples=2", "--set", "eval.chunk=2",
    "--set", "eval.batch=1000", "--set", "eval.valid_images=20", "--set", "eval.valid_samples=2",
    "--set", "threads=1", "--no-progress",
]  # fmt: skip
FAST_EVAL = ["--samples", "2", "--images", "20", "--num-dists", "3", "--chains", "2",
             "--leapfrog", "1"]  # fmt: skip
# What the Python API's examples get as keyword settings (they win over the example's own).
FAST_API = {"steps": 3, "samples": 64, "eval_samples": 2000, "figures": False, "threads": 1}

MNIST_FILES = {
    "binarized_mnist": "binarized_mnist",
    "mnist_dynamic": "mnist",
    "mnist_gray": "mnist",
    "freyfaces": "freyfaces",
}


@dataclass(frozen=True)
class Block:
    lang: str
    text: str
    line: int  # line of the opening fence in README.md

    @property
    def file_name(self) -> str | None:
        """``name.py`` when the block's first line is ``# name.py`` (a ```stan block:
        ``// name.stan``), else None."""
        pattern = r"//\s*(\S+\.stan)\s*" if self.lang == "stan" else r"#\s*(\S+\.py)\s*"
        m = re.fullmatch(pattern, self.text.splitlines()[0]) if self.text else None
        return m.group(1) if m else None


@dataclass(frozen=True)
class Command:
    text: str
    line: int
    env: dict[str, str]
    argv: list[str]  # without the env assignments

    def __str__(self) -> str:
        return f"README.md:{self.line}: {self.text}"


def blocks(text: str) -> list[Block]:
    """The fenced code blocks of a Markdown text, in order."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, i = i, i + 1
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        if i == len(lines):
            raise ValueError(f"README.md:{start + 1}: unclosed code block")
        out.append(Block(m.group(1), "\n".join(lines[start + 1 : i]), start + 1))
        i += 1
    return out


def _prose(text: str) -> str:
    """``text`` without its code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def commands(text: str) -> list[Command]:
    """The shell commands of the ```bash blocks (comments dropped, ``\\`` lines joined)."""
    out = []
    for b in blocks(text):
        if b.lang != "bash":
            continue
        pending, first = "", 0
        for k, raw in enumerate(b.text.splitlines()):
            first = first if pending else k
            if raw.endswith("\\"):
                pending += raw[:-1]
                continue
            line, pending = pending + raw, ""
            tokens = shlex.split(line, comments=True)
            if not tokens:
                continue
            env = {}
            while tokens and re.fullmatch(r"[A-Za-z_]\w*=\S*", tokens[0]):
                key, _, value = tokens.pop(0).partition("=")
                env[key] = value
            out.append(Command(line.split(" #")[0].strip(), b.line + 1 + first, env, tokens))
    return out


def vilab_argv(cmd: Command) -> list[str] | None:
    """The arguments of the ``vilab`` call in ``cmd`` (``vilab …`` or ``torchrun … -m
    vilab …``), else None."""
    if cmd.argv[0] == "vilab":
        return cmd.argv[1:]
    if cmd.argv[0] == "torchrun":
        if "-m" not in cmd.argv or cmd.argv[cmd.argv.index("-m") + 1] != "vilab":
            raise ValueError(f"{cmd}: torchrun must start '-m vilab'")
        return cmd.argv[cmd.argv.index("-m") + 2 :]
    return None


def load_command_config(
    argv: list[str], compile_stan: bool = True
) -> FitConfig | TrainConfig | None:
    """Parses a ``vilab`` command line and loads its config (and a fit's target) exactly as
    the command would; raises on an unknown flag, key, value, config or target file. With
    ``compile_stan=False`` a Stan program is only checked to exist (compiling is slow)."""
    try:
        args = cli.build_parser().parse_args(argv)
    except SystemExit as err:  # argparse has printed why
        raise ValueError(f"vilab {' '.join(argv)}: not a valid command line") from err
    if args.command == "fit":
        from vilab.build import target_from_config

        config = load_fit_config(args.config, cli._fit_overrides(args))
        if config.target.name.startswith("stan:") and not compile_stan:
            program = Path(config.target.name.partition(":")[2])
            assert program.is_file(), f"vilab {' '.join(argv)}: no Stan program {program}"
        else:
            target_from_config(config.target)
        return config
    if args.command == "train":
        return cli._train_config(args)
    return None


def needs_mnist(config: FitConfig | TrainConfig | None) -> str | None:
    """The MNIST folder a train config reads, if any."""
    return MNIST_FILES.get(config.data.name) if isinstance(config, TrainConfig) else None


def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, flags=re.M))


def check_static(cmd: Command, readme: str) -> None:
    """Everything about a command that can be checked without running it."""
    argv = vilab_argv(cmd)
    if argv is not None:
        load_command_config(argv, compile_stan=False)
        if argv[0] == "eval":
            made = {default_train_dir(c) for c in commands(readme) if c.line < cmd.line}
            assert argv[1] in made, (
                f"{cmd}: evaluates {argv[1]!r}, which no earlier README command creates "
                f"(they create {sorted(d for d in made if d)})"
            )
        return
    program, *rest = cmd.argv
    if program == "make":
        missing = set(rest) - make_targets()
        assert not missing, f"{cmd}: no Makefile target {sorted(missing)}"
    elif program in ("python3", "python") and rest[:2] == ["-m", "venv"]:
        pins = set(re.findall(r"torch==[\w.]+", cmd.text))
        makefile_pin = re.search(r"^TORCH := (\S+)", (REPO / "Makefile").read_text(), re.M)
        assert makefile_pin and pins == {makefile_pin.group(1)}, (
            f"{cmd}: installs {pins}, the Makefile {makefile_pin and makefile_pin.group(1)}"
        )
    elif program in (".", "source"):
        venv = re.search(r"^VENV := (\S+)", (REPO / "Makefile").read_text(), re.M)
        assert venv and rest == [f"{venv.group(1)}/bin/activate"], f"{cmd}: not `make setup`'s venv"
    else:
        raise AssertionError(f"{cmd}: no check for program {program!r}; add one to this file")


def default_train_dir(cmd: Command) -> str | None:
    """The run directory ``vilab train`` (no ``--out``) writes for ``cmd``."""
    argv = vilab_argv(cmd)
    if not argv or argv[0] != "train" or "--out" in argv:
        return None
    config = load_command_config(argv)
    assert isinstance(config, TrainConfig)
    return f"runs/vae_{config.posterior.kind}"


def data_missing(config: FitConfig | TrainConfig | None) -> str | None:
    """Why a command cannot run here (its MNIST files or its GPU are absent), or None."""
    device = getattr(config, "device", "auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        return f"needs a GPU (device={device})"
    folder = needs_mnist(config)
    root = os.environ.get("VILAB_DATA_DIR")
    if folder and not (root and (Path(root) / folder).is_dir()):
        return f"needs {folder} in $VILAB_DATA_DIR ({root})"
    return None


def apply_env(cmd: Command, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command's ``VAR=value`` prefixes, for this test (``PYTHONPATH`` on sys.path)."""
    for key, value in cmd.env.items():
        monkeypatch.setenv(key, value)
        if key == "PYTHONPATH":
            for p in reversed(value.split(os.pathsep)):
                monkeypatch.syspath_prepend(str(Path(p).resolve()))


def run_command(
    cmd: Command, monkeypatch: pytest.MonkeyPatch, more: list[str] | None = None
) -> Path | None:
    """Runs a ``vilab`` command with the cost-cutting options (and then ``more``); returns
    the new run directory (fit and train) under ``runs/``."""
    argv = vilab_argv(cmd)
    assert argv is not None and cmd.argv[0] == "vilab"
    apply_env(cmd, monkeypatch)
    extra = {"fit": FAST_FIT, "train": FAST_TRAIN, "eval": FAST_EVAL, "compare": [], "draws": []}
    extra = extra[argv[0]]
    before = set(Path("runs").glob("*")) if Path("runs").is_dir() else set()
    assert cli.main([*argv, *extra, *(more or [])]) == 0, f"{cmd}: exit status not 0"
    created = sorted(set(Path("runs").glob("*")) - before) if Path("runs").is_dir() else []
    return created[0] if len(created) == 1 else None


# ------------------------------------------------------------------ fixtures and cases

README_TEXT = README.read_text()
COMMANDS = commands(README_TEXT)


def stan_target(argv: list[str]) -> bool:
    """Whether a command fits a Stan program (compiling one takes 30–55 s: slow tests)."""
    return "--target" in argv and argv[argv.index("--target") + 1].startswith("stan:")


def _case(cmd: Command) -> Any:
    slow = "--nproc" in cmd.argv or stan_target(cmd.argv)
    return pytest.param(cmd, id=f"L{cmd.line}", marks=[pytest.mark.slow] if slow else [])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The README's working directory: its files written, ``configs/`` linked in."""
    root = tmp_path_factory.mktemp("readme")
    (root / "configs").symlink_to(REPO / "configs")
    for b in blocks(README_TEXT):
        if b.lang in ("python", "stan") and b.file_name:
            (root / b.file_name).write_text(b.text + "\n")
    return root


@pytest.fixture
def in_workdir(workdir: Path, monkeypatch: pytest.MonkeyPatch, keep_threads) -> Iterator[Path]:
    monkeypatch.chdir(workdir)
    names = set(sys.modules)
    yield workdir
    for name in set(sys.modules) - names:  # the README's own modules (mytarget, …)
        if (getattr(sys.modules[name], "__file__", None) or "").startswith(str(workdir)):
            del sys.modules[name]


# ------------------------------------------------------------------ the README itself


def test_readme_starts_with_make_demo_and_make_test() -> None:
    first = blocks(README_TEXT)[0]
    assert first.lang == "bash"
    assert [c.argv for c in commands(f"```bash\n{first.text}\n```")] == [
        ["make", "demo"],
        ["make", "test"],
    ]


def test_every_block_is_checked() -> None:
    langs = {b.lang for b in blocks(README_TEXT)}
    # ```text blocks show output (a report card), not code to run
    # ```stan blocks are files (``// name.stan``) that a stan: command fits
    known = {"bash", "python", "text", "stan"}
    assert langs <= known, f"no check for code blocks in {langs - known}"


def test_activation_is_said_before_the_first_vilab_command() -> None:
    first = min(c.line for c in COMMANDS if vilab_argv(c) is not None)
    said = README_TEXT.find(ACTIVATE)
    assert said >= 0, f"README.md never says {ACTIVATE!r}; its commands assume it"
    assert README_TEXT[:said].count("\n") + 1 < first


@pytest.mark.parametrize("cmd", [pytest.param(c, id=f"L{c.line}") for c in COMMANDS])
def test_command_parses_and_its_config_loads(
    cmd: Command, in_workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    apply_env(cmd, monkeypatch)
    check_static(cmd, README_TEXT)


@pytest.mark.parametrize("cmd", [_case(c) for c in COMMANDS if c.argv[0] == "vilab"])
def test_command_runs(cmd: Command, in_workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    argv = vilab_argv(cmd)
    assert argv is not None
    apply_env(cmd, monkeypatch)
    if argv[0] == "demo":  # the demo is `make demo`; here: its arguments parse
        return
    config = load_command_config(argv)
    if reason := data_missing(config):
        pytest.skip(reason)
    if argv[0] == "eval" and not Path(argv[1]).is_dir():
        pytest.skip(f"{argv[1]} was not created (its train command was skipped or deselected)")
    run = run_command(cmd, monkeypatch)
    if argv[0] == "fit":
        assert isinstance(config, FitConfig)
        stem = Path(config.target.name.rpartition(":")[2]).name.removesuffix(".stan")
        name = f"{stem}_{config.family.kind}"
        if "--out" in argv:  # the run directory it names
            name = Path(argv[argv.index("--out") + 1]).name
        assert run is not None and run.name.startswith(name), f"{cmd}: wrote {run}, not {name}"


def run_python_blocks(text: str) -> int:
    """Executes the ```python blocks of ``text`` that are not files, in order and in one
    namespace; returns how many ran."""
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    ran = 0
    for b in blocks(text):
        if b.lang == "python" and not b.file_name:
            torch.manual_seed(0)
            exec(compile(b.text, f"README.md:{b.line + 1}", "exec"), namespace)  # noqa: S102
            ran += 1
    return ran


def test_python_blocks_run(in_workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = vilab.fit  # the Python API (vilab.commands.fit.fit), documented in "Library"
    monkeypatch.setattr(vilab, "fit", lambda *a, **kw: real(*a, **{**kw, **FAST_API}))
    monkeypatch.syspath_prepend(str(in_workdir))
    assert run_python_blocks(README_TEXT) >= 1


def _listed_files(text: str, heading: str) -> list[str]:
    """The backticked file names of the paragraph that starts with ``heading`` and of the
    table right after it, if any."""
    start = text.index(heading)
    end = text.find("\n\n", start)
    if text.startswith("\n\n|", end):
        end = text.find("\n\n", end + 2)
    files = r"`([\w./<>-]+\.(?:yaml|json|jsonl|pt|png|gif)|tensorboard/)`"
    return re.findall(files, text[start:end])


def test_fit_run_directory_holds_what_the_readme_says(
    in_workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = in_workdir / "fit_table"
    (cmd,) = commands("```bash\nvilab fit --target banana --family planar --layers 2\n```")
    cmd = Command(cmd.text, cmd.line, cmd.env, [*cmd.argv, "--out", str(out)])
    run_command(cmd, monkeypatch, more=["--set", "figures=true"])
    files = _listed_files(README_TEXT, "A run directory (")
    assert len(files) >= 8, files
    assert not [f for f in files if not (out / f).exists()], sorted(p.name for p in out.iterdir())
    metrics = json.loads((out / "metrics.json").read_text())
    row = re.search(r"^\| `metrics.json` \| (.*)$", README_TEXT, re.M)
    assert row, "the run-directory table has no metrics.json row"
    named = re.findall(r"`(\w+)`", row.group(1))
    assert named and not set(named) - set(metrics), f"{named} vs {sorted(metrics)}"
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    row = re.search(r"^\| `metrics.jsonl` \| (.*)$", README_TEXT, re.M)
    assert row, "the run-directory table has no metrics.jsonl row"
    named = re.findall(r"`(\w+)`", row.group(1))
    assert named and not set(named) - set(logged), f"{named} vs {sorted(logged)}"


def test_vae_run_directory_holds_what_the_readme_says(
    in_workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny = next(
        c
        for c in COMMANDS
        if c.argv[:2] == ["vilab", "train"]
        and (cfg := load_command_config(c.argv[1:])) is not None
        and isinstance(cfg, TrainConfig)
        and cfg.data.name == "tiny"
        and cfg.latent_dim == 2
    )
    out = in_workdir / "vae_table"
    run_command(
        Command(tiny.text, tiny.line, tiny.env, [*tiny.argv, "--out", str(out)]), monkeypatch
    )
    files = _listed_files(README_TEXT, "A VAE run directory holds")
    assert len(files) >= 10, files
    assert not [f for f in files if not (out / f).exists()], sorted(p.name for p in out.iterdir())


def prose_names(text: str) -> list[str]:
    """The backticked dotted names outside code blocks: ``data.name``, ``optim.ema=0.999``,
    ``vilab.samplers.hmc``, … (file names excluded)."""
    names = re.findall(r"`([a-z_][\w]*(?:\.[\w]+)+(?:=[^`]*)?)`", _prose(text))
    return [n for n in names if not re.search(r"\.(py|md|png|gif|pt|ya?ml|jsonl?|amat|gz|xz)$", n)]


def check_prose_name(name: str) -> None:
    """``vilab.a.b`` must import or be an attribute; ``section.key[=value]`` must be a key
    of the fit or the train config (and the value valid there)."""
    path, _, value = name.partition("=")
    parts = path.split(".")
    if parts[0] == "vilab":
        import importlib

        obj: Any = vilab
        for k in range(1, len(parts)):
            try:
                obj = importlib.import_module(".".join(parts[: k + 1]))
            except ImportError:
                assert hasattr(obj, parts[k]), f"README names {name!r}: no {parts[k]!r} in {obj}"
                obj = getattr(obj, parts[k])
        return
    sections = set(FitConfig.model_fields) | set(TrainConfig.model_fields)
    if parts[0] not in sections:
        return  # not a config key (e.g. a file or a Python attribute like `.run_dir`)
    errors = []
    for load in (load_fit_config, load_train_config):
        try:
            config = load(overrides=[f"{path}={value}"] if value else None)
        except ValueError as err:
            errors.append(str(err))
            continue
        node: Any = config
        for part in parts:
            if not hasattr(node, part) or part not in type(node).model_fields:
                errors.append(f"no key {part!r} in {type(node).__name__}")
                break
            node = getattr(node, part)
        else:
            return
    raise AssertionError(f"README names {name!r}, which no config accepts: {errors}")


@pytest.mark.parametrize("name", sorted(set(prose_names(README_TEXT))))
def test_names_in_the_prose_exist(name: str) -> None:
    check_prose_name(name)


def check_prose_refs(text: str) -> list[str]:
    """What the prose names but the repository lacks: ``make X`` targets, files and
    folders (relative to the repository or to src/vilab), ``--flags`` (of a ``vilab``
    command or a benchmark)."""
    prose, wrong = _prose(text), []
    wrong += [f"make {t}" for t in re.findall(r"`make ([\w-]+)", prose) if t not in make_targets()]
    for path in set(re.findall(r"`([^`\s]*/[^`\s]*)`", prose)):
        if re.search(
            r"[<~]|^\.\.|^runs/|^/$|^tensorboard/$|^(binarized_)?mnist/|^freyfaces/", path
        ):
            continue  # a pattern, a user's or a run's path, not one of the repository's
        if not ((REPO / path).exists() or (REPO / "src/vilab" / path).exists()):
            wrong.append(path)
    parser = cli.build_parser()
    subparsers = parser._subparsers._group_actions[0].choices.values()  # type: ignore[union-attr]
    flags = {o for sp in subparsers for a in sp._actions for o in a.option_strings}
    benchmarks = "".join(p.read_text() for p in (REPO / "benchmarks").glob("*.py"))
    for flag in set(re.findall(r"`(--[\w-]+)", prose)):
        if flag not in flags and f'"{flag}"' not in benchmarks:
            wrong.append(flag)
    return sorted(wrong)


def test_files_targets_and_flags_in_the_prose_exist() -> None:
    assert check_prose_refs(README_TEXT) == []


# ------------------------------------------------------------------ the checks can fail

BROKEN = [
    ("vilab fit --config configs/fit_u3.yaml --set optim.lrr=0.002", "optim.lrr"),
    ("vilab fit --target U1 --famly planar", "not a valid command line"),
    ("vilab fit --config configs/no_such.yaml", "does not exist"),
    ("vilab fit --target mytarget.py:no_such_fn --box -4 4 -4 4", "no_such_fn"),
    ("vilab train --config configs/vae_tiny.yaml --set objective.kl_warmup=10", "kl_warmup"),
    ("make no-such-target", "no Makefile target"),
    ("vilab eval runs/vae_no_such --samples 5", "no earlier README command"),
    ("pip install vilab", "no check for program"),
]
BROKEN_NAMES = ["objective.kl_warm", "optim.ema=2", "vilab.families.registry", "vilab.fitt"]


@pytest.mark.parametrize(("line", "message"), BROKEN)
def test_a_broken_command_fails(line: str, message: str, in_workdir: Path) -> None:
    (cmd,) = commands(f"```bash\n{line}\n```")
    with pytest.raises((ValueError, AssertionError), match=re.escape(message)):
        check_static(cmd, f"```bash\n{line}\n```")


@pytest.mark.parametrize("name", BROKEN_NAMES)
def test_a_wrong_name_in_the_prose_fails(name: str) -> None:
    assert name in prose_names(f"x `{name}` y\n```bash\n`not.this`\n```\n")
    with pytest.raises(AssertionError, match=re.escape(name)):
        check_prose_name(name)


def test_a_wrong_reference_in_the_prose_fails() -> None:
    text = "Run `make tset`, see `configs/fit_u4.yaml` and `flows/parms.py`, pass `--stepz`."
    assert check_prose_refs(text) == [
        "--stepz",
        "configs/fit_u4.yaml",
        "flows/parms.py",
        "make tset",
    ]


def test_a_failing_run_fails(in_workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (cmd,) = commands("```bash\nvilab fit --target U1 --out runs/never_made --resume\n```")
    check_static(cmd, "")  # parses and loads: only running it can show the mistake
    with pytest.raises(AssertionError, match="exit status"):
        run_command(cmd, monkeypatch)


def test_a_broken_python_block_fails(in_workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(in_workdir))
    text = "```python\nfrom mytarget import logp\nlogp_c(1, 2)\n```\n"
    with pytest.raises(NameError, match="logp_c"):
        run_python_blocks(text)


def test_blocks_and_file_convention() -> None:
    text = "x\n```python\n# a.py\nA = 1\n```\n```bash\nvilab fit  # c\nFOO=1 vilab \\\n demo\nmake\n```\n"
    b = blocks(text)
    assert [(x.lang, x.file_name, x.line) for x in b] == [("python", "a.py", 2), ("bash", None, 6)]
    cmds = commands(text)
    assert [(c.argv, c.env, c.line) for c in cmds] == [
        (["vilab", "fit"], {}, 7),
        (["vilab", "demo"], {"FOO": "1"}, 8),
        (["make"], {}, 10),
    ]
    with pytest.raises(ValueError, match="unclosed"):
        blocks("```bash\nmake demo\n")


def test_the_layout_paragraph_names_every_package_of_the_tree_once() -> None:
    """README's **Layout** lists each top-level package and module of src/vilab in one line
    (``name/`` or ``name.py``), and nothing that is not there."""
    text = README.read_text().split("**Layout**", 1)[1].split("\n\n")[1]
    listed = re.findall(r"^- (.*?):", text, flags=re.M)
    names = [n.strip("`") for line in listed for n in line.split(", ")]
    src = REPO / "src" / "vilab"
    tree = {f"{p.name}/" for p in src.iterdir() if (p / "__init__.py").is_file()}
    tree |= {p.name for p in src.glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    assert sorted(names) == sorted(tree)
