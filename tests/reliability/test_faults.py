"""Injected faults that need no production profile: SIGKILL mid-write, a read-only lake folder.

A child process (forked by ``reliability_workers.py``) writes a lake partition or a report in a loop and is killed
with SIGKILL at a random moment, again and again (seed: ``LOOPLINE_FAULT_SEED``); after every kill the lake
(``Lake.batches``/``partition``/``read``) and the report must show a complete old or new version, never a partial
or inconsistent one, and a re-run must produce the same content hash. The read-only lake goes through
``ml.steps.ingest_batch``, on the suite's shared champion home.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from reliability_support import ROOT, Home, case, child_env, entered, file_sha256, snapshot
from reliability_workers import BATCH, TABLE, lake_frame, report_document

from ml import demo_data, steps
from ml.lake import Lake, LakeError, atomic_write_json

KILLS = 16
SEED = int(os.environ.get("LOOPLINE_FAULT_SEED", "20250107"))
WORKER = Path(__file__).with_name("reliability_workers.py")


class Zygote:
    """The forking writer of ``reliability_workers.py``: each ``kill_one`` starts a writer and SIGKILLs it."""

    def __init__(self, kind: str, target: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(WORKER), kind, str(target)],
            env=child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        if self._line() != "ready":
            self.close()
            raise AssertionError(f"writer zygote did not start: {self.process.stderr.read()}")

    def _line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def kill_one(self, delay: float) -> None:
        """Fork a writer, let it write for ``delay`` seconds, SIGKILL it, and check it died of the kill."""
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()
        pid = int(self._line())
        time.sleep(delay)
        os.kill(pid, signal.SIGKILL)
        assert self._line() == f"exit {-signal.SIGKILL}", "the writer died of something else than the kill"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)


@contextmanager
def zygote(kind: str, target: Path) -> Iterator[Zygote]:
    started = Zygote(kind, target)
    try:
        yield started
    finally:
        started.close()


def _visible(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if not p.name.startswith(".")} if folder.is_dir() else set()


def test_sigkill_while_writing_a_lake_partition(tmp_path: Path) -> None:
    """No kill leaves a partial or inconsistent partition visible; the re-run writes the same content hash."""
    expected, hashes = {}, {}
    for which in (0, 1):
        written = Lake(tmp_path / f"reference{which}").write(TABLE, BATCH, lake_frame(which))
        expected[written.sha256], hashes[which] = written.rows, written.sha256
    lake = Lake(tmp_path / "lake")
    rng = random.Random(SEED)
    seen_complete = False
    with zygote("lake", lake.root) as writers:
        for kill in range(KILLS):
            _check_after_lake_kill(writers, lake, rng, kill, expected, seen_complete)
            seen_complete = seen_complete or bool(lake.batches(TABLE))
    with case("fault", "re-run after the kills writes the same partition"):
        again = lake.write(TABLE, BATCH, lake_frame(0))
        assert again.sha256 == hashes[0] == file_sha256(again.data_file)
        assert lake.partition(TABLE, BATCH) == again
        leftovers = sorted(p.name for p in Path(again.path).iterdir() if p.name.endswith(".tmp"))
        assert leftovers == [], f"half-written temporary files left behind: {leftovers}"


def _check_after_lake_kill(
    writers: Zygote, lake: Lake, rng: random.Random, kill: int, expected: dict[str, int], seen_complete: bool
) -> None:
    with case("fault", f"SIGKILL during Lake.write #{kill + 1} (seed {SEED})"):
        writers.kill_one(rng.uniform(0.0, 1.8))
        listed = lake.batches(TABLE)
        assert listed in ([], [BATCH]), listed
        if seen_complete:
            assert listed == [BATCH], "a complete partition disappeared after a kill"
        if not listed:
            return
        partition = lake.partition(TABLE, BATCH)
        assert partition.sha256 in expected, "the partition's hash is neither the old nor the new content"
        assert file_sha256(partition.data_file) == partition.sha256, "metadata and data file disagree"
        assert partition.rows == expected[partition.sha256] == len(lake.read(TABLE, [BATCH]))
        hidden = {p.name for p in Path(partition.path).iterdir()} - _visible(Path(partition.path))
        assert all(name.endswith((".tmp", ".lock")) for name in hidden), hidden
        assert _visible(Path(partition.path)) == {"_meta.json", Path(partition.data_file).name}


def test_sigkill_while_writing_a_report(tmp_path: Path) -> None:
    """The report is always absent or one complete document; the re-run writes the same bytes."""
    target = tmp_path / "reports" / "drift" / f"{BATCH}.json"
    payloads = {}
    for which in (0, 1):
        atomic_write_json(tmp_path / f"ref{which}.json", report_document(which))
        payloads[file_sha256(tmp_path / f"ref{which}.json")] = which
    rng = random.Random(SEED + 1)
    with zygote("report", target) as writers:
        for kill in range(KILLS // 2):
            with case("fault", f"SIGKILL during atomic_write_json #{kill + 1} (seed {SEED + 1})"):
                writers.kill_one(rng.uniform(0.0, 0.9))
                if not target.exists():
                    continue
                assert file_sha256(target) in payloads, "the report is neither the old nor the new document"
                json.loads(target.read_text())
                assert _visible(target.parent) == {target.name}
    with case("fault", "re-run after the report kills writes the same bytes"):
        atomic_write_json(target, report_document(0))
        assert payloads[file_sha256(target)] == 0


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """Make a folder tree read-only, also for root (immutable attribute); restored afterwards."""
    folders = [folder, *(p for p in folder.rglob("*") if p.is_dir())]
    modes = {p: p.stat().st_mode for p in folders}
    for path in folders:
        path.chmod(0o555)
    immutable = os.geteuid() == 0
    if immutable:
        if not shutil.which("chattr"):
            pytest.skip("running as root without chattr: a read-only folder cannot be made")
        done = subprocess.run(["chattr", "-R", "+i", str(folder)], capture_output=True, text=True)
        if done.returncode != 0:
            for path, mode in modes.items():
                path.chmod(mode)
            pytest.skip(f"running as root and chattr +i failed: {done.stderr.strip()}")
    try:
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-R", "-i", str(folder)], check=True)
        for path, mode in modes.items():
            path.chmod(mode)


@pytest.fixture(scope="module")
def fault_home(stable_champion: tuple[Path, Any]) -> Iterator[Home]:
    with entered(*stable_champion) as home:
        yield home


def test_read_only_lake_folder_is_a_clear_error_and_nothing_half_written(fault_home: Home) -> None:
    home = fault_home
    batch = "2025-07"
    lake_dir = home.paths.lake
    source = home.paths.landing / "loans" / f"{batch}.csv"
    source.write_bytes(
        demo_data.generate_month(home.scenario, 7)
        .to_csv(index=False, date_format="%Y-%m-%dT%H:%M:%S")
        .encode()
    )
    before = snapshot(home)
    with case("fault", "read-only lake folder during ingest", home), read_only(lake_dir):
        with pytest.raises(LakeError) as raised:
            steps.ingest_batch(home.config, home.paths, batch)
        message = str(raised.value)
        assert str(lake_dir / "loans" / f"batch={batch}") in message and "writable" in message, message
    assert snapshot(home) == before
    assert not list(lake_dir.rglob("*.tmp")) and not (lake_dir / "loans" / f"batch={batch}").exists()
    assert source.is_file(), "the landed file must stay for the re-run"
    with case("fault", "re-run after the lake is writable again", home):
        done = steps.ingest_batch(home.config, home.paths, batch)
        assert Lake(lake_dir).partition("loans", batch).sha256 == done["sha256"]
        assert (
            hashlib.sha256(Path(Lake(lake_dir).partition("loans", batch).data_file).read_bytes()).hexdigest()
            == (done["sha256"])
        )
