"""The README, walked as a new user would: every command in its shell blocks, top to bottom, each
section in a fresh folder (with a fresh home, so no cache of this machine helps), each expected to
exit 0.

The commands run as shown but for the small rewrite below, which only makes them short:

* ``structsearch`` runs as ``python -m structsearch`` from this interpreter: the code under test;
* a command that trains (``train``, ``optimize``) gets ``--steps 2`` (a ``--steps N`` it shows
  becomes ``--steps 4``, so a resume still has steps left) and ``--n-eval 64``, except a resume,
  which keeps its run's config;
* ``optimize --trials N`` trains at most 3 graphs, and ``evaluate --scale S`` runs at 0.01 (the
  size of the disentanglement metrics' samples), so the walk fits the CI's 10 minutes;
* ``/path/to/mnist`` is the real MNIST folder beside the checkout (the commands naming it are
  skipped, saying so, where it is absent).

Commands that install, start a server, need a GPU or a placeholder server are in ``SKIP``, with why.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MNIST_DIR

README = Path(__file__).resolve().parents[1] / "README.md"
SHELL_BLOCKS = ("bash", "sh", "shell", "console")
TRAINING = ("train", "optimize")
PLACEHOLDER_MNIST = "/path/to/mnist"

SKIP = {  # the start of a command as shown -> why it is not run here
    "pip install": "installs packages: CI does it (.ci/run: pip install -e '.[test]')",
    "pytest": "the test suite itself, which CI runs",
    "structsearch ui": "starts the MLflow UI server, which runs until it is stopped (tests/test_ui.py runs it)",
    "structsearch dashboard": "starts optuna-dashboard, a server that runs until it is stopped",
    "structsearch optimize --dataset mnist --data-dir /path/to/mnist --trials 50 --preset paper": (
        "a GPU run (--gpus 0, or --device cuda --stack 16) of 50 paper-preset MNIST trials"
    ),
    "structsearch worker --study mnist-ordered --storage postgresql://user@host/db": (
        "joins a study on a placeholder server (user@host/db); tests/test_postgres.py runs workers on a real one"
    ),
}


def blocks(text: str) -> list[tuple[str, list[str]]]:
    """The README's fenced code blocks: (language, lines)."""
    found = re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    return [(lang, body.splitlines()) for lang, body in found]


def shell_commands(text: str) -> list[str]:
    """Every command of the shell blocks, in order: continuation lines joined, ``a && b`` split,
    comments dropped; in a ``console`` block only the ``$ `` lines are commands."""
    commands = []
    for lang, lines in blocks(text):
        if lang not in SHELL_BLOCKS:
            continue
        for line in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines():
            if lang == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            commands += _and_parts(line)
    return commands


def _and_parts(line: str) -> list[str]:
    """``a && b`` -> ['a', 'b'], each as shlex-normalized text without its comment."""
    parts, current = [], []
    for token in shlex.split(line, comments=True):
        if token == "&&":
            parts.append(shlex.join(current))
            current = []
        else:
            current.append(token)
    return [*parts, shlex.join(current)] if current else parts


def skip_reason(command: str) -> str | None:
    for start, reason in SKIP.items():
        if command == start or command.startswith(start + " "):
            return reason
    if PLACEHOLDER_MNIST in command and not (MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        return f"needs the real MNIST files, not found at {MNIST_DIR}"
    return None


def rewrite(command: str) -> list[str]:
    """The argv run for ``command``: the module docstring's rewrite, nothing else."""
    argv = [str(MNIST_DIR) if token == PLACEHOLDER_MNIST else token for token in shlex.split(command)]
    assert argv[0] == "structsearch", f"not a structsearch command, and not in SKIP: {command}"
    if argv[1] in TRAINING:
        if "--steps" in argv:
            argv[argv.index("--steps") + 1] = "4"
        else:
            argv += ["--steps", "2"]
        if "--resume" not in argv:
            argv += ["--n-eval", "64"]
    if argv[1] == "optimize" and "--trials" in argv:
        i = argv.index("--trials") + 1
        argv[i] = str(min(int(argv[i]), 3))
    if argv[1] == "evaluate" and "--scale" in argv:
        argv[argv.index("--scale") + 1] = "0.01"
    return [sys.executable, "-m", "structsearch", *argv[1:]]


def _fresh_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRUCTSEARCH_", "MLFLOW_"))}
    return env | {"HOME": str(home), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def sections(text: str) -> dict[str, str]:
    """The README's sections (under a ``##`` or ``###`` heading) that show a command to run here:
    heading -> text. Each is self-contained (no section uses another's files), so each is walked in
    a fresh folder of its own, and the sections run side by side (tests/conftest.py)."""
    parts = re.split(r"(?m)^(?=#{2,3} )", text)
    return {
        part.splitlines()[0].lstrip("#").strip(): part
        for part in parts
        if any(not skip_reason(c) for c in shell_commands(part))
    }


def test_the_readme_shows_the_commands_this_test_knows() -> None:
    """The walk is only as good as its parsing: the commands it finds, and a skip table that matches."""
    commands = shell_commands(README.read_text())
    assert "pip install -e '.[test]'" in commands and "pytest" in commands  # `a && b` split, shlex-quoted
    gpu = [c for c in commands if "--gpus 0" in c or "--device cuda" in c]
    assert gpu and all(skip_reason(c) for c in gpu)  # no GPU command runs here
    unused = [start for start in SKIP if not any(c == start or c.startswith(start + " ") for c in commands)]
    assert not unused, f"SKIP entries that match no README command (update the table): {unused}"
    assert all(c.startswith(("structsearch ", "pip ", "pytest")) for c in commands), commands
    walked = [c for part in sections(README.read_text()).values() for c in shell_commands(part)]
    runnable = [c for c in commands if not skip_reason(c)]
    assert [c for c in walked if not skip_reason(c)] == runnable  # the sections cut no block, drop nothing
    assert len(runnable) >= 10


@pytest.mark.slow
@pytest.mark.parametrize("heading", list(sections(README.read_text())))
def test_the_readme_section_runs_on_a_fresh_folder(heading: str, tmp_path) -> None:
    """Every command of one README section, top to bottom, in one fresh folder, each exiting 0."""
    env, ran, skipped = _fresh_env(tmp_path), [], []
    for command in shell_commands(sections(README.read_text())[heading]):
        reason = skip_reason(command)
        if reason:
            skipped.append(f"{command}  ({reason})")
            continue
        proc = subprocess.run(rewrite(command), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        assert proc.returncode == 0, f"README command failed ({proc.returncode}): {command}\n{proc.stderr[-3000:]}"
        ran.append(command)
    print("ran:", *ran, "skipped:", *skipped, sep="\n  ")
    assert ran


def test_the_readme_graph_example_prints_what_it_shows(tmp_path) -> None:
    """A ``$ structsearch ...`` line in a text block, followed by its output: the output is exact."""
    examples = []
    for lang, lines in blocks(README.read_text()):
        if lang == "text" and lines and lines[0].startswith("$ structsearch "):
            examples.append((lines[0][2:], lines[1:]))
    assert examples, "the README shows no command with its output"
    env = _fresh_env(tmp_path)
    for command, shown in examples:
        proc = subprocess.run(rewrite(command), cwd=tmp_path, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == shown, f"{command} printed:\n{proc.stdout}"
