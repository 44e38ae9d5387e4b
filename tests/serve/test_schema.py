"""Request validation and the direct scoring path, on a real booster trained in process (no MLflow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from serve_support import CONFIG_FILE, records_of

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def served():
    from ml import demo_data, train
    from ml.config import load_config
    from ml.features import resolve_features
    from ml.registry import VersionRef
    from ml.serve.holder import build_served

    config = load_config(CONFIG_FILE)
    frame = demo_data.generate_month(demo_data.Scenario(rows_per_month=2000, duplicate_rate=0), 1)
    spec = resolve_features(config, frame.columns, frame.dtypes)
    params = train.hyperparameters(config.training, {"num_boost_round": 40})
    booster = train.fit(frame, spec, config.dataset.target, params)
    model = build_served(VersionRef(config.model_name, "7", "run"), booster, config)
    return model, frame, config


def _record(served) -> dict:
    _, frame, _ = served
    return records_of(frame.head(1))[0]


def _errors(served, body) -> list[dict]:
    from ml.serve.schema import PayloadError

    model, _, _ = served
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(PayloadError) as caught:
        model.schema.parse(raw, max_batch_size=10)
    return caught.value.detail()["detail"]


def test_direct_scores_equal_train_predict_bit_for_bit(served) -> None:
    from ml.train import predict

    model, frame, _ = served
    assert model.fast_path
    frame = frame.copy()
    frame.loc[frame.index[::7], "channel"] = "carrier_pigeon"  # unseen: scores as missing on both paths
    frame.loc[frame.index[::5], "purpose"] = None
    frame.loc[frame.index[::3], "credit_score"] = np.nan
    batch = model.schema.validate(records_of(frame))
    direct = model.score(batch.matrix)
    assert np.array_equal(direct, predict(model.booster, frame))
    single = np.concatenate(
        [model.score(model.schema.validate([r]).matrix) for r in records_of(frame.head(50))]
    )
    assert np.array_equal(single, direct[:50])
    assert sum("carrier_pigeon" in " ".join(w) for w in batch.warnings) == len(frame.index[::7])


def test_missing_field_is_named(served) -> None:
    record = _record(served)
    del record["credit_score"]
    errors = _errors(served, record)
    assert [(e["field"], e["type"]) for e in errors] == [("credit_score", "missing")]
    assert errors[0]["loc"] == ["body", "credit_score"]


def test_wrong_types_are_named_with_the_record_index(served) -> None:
    good, bad = _record(served), _record(served)
    bad["annual_income"] = "lots"
    bad["age"] = True
    bad["region"] = 3.5
    errors = _errors(served, [good, bad])
    assert {(e["record"], e["field"], e["type"]) for e in errors} == {
        (1, "annual_income", "number_type"),
        (1, "age", "number_type"),
        (1, "region", "string_type"),
    }
    assert "got string" in next(e["msg"] for e in errors if e["field"] == "annual_income")


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b"", "empty"), (b"  \n", "empty"), (b"[]", "empty"), (b"{not json", "json_invalid"), (b"42", "type")],
)
def test_bad_bodies_are_named(served, body: bytes, kind: str) -> None:
    errors = _errors(served, body)
    assert [(e["field"], e["type"]) for e in errors] == [("body", kind)]


def test_oversized_batch_is_refused(served) -> None:
    errors = _errors(served, [_record(served)] * 11)
    assert errors[0]["field"] == "body" and errors[0]["type"] == "too_many_records"
    assert "11 records exceeds the maximum of 10" in errors[0]["msg"]


def test_non_finite_numbers_are_refused(served) -> None:
    record = _record(served)
    raw = json.dumps(record).replace(
        '"loan_amount": ' + json.dumps(record["loan_amount"]), '"loan_amount": NaN'
    )
    assert _errors(served, raw.encode())[0]["type"] == "json_invalid"
    record["loan_amount"] = 1e400
    raw = json.dumps(record).replace("Infinity", "1e400").encode()
    assert _errors(served, raw)[0]["field"] == "loan_amount"


def test_unknown_category_and_extra_fields_are_warnings(served) -> None:
    model, _, _ = served
    record = _record(served)
    record["home_ownership"] = "CASTLE"
    record["favourite_colour"] = "blue"
    batch = model.schema.parse(json.dumps(record).encode(), 10)
    assert batch.single and len(batch) == 1
    assert any("unknown category 'CASTLE'" in w for w in batch.warnings[0])
    assert any("favourite_colour" in w for w in batch.warnings[0])
    assert np.isnan(batch.matrix[0, model.schema.columns.index("home_ownership")])


def test_nulls_integers_ids_and_times(served) -> None:
    model, _, config = served
    record = _record(served)
    record["employment_years"] = None
    record[config.dataset.id_column] = 12345
    record[config.dataset.time_column] = "2025-03-01T10:00:00+02:00"
    batch = model.schema.parse(json.dumps([record]).encode(), 10)
    assert not batch.single
    assert batch.entity_ids == ["12345"]
    assert batch.event_times[0].isoformat() == "2025-03-01T08:00:00+00:00"
    record[config.dataset.time_column] = "yesterday"
    assert _errors(served, record)[0]["field"] == config.dataset.time_column


def test_json_schema_lists_every_feature_as_required(served) -> None:
    model, _, _ = served
    schema = model.schema.json_schema(100)
    single, many = schema["oneOf"]
    assert single["required"] == model.schema.columns
    assert many["maxItems"] == 100
    assert model.schema.parse(json.dumps(model.schema.example()).encode(), 1).single


def test_metrics_render_sums_workers() -> None:
    from ml.serve.metrics import ServeMetrics, render

    first, second = ServeMetrics(), ServeMetrics()
    for metrics, version in ((first, "3"), (second, "4")):
        metrics.observe("/predict", 200, 0.002)
        metrics.observe("/nope", 404, 0.0001)
        metrics.error("/predict", "validation")
        metrics.gauges.append(lambda v=version: {"model_version": v, "queue_depth": 2, "captures_dropped": 1})
    snapshots = [first.snapshot(), {**second.snapshot(), "pid": -1}]
    text = render(snapshots, "m")
    assert 'loopline_serve_requests_total{path="/predict",code="200"} 2' in text
    assert 'loopline_serve_requests_total{path="other",code="404"} 2' in text
    assert 'loopline_serve_request_duration_seconds_bucket{path="/predict",le="0.0025"} 2' in text
    assert 'loopline_serve_request_duration_seconds_count{path="/predict"} 2' in text
    assert 'loopline_serve_request_errors_total{path="/predict",reason="validation"} 2' in text
    assert "loopline_serve_capture_queue_depth 4" in text
    assert "loopline_serve_captures_dropped_total 2" in text
    assert 'loopline_serve_model_version{model="m",worker="-1"} 4' in text


def test_batches_take_the_fast_path_with_the_general_paths_result(served) -> None:
    """The msgspec fast path for batches gives exactly what the general path gives for the same records."""
    import msgspec

    model, frame, config = served
    records = records_of(frame.head(120))
    id_column, time_column = config.dataset.id_column, config.dataset.time_column
    numeric, categorical = model.schema.spec.numeric, model.schema.spec.categorical
    for index, record in enumerate(records):
        kind = index % 10
        if kind == 1:
            record[categorical[0]] = "never-seen"
        elif kind == 2:
            record[categorical[1]] = None
            record[numeric[0]] = None
        elif kind == 3:
            record[numeric[1]] = int(index)
            record[id_column] = 10_000 + index
        elif kind == 4:
            record[time_column] = "2025-03-01T10:00:00+02:00"
        elif kind == 5:
            record[time_column] = "2025-03-01"
        elif kind == 6:
            del record[id_column]
            record[time_column] = None
        elif kind == 7:
            record[config.dataset.target] = "1"  # known, not a feature: ignored silently
    body = json.dumps(records).encode()
    assert model.schema._parse_fast(body, 1000) is not None
    fast = model.schema.parse(body, 1000)
    general = model.schema.validate(json.loads(body))
    assert not fast.single and len(fast) == len(general) == 120
    assert np.array_equal(fast.matrix, general.matrix, equal_nan=True)
    assert fast.entity_ids == general.entity_ids and fast.event_times == general.event_times
    assert fast.warnings == general.warnings and fast.unknown_categories == general.unknown_categories == 12
    assert [msgspec.to_builtins(f) for f in fast.features] == [dict(f) for f in general.features]
    assert np.array_equal(model.score(fast.matrix), model.score(general.matrix))
    # Anything the fast path does not take goes to the general path: an extra key warns, a bad field fails.
    records[3]["favourite_colour"] = "blue"
    assert any(
        "favourite_colour" in w for w in model.schema.parse(json.dumps(records).encode(), 1000).warnings[3]
    )
    records[5][numeric[2]] = "many"
    assert _errors(served, records[:10])[0] == {
        "loc": ["body", 5, numeric[2]],
        "field": numeric[2],
        "record": 5,
        "msg": "expected a number or null, got string",
        "type": "number_type",
    }


def test_the_direct_xgboost_call_equals_inplace_predict(served) -> None:
    from ml.serve.holder import _dense_predictor, _inplace

    model, frame, _ = served
    predictor = _dense_predictor(model.booster)
    if predictor is None:
        pytest.skip("this XGBoost has no XGBoosterPredictFromDense in its ctypes layer")
    matrix = model.schema.validate(records_of(frame.head(300))).matrix
    assert np.array_equal(predictor(matrix), _inplace(model.booster, matrix))
    assert np.array_equal(predictor(matrix[:1]), _inplace(model.booster, matrix[:1]))
    assert model.predictor is not None  # it passed the load-time self-check and is what scores requests
