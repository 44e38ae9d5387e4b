"""The served champion and its hot swap.

Each worker process holds one ``ServedModel`` behind a single reference. A background thread asks the
registry where the ``champion`` alias points (every ``poll_interval_seconds``, at once when ``/admin/reload``
is called in any worker, or when the reload file is touched). When the alias names a new version that may be
served, the thread loads it completely (booster, schema, self-check, warm-up) and only then replaces the
reference in one assignment: a request reads the reference once, so it is scored by exactly one model and its
answer names that model's version. Nothing a request sends can choose the model.

A version may be served only if its ``gate`` tag is ``passed``, or if it was champion before (a rollback
target that ``ml.registry.rollback`` accepts). Anything else (the alias moved by hand to a rejected or
unevaluated version) is refused: the worker keeps serving the version it has and counts the refusal.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ml.config import LooplineConfig, Paths
from ml.serve.schema import RecordSchema

if TYPE_CHECKING:
    import xgboost as xgb

    from ml.registry import VersionRef

log = logging.getLogger(__name__)


Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class ServedModel:
    """One fully loaded champion version."""

    name: str
    version: str
    run_id: str
    booster: xgb.Booster
    schema: RecordSchema
    loaded_at: datetime
    fast_path: bool = True  # scored from the matrix directly (else through ml.train.predict's DataFrame)
    predictor: Predictor | None = None  # the direct XGBoost call, when it passed the self-check

    def score(self, matrix: np.ndarray) -> np.ndarray:
        """Probabilities of the positive class for an encoded input matrix."""
        if self.predictor is not None:
            return self.predictor(matrix)
        if self.fast_path:
            return _inplace(self.booster, matrix)
        return _score_through_frame(self.booster, self.schema, matrix)


def _inplace(booster: xgb.Booster, matrix: np.ndarray) -> np.ndarray:
    """``Booster.inplace_predict``; the matrix has the booster's columns by construction (checked at load)."""
    return np.asarray(
        booster.inplace_predict(matrix, missing=np.nan, validate_features=False), dtype="float64"
    )


def _dense_predictor(booster: xgb.Booster) -> Predictor | None:
    """XGBoost's dense in-place prediction called directly, with its arguments encoded once.

    ``Booster.inplace_predict`` spends ~80 us per call in Python (imports, type probes, argument JSON) before
    the same C call: a third of a 100-record request. This uses XGBoost's private ctypes layer, so it is
    only served after the load-time self-check finds its scores equal to ``ml.train.predict``; None (the
    public call is used) when this XGBoost lacks it.
    """
    try:
        from xgboost._data_utils import array_interface
        from xgboost.core import _LIB, _check_call, c_bst_ulong, make_jcargs
    except ImportError:
        return None
    handle = booster.handle
    config = make_jcargs(
        type=0,
        training=False,
        iteration_begin=0,
        iteration_end=0,
        missing=np.nan,
        strict_shape=False,
        cache_id=0,
    )
    no_proxy = ctypes.c_void_p()
    call = _LIB.XGBoosterPredictFromDense

    def predict(matrix: np.ndarray) -> np.ndarray:
        rows = matrix.shape[0]
        shape = ctypes.POINTER(c_bst_ulong)()
        dims = c_bst_ulong()
        scores = ctypes.POINTER(ctypes.c_float)()
        _check_call(
            call(
                handle,
                array_interface(matrix),
                config,
                no_proxy,
                ctypes.byref(shape),
                ctypes.byref(dims),
                ctypes.byref(scores),
            )
        )
        if dims.value != 1 or shape[0] != rows:
            raise RuntimeError(f"unexpected prediction shape from XGBoost for {rows} rows")
        # Copied at once: the buffer belongs to XGBoost and is reused by the thread's next prediction.
        return np.ctypeslib.as_array(scores, (rows,)).astype("float64")

    return predict


def _score_through_frame(booster: xgb.Booster, schema: RecordSchema, matrix: np.ndarray) -> np.ndarray:
    """The batch-scoring path (``ml.train.predict`` on a DataFrame), from the same matrix."""
    from ml.train import predict

    return predict(booster, decode_matrix(schema, matrix))


def decode_matrix(schema: RecordSchema, matrix: np.ndarray) -> Any:
    """The raw DataFrame that an encoded matrix stands for (codes back to category text)."""
    import pandas as pd

    spec = schema.spec
    data: dict[str, Any] = {c: matrix[:, i] for i, c in enumerate(spec.numeric)}
    for offset, column in enumerate(spec.categorical):
        values = matrix[:, len(spec.numeric) + offset]
        vocabulary = schema.vocabulary[column]
        data[column] = [None if v != v else vocabulary[int(v)] for v in values]
    return pd.DataFrame(data)


def _self_check_rows(schema: RecordSchema) -> np.ndarray:
    """A few encoded rows that cover every category, missing values and unseen categories."""
    spec = schema.spec
    longest = max([len(v) for v in schema.vocabulary.values()] + [1])
    rows = []
    for i in range(longest + 2):
        row = [float(i * 7 % 11) - 3.0 if i % 3 else float("nan") for _ in spec.numeric]
        for column in spec.categorical:
            size = len(schema.vocabulary[column])
            row.append(float(i % size) if size and i < longest else float("nan"))
        rows.append(row)
    return np.array(rows, dtype="float64").reshape(len(rows), len(spec.columns))


def build_served(ref: VersionRef, booster: xgb.Booster, config: LooplineConfig) -> ServedModel:
    """Wrap a Loopline booster for serving: schema from its own spec, one thread, self-check, warm-up."""
    from ml.train import SPEC_ATTR, VOCAB_ATTR, feature_spec_of

    if booster.attr(SPEC_ATTR) is None or booster.attr(VOCAB_ATTR) is None:
        raise ValueError(f"{ref.uri} was not trained by Loopline: its booster carries no feature spec")
    booster.set_param({"nthread": 1})  # one request is a few rows: threads cost more than they bring
    dataset = config.dataset
    schema = RecordSchema(
        feature_spec_of(booster),
        json.loads(booster.attr(VOCAB_ATTR) or "{}"),
        dataset.id_column,
        dataset.time_column,
        ignored=(dataset.target,),
    )
    if booster.num_features() != len(schema.columns):
        raise ValueError(
            f"{ref.uri}: the booster has {booster.num_features()} features, its spec names {len(schema.columns)}"
        )
    probe = _self_check_rows(schema)
    reference = _score_through_frame(booster, schema, probe)
    predictor = _dense_predictor(booster)
    if predictor is not None and not _agrees(predictor, probe, reference):
        log.warning("v%s: XGBoost's direct dense call differs; using Booster.inplace_predict", ref.version)
        predictor = None
    fast_path = predictor is not None or _agrees(partial(_inplace, booster), probe, reference)
    if not fast_path:
        log.warning(
            "v%s: direct scoring differs from ml.train.predict; serving through the DataFrame path",
            ref.version,
        )
    served = ServedModel(
        ref.name, ref.version, ref.run_id, booster, schema, datetime.now(UTC), fast_path, predictor
    )
    served.score(probe[:1])
    return served


def _agrees(predictor: Predictor, probe: np.ndarray, reference: np.ndarray) -> bool:
    """The predictor gives exactly the reference scores, for the probe at once and row by row."""
    try:
        whole = predictor(probe)
        rows = np.concatenate([predictor(probe[i : i + 1]) for i in range(len(probe))])
    except Exception:
        log.warning("a scoring path failed its self-check", exc_info=True)
        return False
    return bool(np.array_equal(whole, reference) and np.array_equal(rows, reference))


def load_served(config: LooplineConfig, ref: VersionRef) -> ServedModel:
    """Load a registered version through the registry adapter and prepare it for serving."""
    from ml import registry
    from ml.model import LooplineModel

    model = registry.load_model(ref)
    python_model = model.unwrap_python_model()
    if not isinstance(python_model, LooplineModel):
        raise ValueError(f"{ref.uri} is not a Loopline model ({type(python_model).__name__})")
    return build_served(ref, python_model.booster, config)


def servable(config: LooplineConfig, version: str) -> tuple[bool, str]:
    """Whether a version may be served: gate passed, or champion before. Returns (allowed, why)."""
    from ml import registry

    tags = next((v["tags"] for v in registry.versions(config) if v["version"] == version), None)
    if tags is None:
        return False, f"version {version} is not registered"
    if tags.get("gate") == "passed":
        return True, "gate passed"
    moves = [
        m
        for m in registry.history(config)
        if m.get("alias") == registry.CHAMPION and m.get("outcome", "moved") == "moved"
    ]
    earlier = any(m.get("from") == version for m in moves) or any(m.get("to") == version for m in moves[:-1])
    if earlier:
        return True, f"gate {tags.get('gate', 'missing')}, but champion before"
    return False, f"gate is {tags.get('gate', 'missing')!r} and it was never champion before"


@dataclass
class HolderStatus:
    """What the last registry check found (for /ready, /admin/reload and the logs)."""

    checked_at: datetime | None = None
    alias_version: str | None = None
    error: str | None = None
    refused: dict[str, str] = field(default_factory=dict)


class ModelHolder:
    """The champion of one worker, kept current by a background thread."""

    def __init__(
        self,
        config: LooplineConfig,
        paths: Paths,
        poll_interval: float,
        reload_file: Path | None = None,
        counters: Any = None,
    ) -> None:
        self.config = config
        self.paths = paths
        self.poll_interval = poll_interval
        self.reload_file = reload_file
        self.current: ServedModel | None = None
        self.status = HolderStatus()
        self.counters = counters
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reload_mark = self._mark()
        self._connected = False
        self.first_check = threading.Event()  # set once the first registry check (and load) has finished

    def start(self) -> None:
        """Connect to the registry and start polling (the first check happens at once)."""
        self._thread = threading.Thread(target=self._loop, name="loopline-champion-poll", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        """Check the alias now (this worker)."""
        self._wake.set()

    def _mark(self) -> float:
        if self.reload_file is None:
            return 0.0
        try:
            return self.reload_file.stat().st_mtime_ns
        except FileNotFoundError:
            return 0.0

    def _loop(self) -> None:
        next_check = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_check or self._wake.is_set():
                self._wake.clear()
                self.refresh()
                self.first_check.set()
                next_check = time.monotonic() + self.poll_interval
            self._wake.wait(timeout=min(0.25, self.poll_interval))
            mark = self._mark()
            if mark != self._reload_mark:
                self._reload_mark = mark
                self._wake.set()

    def refresh(self) -> dict[str, Any]:
        """Check the alias once; load and swap in a new servable version. Never raises."""
        with self._lock:
            before = self.current.version if self.current else None
            try:
                result = self._refresh()
            except Exception as exc:
                self.status.error = f"{type(exc).__name__}: {exc}"
                self._count("registry_errors")
                log.exception("champion check failed; still serving v%s", before)
                result = {"changed": False, "error": self.status.error}
            self.status.checked_at = datetime.now(UTC)
            return {
                "worker": os.getpid(),
                "before": before,
                "version": self.current.version if self.current else None,
                **result,
            }

    def _refresh(self) -> dict[str, Any]:
        from ml import registry

        if not self._connected:  # here, not at start: a registry that is down at start-up is retried
            registry.connect(self.config, self.paths)
            self._connected = True
        ref = registry.champion(self.config)
        self.status.error = None
        self.status.alias_version = ref.version if ref else None
        if ref is None:
            return {"changed": False, "reason": f"model {self.config.model_name} has no champion yet"}
        if self.current is not None and self.current.version == ref.version:
            return {"changed": False, "reason": "already serving the champion"}
        allowed, why = servable(self.config, ref.version)  # re-checked each time: tags may change
        if not allowed:
            if ref.version not in self.status.refused:
                self._count("refused")
                log.error(
                    "champion alias names v%s but %s: refusing it; still serving v%s",
                    ref.version,
                    why,
                    self.current.version if self.current else "nothing",
                )
            self.status.refused[ref.version] = why
            return {"changed": False, "refused": ref.version, "reason": why}
        self.status.refused.pop(ref.version, None)
        served = load_served(self.config, ref)
        self.current = served  # the swap: one reference assignment
        self._count("swaps")
        log.info("now serving %s v%s (%s)", served.name, served.version, why)
        return {"changed": True, "reason": why}

    def _count(self, name: str) -> None:
        if self.counters is not None:
            self.counters.model_event(name)
