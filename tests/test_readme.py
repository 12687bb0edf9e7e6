"""The README's promises that a file can check: CI runs its two set-up commands verbatim,
and every verb it lists exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_set_up_commands_verbatim() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", setup, re.S)
    assert len(commands) == 2
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert all(c in ci for c in commands)


def test_every_verb_in_the_readme_cli_block_exists() -> None:
    from typer.main import get_command

    from facsynth.cli import app

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = readme.split("## CLI", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    verbs = {line.split()[1] for line in block.splitlines() if line.startswith("facsynth ")}
    assert {"measure", "run", "resume", "status", "runs", "export", "chat", "features", "sae", "llm"} <= verbs
    assert verbs <= set(get_command(app).commands)


def test_the_install_builds_llama_cpp_portably_without_pips_cache() -> None:
    from facsynth.agent.server import LLAMA_CPP_PYTHON, PORTABLE_CMAKE_ARGS

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    install = re.findall(r"```bash\n(.*?)\n```", readme.split("## Set-up: two commands", 1)[1], re.S)[0]
    build = f'CMAKE_ARGS="{PORTABLE_CMAKE_ARGS}" .venv/bin/pip install --no-cache-dir "{LLAMA_CPP_PYTHON}"'
    assert build in install
    assert install.index(build) < install.index('pip install -e ".[server]"')  # the extra finds it installed
    assert "-DGGML_NATIVE=OFF" in PORTABLE_CMAKE_ARGS and "-DGGML_AMX_TILE=OFF" in PORTABLE_CMAKE_ARGS
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.findall(r"^server = \[(.*)\]$", pyproject, re.M) == [f'"{LLAMA_CPP_PYTHON}"']
