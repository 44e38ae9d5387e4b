"""``loopline serve`` on a real uvicorn with a real champion: scores, validation, auth, metrics, capture on
SIGTERM and after a crash, on SQLite and PostgreSQL stores."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest
import requests
from serve_support import TOKEN, Load, Server, records_of, store_rows

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(champion_home, tmp_path_factory: pytest.TempPathFactory):
    running = Server(champion_home, tmp_path_factory.mktemp("logs"), flush_interval=0.2, max_batch_size=200)
    try:
        running.wait_ready()
        yield running
    finally:
        if running.process.poll() is None:
            running.terminate()


@pytest.fixture(scope="module")
def month4(champion_home) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Month 4 as client records, and the batch scoring (loopline_score's step) of the same rows."""
    from ml import steps

    lake = steps.lake_of(champion_home.paths)
    batch = champion_home.scenario.batch_key(4)
    frame = lake.read("loans", [batch])
    predictions = lake.read(steps.predictions_table(champion_home.config), [batch])
    return records_of(frame), dict(zip(predictions["loan_id"], predictions["score"], strict=True))


def test_scores_equal_the_batch_scoring_of_the_same_rows(server: Server, month4) -> None:
    records, expected = month4
    got: dict[str, float] = {}
    with requests.Session() as session:
        for start in range(0, len(records), 100):
            answer = server.predict(records[start : start + 100], session)
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert (body["model_name"], body["model_version"]) == ("loans_default_classifier", "1")
            for record, scored in zip(records[start : start + 100], body["predictions"], strict=True):
                assert scored["entity_id"] == record["loan_id"]
                assert scored["decision"] == (scored["score"] >= body["threshold"])
                got[record["loan_id"]] = scored["score"]
        for record in records[:40]:
            body = server.predict(record, session).json()
            assert body["score"] == expected[record["loan_id"]] and body["model_version"] == "1"
            assert body["request_id"] and body["warnings"] == []
    assert got == expected  # exact: the same float64 for every row


def test_bad_payloads_get_422_naming_each_field(server: Server, month4) -> None:
    record = dict(month4[0][0])

    def problems(answer: requests.Response) -> set[tuple[Any, str, str]]:
        assert answer.status_code == 422, answer.text
        return {(p["record"], p["field"], p["type"]) for p in answer.json()["detail"]}

    missing = {k: v for k, v in record.items() if k != "debt_to_income"}
    assert problems(server.predict(missing)) == {(None, "debt_to_income", "missing")}
    wrong = [record, {**record, "credit_score": "seven hundred", "purpose": ["car"]}]
    assert problems(server.predict(wrong)) == {
        (1, "credit_score", "number_type"),
        (1, "purpose", "string_type"),
    }
    empty = requests.post(f"{server.url}/predict", data=b"", headers=server.headers, timeout=10)
    assert problems(empty) == {(None, "body", "empty")}
    assert problems(server.predict([])) == {(None, "body", "empty")}
    oversized = server.predict([record] * 201)
    assert problems(oversized) == {(None, "body", "too_many_records")}
    assert "201 records exceeds the maximum of 200" in oversized.json()["detail"][0]["msg"]

    unknown = server.predict({**record, "region": "atlantis"})
    assert unknown.status_code == 200
    assert unknown.json()["warnings"] == ["region: unknown category 'atlantis' (scored as missing)"]
    huge = requests.post(
        f"{server.url}/predict", data=b" " * (8 * 1024 * 1024 + 1), headers=server.headers, timeout=30
    )
    assert huge.status_code == 413


def test_every_path_but_health_needs_the_token(server: Server) -> None:
    calls = [("post", "/predict"), ("get", "/ready"), ("get", "/metrics"), ("post", "/admin/reload")]
    calls += [("get", "/openapi.json"), ("get", "/docs"), ("get", "/no-such-path")]
    for method, path in calls:
        for headers in ({}, {"Authorization": "Bearer wrong-token-wrong-token"}, {"Authorization": TOKEN}):
            answer = requests.request(method, f"{server.url}{path}", headers=headers, json={}, timeout=10)
            assert answer.status_code == 401, (method, path, headers)
            assert answer.headers["www-authenticate"].startswith("Bearer")
    assert requests.get(f"{server.url}/health", timeout=10).json() == {"status": "ok"}
    lower = requests.get(f"{server.url}/ready", headers={"Authorization": f"bearer {TOKEN}"}, timeout=10)
    assert lower.status_code == 200


def test_metrics_ready_and_openapi(server: Server) -> None:
    server.predict({"nope": 1})
    text = requests.get(f"{server.url}/metrics", headers=server.headers, timeout=10).text
    for expected in (
        'loopline_serve_requests_total{path="/predict",code="200"}',
        'loopline_serve_requests_total{path="/predict",code="422"}',
        'loopline_serve_request_errors_total{path="/predict",reason="validation"}',
        'loopline_serve_request_errors_total{path="/ready",reason="auth"}',
        'loopline_serve_request_duration_seconds_bucket{path="/predict",le="+Inf"}',
        'loopline_serve_model_version{model="loans_default_classifier",worker="',
        'loopline_serve_model_info{model="loans_default_classifier",version="1"',
        "loopline_serve_capture_queue_depth ",
        "loopline_serve_capture_queue_capacity 10000",
        "loopline_serve_captures_dropped_total 0",
        "loopline_serve_capture_rows_written_total ",
    ):
        assert expected in text, expected
    ready = requests.get(f"{server.url}/ready", headers=server.headers, timeout=10).json()
    assert ready["ready"] and ready["model_version"] == "1" and ready["alias_version"] == "1"
    document = requests.get(f"{server.url}/openapi.json", headers=server.headers, timeout=10).json()
    body = document["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert "credit_score" in body["schema"]["oneOf"][0]["required"]
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    docs = requests.get(f"{server.url}/docs", headers=server.headers, timeout=10)
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_flushes_every_answered_request(
    champion_home, start_server, month4, tmp_path, workers
) -> None:
    url = f"sqlite:///{tmp_path / 'capture.db'}"
    server = start_server(champion_home, workers=workers, store_url=url, flush_interval=5.0)
    server.wait_ready()
    with Load(server, month4[0][:300]) as load:
        time.sleep(3)
        assert server.terminate() in (0, -signal.SIGTERM), server.log()  # uvicorn re-raises SIGTERM
    assert len(load.answered) > 20
    rows = store_rows(url)
    assert len(rows) == sum(a.records for a in load.answered)
    assert {r["request_id"] for r in rows} == {a.request_id for a in load.answered}
    assert "capture flushed" in server.log()


def test_a_crash_loses_at_most_one_flush_interval(champion_home, start_server, month4, tmp_path) -> None:
    flush = 0.5
    url = f"sqlite:///{tmp_path / 'capture.db'}"
    server = start_server(champion_home, store_url=url, flush_interval=flush)
    server.wait_ready()
    with Load(server, month4[0][:300], threads=3) as load:
        time.sleep(3)
        killed_at = time.time()
        server.kill()
    stored = {r["request_id"] for r in store_rows(url)}
    lost = [
        (a.request_id, a.received)
        for a in load.answered
        if a.request_id not in stored and a.received <= killed_at
    ]
    assert len(load.answered) > 20
    margin = 0.5  # one commit, and the client's view of the answer time
    assert all(at > killed_at - flush - margin for _, at in lost), lost
    print(f"answered {len(load.answered)}, lost {len(lost)} in the last {flush} s before SIGKILL")


def test_postgresql_store_captures_every_answer(champion_home, start_server, month4, pg_url) -> None:
    from ml.serve import labels
    from ml.serve.store import migrate

    migrate(pg_url)
    server = start_server(champion_home, store_url=pg_url, flush_interval=0.2)
    server.wait_ready()
    with Load(server, month4[0][:200], threads=2) as load:
        time.sleep(2)
        assert server.terminate() in (0, -signal.SIGTERM), server.log()  # uvicorn re-raises SIGTERM
    rows = store_rows(pg_url)
    assert len(rows) == sum(a.records for a in load.answered) > 0
    assert {r["model_version"] for r in rows} == {"1"}
    entities = sorted({r["entity_id"] for r in rows})
    import pandas as pd

    outcome = pd.DataFrame({"loan_id": entities, "defaulted": "1", "label_time": "2025-06-01T00:00:00Z"})
    loaded = labels.load_frame(champion_home.config, pg_url, outcome, source="test")
    assert loaded["matched"] == len(entities)
    report = labels.join_report(
        champion_home.config, champion_home.paths, "2025-04-01", "2025-05-01", store_url=pg_url
    )
    assert report["labelled_entities"] == report["entities"] == len(entities)


def test_concurrent_requests_are_scored_exactly_like_the_batch(server: Server, month4) -> None:
    """Requests that arrive together share one booster call; each still gets its own row's exact score."""
    from concurrent.futures import ThreadPoolExecutor

    records, expected = month4

    def send(chunk: list[dict[str, Any]]) -> list[tuple[str, float]]:
        with requests.Session() as session:
            return [(r["loan_id"], server.predict(r, session).json()["score"]) for r in chunk]

    chunks = [records[i : i + 25] for i in range(0, 400, 25)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = [pair for found in pool.map(send, chunks) for pair in found]
    assert len(answers) == 400
    assert all(score == expected[loan_id] for loan_id, score in answers)


def test_raw_http_details(server: Server, month4) -> None:
    """100-continue is answered before the body is sent; head and body of an answer arrive together."""
    import json
    import socket

    body = json.dumps(month4[0][0]).encode()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            answer += sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200") and b'"model_version":"1"' in answer
    assert requests.get(f"{server.url}/predict", headers=server.headers, timeout=10).status_code == 405
