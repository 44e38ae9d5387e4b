"""Helpers of the serving tests: homes with a real champion, a real uvicorn server, stores."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parents[2]
CONFIG_FILE = ROOT / "loopline.yaml"
TOKEN = "serve-test-token-" + "x" * 24
PORTS = range(28600, 28700)


def free_port() -> int:
    """A port of 28600-28699 that nothing listens on."""
    candidates = list(PORTS)
    random.shuffle(candidates)
    for port in candidates:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 28600-28699")


@contextlib.contextmanager
def home_env(home: Path, config_file: Path = CONFIG_FILE) -> Iterator[None]:
    """LOOPLINE_HOME/CONFIG set for in-process registry calls (MLflow's URI follows registry.connect)."""
    saved = {k: os.environ.get(k) for k in ("LOOPLINE_HOME", "LOOPLINE_CONFIG", "MLFLOW_TRACKING_URI")}
    os.environ["LOOPLINE_HOME"] = str(home)
    os.environ["LOOPLINE_CONFIG"] = str(config_file)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class Home:
    """A LOOPLINE_HOME with a lake, an MLflow store and a champion."""

    path: Path
    config: Any
    paths: Any
    scenario: Any
    config_file: Path = CONFIG_FILE

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        from ml import registry

        with home_env(self.path, self.config_file):
            registry.connect(self.config, self.paths)
            yield

    def train(
        self, end_month: int, overrides: dict[str, Any] | None = None, promote: bool = True
    ) -> dict[str, Any]:
        """Plan, gate, train, evaluate and (if it passes and ``promote``) promote one challenger."""
        from ml import steps

        with self.active():
            window = steps.plan_training(self.config, self.paths, self.scenario.batch_key(end_month), None)
            summary = steps.validate_window(self.config, self.paths, window["batches"])
            trained = steps.train_challenger(
                self.config, self.paths, window["batches"], overrides or {}, summary, "serve-test", {}
            )
            evaluation = steps.evaluate_challenger(
                self.config, self.paths, window["batches"], trained["version"]
            )
            promotion = steps.promote_challenger(
                self.config, self.paths, trained["version"], evaluation, promote, "t"
            )
        return {"version": trained["version"], "evaluation": evaluation, "promotion": promotion}


def config_with(folder: Path, **sections: dict[str, Any]) -> Path:
    """A copy of the demo config with some keys of some sections replaced (e.g. ``gate={...}``)."""
    import yaml

    raw = yaml.safe_load(CONFIG_FILE.read_text())
    raw["dataset"]["expectation_suite"] = str(ROOT / raw["dataset"]["expectation_suite"])
    for section, values in sections.items():
        raw.setdefault(section, {}).update(values)
    target = folder / "loopline.yaml"
    target.write_text(yaml.safe_dump(raw))
    return target


def build_home(
    folder: Path,
    months: tuple[int, ...] = (1, 2, 3, 4),
    first: dict[str, Any] | None = None,
    config_file: Path = CONFIG_FILE,
) -> Home:
    """Land the demo months, ingest ``months``, train and promote v1 on the window ending at month 3."""
    from ml import demo_data, steps
    from ml.config import Paths, load_config

    folder.mkdir(parents=True, exist_ok=True)
    scenario = demo_data.Scenario(months=8, rows_per_month=1500, shift_from_month=7, incident_months=(5,))
    with home_env(folder, config_file):
        config = load_config(config_file)
        paths = Paths.from_env()
        demo_data.write_landing(scenario, paths.landing / "loans")
        for month in months:
            steps.ingest_batch(config, paths, scenario.batch_key(month))
    home = Home(folder, config, paths, scenario, config_file)
    result = home.train(3, first)
    assert result["promotion"]["promoted"], result
    return home


class Server:
    """``python -m ml.serve`` in its own process group on 127.0.0.1."""

    def __init__(self, home: Home, log_dir: Path, *, workers: int = 1, **options: Any) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.log_file = log_dir / f"serve-{self.port}.log"
        command = [sys.executable, "-m", "ml.serve", "--port", str(self.port), "--workers", str(workers)]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            command += [flag] if value is True else [flag, str(value)]
        env = dict(os.environ)
        env.pop("MLFLOW_TRACKING_URI", None)
        env.update(
            {
                "LOOPLINE_HOME": str(home.path),
                "LOOPLINE_CONFIG": str(home.config_file),
                "LOOPLINE_SERVE_TOKEN": TOKEN,
                "MLFLOW_DISABLE_TELEMETRY": "true",
                "PYTHONUNBUFFERED": "1",
            }
        )
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def log(self) -> str:
        return self.log_file.read_text()[-6000:]

    def wait_ready(self, timeout: float = 180.0, version: str | None = None) -> dict[str, Any]:
        """Until /ready answers 200 (from every worker when there are several)."""
        deadline = time.monotonic() + timeout
        seen: dict[int, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                answer = requests.get(f"{self.url}/ready", headers=self.headers, timeout=5)
            except requests.RequestException:
                time.sleep(0.3)
                continue
            if answer.status_code == 200:
                body = answer.json()
                if version is None or body["model_version"] == version:
                    seen[body["worker"]] = body
                if len(seen) >= self.workers:
                    return body
            time.sleep(0.2)
        raise AssertionError(f"server not ready within {timeout:.0f} s:\n{self.log()}")

    def predict(
        self, payload: Any, session: requests.Session | None = None, **kwargs: Any
    ) -> requests.Response:
        sender = session or requests
        return sender.post(f"{self.url}/predict", json=payload, headers=self.headers, timeout=30, **kwargs)

    def terminate(self, timeout: float = 90.0) -> int:
        """SIGTERM (the graceful path) and wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"server did not stop within {timeout:.0f} s of SIGTERM:\n{self.log()}"
            ) from None

    def kill(self) -> None:
        """SIGKILL this server's process group (a crash)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)


def records_of(frame: Any) -> list[dict[str, Any]]:
    """Lake rows as JSON records (NaN as null, times as ISO text), as a client would send them."""
    import json

    return json.loads(frame.to_json(orient="records", date_format="iso", date_unit="s"))


def store_rows(url: str) -> list[dict[str, Any]]:
    """Every captured prediction in a store."""
    from sqlalchemy import select

    from ml.serve.store import Prediction, engine_for

    engine = engine_for(url)
    try:
        with engine.connect() as connection:
            return [dict(r) for r in connection.execute(select(Prediction.__table__)).mappings()]
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Answer:
    request_id: str
    records: int
    sent: float
    received: float
    version: str
    thread: int


class Load:
    """Client threads sending 1-5 records per request until stopped; what each 200 answered, and when."""

    def __init__(self, server: Server, records: list[dict[str, Any]], threads: int = 4) -> None:
        self.server = server
        self.records = records
        self.answered: list[Answer] = []
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, index: int) -> None:
        chooser = random.Random(index)
        with requests.Session() as session:
            while not self.stop.is_set():
                batch = chooser.sample(self.records, chooser.randint(1, 5))
                sent = time.time()
                try:
                    answer = self.server.predict(batch, session)
                except requests.RequestException as exc:
                    self.failures.append(type(exc).__name__)
                    time.sleep(0.05)
                    continue
                if answer.status_code == 200:
                    body = answer.json()
                    self.answered.append(
                        Answer(
                            body["request_id"], len(batch), sent, time.time(), body["model_version"], index
                        )
                    )
                else:
                    self.failures.append(f"{answer.status_code} {answer.text[:200]}")

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)
