"""Profile the Loopline side of a missed comparison with py-spy and summarise where its time went."""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench import procs, venvs

_LINE = re.compile(r":\d+\)$")
_SKIP = ("<frozen", "runpy.py", "bench/worker.py", "bench/procs.py", "<module>")


def _function(frame: str) -> str:
    """``name (path/file.py:123)`` -> ``name (package/file.py)``: aggregate a function's lines."""
    frame = _LINE.sub(")", frame)
    return re.sub(r"\(.*?(site-packages/|/work/main/)", "(", frame)


def summarise(raw: str, focus: str, top: int = 14) -> dict[str, Any]:
    """Own and inclusive shares of the samples whose stack passes through ``focus`` (a function name)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        frames = [_function(f) for f in stack.split(";")]
        if not any(f.startswith(f"{focus} (") for f in frames):
            continue
        n = int(count)
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            if not any(s in frame for s in _SKIP):
                inclusive[frame] += n
    if not total:
        return {"samples": 0, "own": [], "inclusive": [], "error": f"no samples inside {focus}"}
    ranked = [(f, n / total) for f, n in inclusive.most_common() if n / total < 0.995]
    return {
        "samples": total,
        "own": [(f, round(n / total, 3)) for f, n in own.most_common(top)],
        "inclusive": [(f, round(share, 3)) for f, share in ranked[: top + 6]],
    }


def profile_task(
    task: str, args: dict[str, Any], env: dict[str, str], cwd: Path, focus: str, log: Path
) -> dict[str, Any]:
    """Run one worker task under ``py-spy record`` (100 Hz, non-blocking) and summarise it."""
    try:
        py_spy = venvs.ensure_py_spy(log)
    except (venvs.VenvError, OSError, subprocess.SubprocessError) as exc:
        return {"error": f"py-spy unavailable: {exc}"}
    with tempfile.TemporaryDirectory(prefix="bench-prof-") as tmp:
        raw_file = Path(tmp) / "profile.txt"
        command = [
            str(py_spy),
            "record",
            "--nonblocking",
            "--rate",
            "100",
            "--format",
            "raw",
            "--output",
            str(raw_file),
            "--",
            str(procs.MAIN_PYTHON),
            "-m",
            "bench.worker",
            task,
            json.dumps(args),
        ]
        try:
            procs.run_child(command, env, cwd, timeout=1800)
        except procs.StepFailed as exc:
            return {"error": str(exc)[-600:]}
        if not raw_file.is_file():
            return {"error": "py-spy wrote no profile (ptrace not permitted?)"}
        return summarise(raw_file.read_text(), focus)
