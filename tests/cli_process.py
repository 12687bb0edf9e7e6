"""Running the ``facsynth`` command as a user does: a subprocess with its own store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def env_for(cwd: Path) -> dict[str, str]:
    """The environment of a command run in ``cwd``: the store is ``cwd/store.db``."""
    return {**os.environ, "FACSYNTH_DB": f"sqlite:///{cwd / 'store.db'}", "COLUMNS": "200"}


def facsynth(*args: str, cwd: Path, stdin: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facsynth", *args], cwd=cwd, env=env_for(cwd), input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    """The one ``error: ...`` line a failed command printed (asserting there is exactly one)."""
    assert proc.returncode != 0, proc.stdout
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:"), lines[0]
    return lines[0]
