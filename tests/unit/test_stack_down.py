"""``loopline down``: every process the home started is stopped; one still busy after the timeout is killed and
named."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from ml import cli
from ml.config import Paths
from ml.stack import Stack

pytestmark = pytest.mark.fast

IGNORES_SIGTERM = [
    sys.executable,
    "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
    "time.sleep(120)",
]
EXITS_ON_SIGTERM = [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(120)"]


def _logs_sigterm(delay: float) -> list[str]:
    """A process that, on SIGTERM, logs the time, waits ``delay`` seconds (a task finishing), logs and exits."""
    return [
        sys.executable,
        "-c",
        "import signal, sys, time\n"
        "def end(*_):\n"
        "    print('sigterm', time.time(), flush=True)\n"
        f"    time.sleep({delay})\n"
        "    print('exit', time.time(), flush=True)\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, end)\n"
        "print('ready', flush=True)\n"
        "time.sleep(120)\n",
    ]


def _logged(stack: Stack, name: str, event: str) -> float:
    """When process ``name`` logged ``event`` (``_logs_sigterm``'s log lines)."""
    for line in (stack.log_dir / f"{name}.log").read_text().splitlines():
        if line.startswith(event + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} never logged {event}")


def _started(stack: Stack, commands: dict[str, list[str]]) -> dict[str, int]:
    """Start each command; return once each has printed 'ready' (its SIGTERM handling is in place)."""
    pids = {name: stack.start(name, command, dict(os.environ)) for name, command in commands.items()}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all("ready" in (stack.log_dir / f"{name}.log").read_text() for name in commands):
            return pids
        time.sleep(0.05)
    raise TimeoutError("the test processes did not start")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/status").read_text().count("State:\tZ") == 1  # exited, not yet reaped


def test_terminate_kills_only_what_outlives_the_timeout(tmp_path: Path) -> None:
    stack = Stack(Paths(tmp_path))
    pids = _started(stack, {"busy-worker": IGNORES_SIGTERM, "idle-worker": EXITS_ON_SIGTERM})
    done = stack.terminate(timeout=1)
    assert done.stopped == ["busy-worker", "idle-worker"]
    assert done.killed == ["busy-worker"]
    assert stack.running() == {}
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in pids.values())


def test_down_names_the_killed_process_and_how_to_wait_longer(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _started(Stack(Paths(home)), {"celery-worker-1": IGNORES_SIGTERM})
    assert cli.main(["down", "--timeout", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "stopped: celery-worker-1" in out
    assert "killed after 0.5 s: celery-worker-1" in out and "loopline down --timeout SECONDS" in out
    assert cli.main(["down"]) == 0
    assert "nothing was running" in capsys.readouterr().out


def test_the_servers_others_report_to_stop_last(tmp_path: Path) -> None:
    """A worker finishing its task can still reach the api-server, which can still reach MLflow."""
    stack = Stack(Paths(tmp_path))
    _started(
        stack,
        {
            "mlflow-server": _logs_sigterm(0),
            "airflow-api-server": _logs_sigterm(0.3),
            "celery-worker-1": _logs_sigterm(1.0),
            "airflow-scheduler": _logs_sigterm(0),
        },
    )
    done = stack.terminate(timeout=10)
    assert done.killed == [] and len(done.stopped) == 4
    worker_done = max(_logged(stack, name, "exit") for name in ("celery-worker-1", "airflow-scheduler"))
    assert _logged(stack, "airflow-api-server", "sigterm") >= worker_done
    assert _logged(stack, "mlflow-server", "sigterm") >= _logged(stack, "airflow-api-server", "exit")
    assert _logged(stack, "airflow-scheduler", "sigterm") < _logged(stack, "celery-worker-1", "exit")
