"""On-call commands: ``loopline alerts list|ack``, ``loopline report`` and ``loopline retrain``'s settings and
errors (the run it requests from a real Airflow: ``tests/e2e/test_approval.py``)."""

from __future__ import annotations

import getpass
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest

from ml import alerts, cli

pytestmark = pytest.mark.fast


def _alert(batch: str, at: str | None = None, **changes: Any) -> dict[str, Any]:
    """A drift alert as the monitor DAG logs it; ``at`` (and ``changes``) replace what build_alert set."""
    document = alerts.build_alert(
        dataset="loans",
        batch=batch,
        severity="critical",
        top_features=[{"column": "credit_score", "psi": 0.66}],
        score_psi=None,
        action="retrain requested at 2025-08-01T00:00:00+00:00: see http://af/dags/loopline_train/runs",
        report=f"/x/{batch}.html",
        runbook="docs/runbook.md",
        model="loans_default_classifier",
        champion_version="1",
    )
    return {**document, **({"at": at} if at else {}), **changes}


@pytest.fixture
def logged(paths: Any) -> list[dict[str, Any]]:
    """Three alerts in the home's log: one old, one grouped, one logged before alerts had ids."""
    documents = [
        _alert("2025-06", "2025-06-02T00:00:00+00:00"),
        _alert("2025-07", "2025-07-02T00:00:00+00:00", grouped=True),
        {k: v for k, v in _alert("2025-08", "2025-08-02T00:00:00+00:00").items() if k != "id"},
    ]
    for document in documents:
        alerts.append_to_log(paths.alert_log, document)
    return documents


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_every_alert_has_a_short_id_that_the_text_names() -> None:
    document = _alert("2025-08")
    assert len(document["id"]) == 10 and f"loopline alerts ack {document['id']}" in document["text"]
    legacy = {k: v for k, v in document.items() if k != "id"}
    assert alerts.alert_id(legacy) == document["id"]  # logged before ids existed: derived the same way
    assert alerts.alert_id(legacy) != alerts.alert_id({**legacy, "batch": "2025-09"})


def test_list_ack_and_list_again(logged: list[dict], paths: Any, capsys: pytest.CaptureFixture[str]) -> None:
    ids = [alerts.alert_id(document) for document in logged]
    code, out, _ = _run(["alerts", "list"], capsys)
    lines = [line for line in out.splitlines() if not line.startswith(" ")]
    assert code == 0 and [line.split()[0] for line in lines] == ids
    assert all(line.endswith("UNACKED") for line in lines) and "(grouped)" in lines[1]
    assert "    report: /x/2025-06.html" in out

    code, out, _ = _run(["alerts", "ack", ids[2], "--by", "alice", "--note", "paused retraining"], capsys)
    assert code == 0 and f"alert {ids[2]} acknowledged by alice" in out
    [record] = [json.loads(line) for line in alerts.acks_file(paths.alert_log).read_text().splitlines()]
    assert record["id"] == ids[2] and record["by"] == "alice" and record["note"] == "paused retraining"
    assert alerts.acks_file(paths.alert_log).parent == paths.alert_log.parent

    code, out, _ = _run(["alerts", "list"], capsys)
    last = next(line for line in out.splitlines() if line.startswith(ids[2]))
    assert "acked by alice at " in last and last.endswith(": paused retraining")
    code, out, _ = _run(["alerts", "list", "--unacked"], capsys)
    assert ids[2] not in out and ids[0] in out and ids[1] in out


def test_acks_are_appended_never_rewritten(logged: list[dict], paths: Any) -> None:
    first = alerts.alert_id(logged[0])
    assert cli.main(["alerts", "ack", first]) == 0
    before = alerts.acks_file(paths.alert_log).read_bytes()
    assert cli.main(["alerts", "ack", first, "--by", "bob", "--note", "second look"]) == 0
    after = alerts.acks_file(paths.alert_log).read_bytes()
    assert after.startswith(before) and len(after.splitlines()) == 2
    assert json.loads(before)["by"] == getpass.getuser()
    [listed] = [a for a in alerts.logged_alerts(paths.alert_log) if a["id"] == first]
    assert listed["ack"]["by"] == "bob"  # the newest acknowledgement counts
    assert len(paths.alert_log.read_text().splitlines()) == 3  # the alert log itself is untouched


def test_unknown_id_is_a_clear_error(
    logged: list[dict], paths: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(["alerts", "ack", "feedc0ffee"], capsys)
    assert code == 2 and "no alert with id 'feedc0ffee'" in err and "loopline alerts list" in err
    assert not alerts.acks_file(paths.alert_log).exists()


def test_list_since_a_date_or_an_age(logged: list[dict], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(["alerts", "list", "--since", "2025-07-01"], capsys)
    assert code == 0 and "batch 2025-06" not in out and "batch 2025-07" in out and "batch 2025-08" in out
    code, out, _ = _run(["alerts", "list", "--since", "2025-08-01T12:00+02:00"], capsys)
    assert "batch 2025-07" not in out and "batch 2025-08" in out
    code, out, _ = _run(["alerts", "list", "--since", "12h"], capsys)
    assert out.startswith("no alerts in ")
    with pytest.raises(SystemExit):
        cli.main(["alerts", "list", "--since", "last tuesday"])


def _write_report(folder: Path, batch: str, mtime: float) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in (".html", ".json"):
        (folder / f"{batch}{suffix}").write_text("{}")
        os.utime(folder / f"{batch}{suffix}", (mtime, mtime))
    return folder / f"{batch}.html"


def test_report_prints_the_newest_or_the_named_batch(paths: Any, capsys: pytest.CaptureFixture[str]) -> None:
    folder = paths.reports / "drift" / "loans"
    _write_report(folder, "2025-08", 1_000)
    july = _write_report(folder, "2025-07", 2_000)  # re-monitored later: the newest report
    live = _write_report(folder / "live", "live-2025-08", 1_500)
    code, out, _ = _run(["report"], capsys)
    assert code == 0 and out.splitlines() == [f"html: {july}", f"json: {july.with_suffix('.json')}"]
    code, out, _ = _run(["report", "--batch", "live-2025-08"], capsys)
    assert out.splitlines()[0] == f"html: {live}"
    code, _, err = _run(["report", "--batch", "2025-09"], capsys)
    assert (
        code == 2 and "no drift report for batch 2025-09" in err and "2025-07, 2025-08, live-2025-08" in err
    )


def test_retrain_without_airflow_names_the_url(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("LOOPLINE_AIRFLOW_PASSWORD", "s3cret")
    code, _, err = _run(["retrain", "--airflow-url", url], capsys)
    assert code == 2
    assert f"the Airflow API server at {url} is not reachable" in err and "--airflow-url" in err
    monkeypatch.delenv("LOOPLINE_AIRFLOW_PASSWORD")
    code, _, err = _run(["retrain", "--airflow-url", url], capsys)
    assert code == 2 and f"no password for the Airflow user admin at {url}" in err


def test_retrain_finds_the_airflow_that_up_started(paths: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    airflow = "http://127.0.0.1:28081"  # only recorded and read back: nothing is asked of it
    from ml.airflow_client import login_settings, record_endpoint
    from ml.stack import airflow_password

    for name in ("LOOPLINE_AIRFLOW_URL", "LOOPLINE_AIRFLOW_PASSWORD", "AIRFLOW_ADMIN_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    record_endpoint(paths, airflow, "admin")
    with pytest.raises(ValueError, match="no password"):
        login_settings(paths)  # reads the home's Airflow password, never creates one
    assert not paths.airflow_home.exists()
    password = airflow_password(paths)  # what `loopline up` keeps for its Airflow
    assert login_settings(paths) == (airflow, "admin", password)
    assert login_settings(paths, "http://elsewhere:8080/")[0] == "http://elsewhere:8080"


def test_retrain_options_do_not_mix_with_pause(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(["retrain", "pause", "--reason", "x"], capsys)
    assert code == 2 and "go with a retrain now" in err
    assert _run(["retrain", "status"], capsys)[1].strip() == "active"
