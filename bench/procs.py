"""Run one measured step in a child process and collect its result and its peak RSS.

The peak is the child's own ``VmHWM`` when it reports one (``PEAK_KEY`` in its result: bench.worker does), else
``os.wait4``'s ``ru_maxrss``. The latter keeps the high-water mark of the parent that spawned the child (``vfork``
+ ``exec`` start the child in the parent's memory map), so after the parent generated data every child would
report at least the parent's peak.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAIN_PYTHON = PROJECT_ROOT / ".venv" / "bin" / "python"
OMP_WAIT_POLICY: str | None = "PASSIVE"
"""Given to every child: spinning OpenMP threads (the default) collapse when other work shares the cores."""


PEAK_KEY = "_own_peak_rss_kib"
"""The key under which a child reports its own peak RSS (KiB) in its JSON result."""


def own_peak_rss_kib() -> int:
    """This process's peak RSS in KiB (``VmHWM``, which starts afresh at ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class StepFailed(RuntimeError):
    """A child step exited with an error; the message carries the end of its output."""


@dataclass
class ChildResult:
    """What one child reported, plus what the parent measured about it."""

    payload: dict[str, Any]
    peak_rss_mib: float
    wall_seconds: float
    log_tail: str = field(default="", repr=False)


def base_env(home: Path | None = None, config: Path | None = None) -> dict[str, str]:
    """The environment of every child: its own LOOPLINE_HOME, no telemetry, the project importable."""
    env = dict(os.environ)
    env.update(
        {
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "GX_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "PYTHONPATH": str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    # A deployed dag-processor or worker keeps bytecode caches; a sandbox default of PYTHONDONTWRITEBYTECODE
    # would make Loopline's modules recompile on every parse while installed packages keep theirs.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if OMP_WAIT_POLICY:
        env["OMP_WAIT_POLICY"] = OMP_WAIT_POLICY
    else:
        env.pop("OMP_WAIT_POLICY", None)
    if home is not None:
        env["LOOPLINE_HOME"] = str(home)
    if config is not None:
        env["LOOPLINE_CONFIG"] = str(config)
    return env


def run_child(
    command: list[str],
    env: dict[str, str],
    cwd: Path,
    timeout: float = 1800.0,
) -> ChildResult:
    """Run ``command`` (which writes its JSON result to $BENCH_RESULT); return it with the child's peak RSS."""
    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        result_file = Path(tmp) / "result.json"
        log_file = Path(tmp) / "output.log"
        env = dict(env, BENCH_RESULT=str(result_file))
        started = time.perf_counter()
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            timer = threading.Timer(timeout, process.kill)
            timer.start()
            try:
                _, status, usage = os.wait4(process.pid, 0)
            finally:
                timer.cancel()
            process.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - started
        tail = log_file.read_text(errors="replace")[-4000:]
        if process.returncode != 0 or not result_file.is_file():
            raise StepFailed(f"{' '.join(command[-3:])} exited with {process.returncode}:\n{tail}")
        payload = json.loads(result_file.read_text())
    # Both figures are in KiB on Linux.
    peak_kib = payload.pop(PEAK_KEY, None) if isinstance(payload, dict) else None
    return ChildResult(payload, (peak_kib or usage.ru_maxrss) / 1024.0, wall, tail)


def run_worker(
    task: str, args: dict[str, Any], env: dict[str, str], cwd: Path, timeout: float = 1800.0
) -> ChildResult:
    """Run ``bench.worker`` task ``task`` in the project's virtualenv."""
    python = str(MAIN_PYTHON if MAIN_PYTHON.exists() else Path(sys.executable))
    return run_child([python, "-m", "bench.worker", task, json.dumps(args)], env, cwd, timeout)
