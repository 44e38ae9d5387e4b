"""The bench's own virtualenvs, created on first use from PyPI, never touching the project's ``.venv``.

``bench/.venv-evidently``: Evidently (with ``pandas<3``: evidently 0.7 imports a pandas helper that pandas 3
removed) and pyarrow. ``bench/.venv-tools``: py-spy, the sampling profiler used on missed targets.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
EVIDENTLY_VENV = BENCH_DIR / ".venv-evidently"
TOOLS_VENV = BENCH_DIR / ".venv-tools"
EVIDENTLY_PACKAGES = ["evidently", "pandas<3", "pyarrow"]
TOOLS_PACKAGES = ["py-spy"]


class VenvError(RuntimeError):
    """A bench virtualenv could not be created or installed."""


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _works(venv: Path, probe: str) -> bool:
    python = _python(venv)
    if not python.exists():
        return False
    done = subprocess.run(
        [str(python), "-c", probe], capture_output=True, timeout=300, env={"DO_NOT_TRACK": "1"}
    )
    return done.returncode == 0


def _create(venv: Path, packages: list[str], log: Path) -> None:
    base = getattr(sys, "_base_executable", sys.executable)
    with log.open("ab") as out:
        steps = [
            [base, "-m", "venv", "--clear", str(venv)],
            [str(_python(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages],
        ]
        for command in steps:
            if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=1800).returncode != 0:
                raise VenvError(f"`{' '.join(command)}` failed; see {log}")


def ensure_evidently(log: Path) -> Path:
    """The Evidently venv's Python, creating the venv when missing or broken."""
    probe = "import importlib.metadata as m; m.version('evidently'); m.version('pyarrow')"
    if not _works(EVIDENTLY_VENV, probe):
        _create(EVIDENTLY_VENV, EVIDENTLY_PACKAGES, log)
        if not _works(EVIDENTLY_VENV, probe):
            raise VenvError(f"evidently does not import in {EVIDENTLY_VENV}; see {log}")
    return _python(EVIDENTLY_VENV)


def ensure_py_spy(log: Path) -> Path:
    """The py-spy executable of the tools venv, creating the venv when missing."""
    binary = TOOLS_VENV / "bin" / "py-spy"
    if not binary.exists():
        _create(TOOLS_VENV, TOOLS_PACKAGES, log)
    if not binary.exists():
        raise VenvError(f"py-spy was not installed in {TOOLS_VENV}; see {log}")
    return binary


def versions(python: Path, names: list[str]) -> dict[str, str]:
    """Installed versions of ``names`` in the venv of ``python``."""
    code = f"import json, importlib.metadata as m\nprint(json.dumps({{n: m.version(n) for n in {names!r}}}))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=120)
    return json.loads(done.stdout) if done.returncode == 0 else {}
