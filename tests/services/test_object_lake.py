"""The lake on a real S3-compatible object store (SeaweedFS on loopback): same contract as a folder lake.

Partitions appear whole or not at all, a failed write keeps the old partition, killed writers' temporary keys are
cleaned up without disturbing a live writer, bad credentials and missing buckets give errors that name the fix,
and the loop's steps run with the lake there and nothing under the home's lake folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.fs as pafs
import pytest

from ml import demo_data, registry, steps
from ml import lake as lake_module
from ml.lake import Lake, LakeError


@pytest.fixture
def lake(s3_lake: str) -> Lake:
    return Lake(s3_lake)


def _keys(lake: Lake, table: str, batch: str) -> set[str]:
    folder = f"{lake.root.removeprefix('s3://')}/{table}/batch={batch}"
    return {info.base_name for info in lake.fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))}


def test_partitions_round_trip_with_the_folder_lakes_contract(lake: Lake, tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": np.arange(10_000), "x": np.linspace(0, 1, 10_000), "s": ["a", "b"] * 5_000})
    written = lake.write("t", "2025-01", frame, source="landing/t/2025-01.csv")
    folder_lake = Lake(tmp_path)
    reference = folder_lake.write("t", "2025-01", frame)
    # Same bytes as a folder lake, so the same content hash; the lineage URI names the object.
    assert written.sha256 == reference.sha256 and written.rows == 10_000
    assert written.data_file == f"{lake.root}/t/batch=2025-01/data.parquet"
    assert lake.partition("t", "2025-01") == written
    pd.testing.assert_frame_equal(lake.read("t", ["2025-01"]), frame)
    assert lake.batches("t") == ["2025-01"] and lake.batches("missing") == []
    assert lake.footer_rows("t", ["2025-01"]) == 10_000
    assert lake.memory_estimate("t", ["2025-01"], ["x"]) == 80_000
    assert lake.schema("t", "2025-01").names == ["id", "x", "s"]
    assert lake.ids_in("t", ["2025-01"], "id") == set(range(10_000))
    assert lake.uris("t", ["2025-01"]) == [written.data_file]

    scanned = list(lake.scan("t", ["2025-01"], ["id", "x"], 3_000))
    assert [offset for _, offset, _ in scanned] == [0, 3_000, 6_000, 9_000]
    streamed = lake.write_stream("t", "2025-02", (b.to_pandas() for _, _, b in scanned))
    assert streamed.rows == 10_000 and lake.partition("t", "2025-02").sha256 == streamed.sha256
    assert lake.batches("t") == ["2025-01", "2025-02"]
    assert _keys(lake, "t", "2025-02") == {"data.parquet", "_meta.json"}  # no temporary key left

    with pytest.raises(LakeError, match=r"no partition t/batch=2030-01 in s3://.*ingest that batch first"):
        lake.read("t", ["2030-01"])


def test_a_failed_write_keeps_the_old_partition_and_leaves_no_temporary_key(lake: Lake) -> None:
    old = lake.write("t", "1", pd.DataFrame({"x": [1.0, 2.0]}))

    def broken() -> Iterator[pd.DataFrame]:
        yield pd.DataFrame({"x": [9.0] * 1000})
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError, match="source died"):
        lake.write_stream("t", "1", broken())
    assert lake.partition("t", "1").sha256 == old.sha256
    assert lake.read("t", ["1"])["x"].tolist() == [1.0, 2.0]
    assert _keys(lake, "t", "1") == {"data.parquet", "_meta.json"}


def test_killed_writers_temporary_keys_are_removed_only_when_stale(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake.write("t", "1", pd.DataFrame({"x": [1.0]}))
    left = f"{lake.root.removeprefix('s3://')}/t/batch=1/.data.parquet.killed.tmp"
    with lake.fs.open_output_stream(left) as out:
        out.write(b"half a file")
    lake.write("t", "1", pd.DataFrame({"x": [2.0]}))  # a fresh temporary key may be a live writer's: kept
    assert ".data.parquet.killed.tmp" in _keys(lake, "t", "1")
    monkeypatch.setattr(lake_module, "LEFTOVER_AGE_S", 0.0)
    lake.write("t", "1", pd.DataFrame({"x": [3.0]}))
    assert _keys(lake, "t", "1") == {"data.parquet", "_meta.json"}
    assert lake.read("t", ["1"])["x"].tolist() == [3.0]


def test_metadata_that_disagrees_with_the_data_is_not_trusted(lake: Lake) -> None:
    """A writer killed between the data file and its metadata: the data file is the truth."""
    lake.write("t", "1", pd.DataFrame({"x": [1.0, 2.0, 3.0]}))
    meta = f"{lake.root.removeprefix('s3://')}/t/batch=1/_meta.json"
    with lake.fs.open_output_stream(meta) as out:
        out.write(b'{"rows": 99, "sha256": "stale"}')
    assert lake.partition("t", "1").rows == 3


def test_bad_credentials_and_missing_buckets_name_the_fix(s3_server, monkeypatch: pytest.MonkeyPatch) -> None:
    for variable, value in s3_server.env.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    denied = Lake(f"s3://{s3_server.create_bucket()}/lake")
    with pytest.raises(LakeError, match=r"cannot read the lake at s3://.*127\.0\.0\.1.*AWS_ACCESS_KEY_ID"):
        denied.batches("t")
    with pytest.raises(LakeError, match=r"lake at s3://.*ACCESS_DENIED.*AWS_SECRET_ACCESS_KEY"):
        denied.write("t", "1", pd.DataFrame({"x": [1.0]}))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    missing = Lake("s3://no-such-bucket-loopline/lake")
    for attempt in (
        lambda: missing.write("t", "1", pd.DataFrame({"x": [1.0]})),
        lambda: missing.batches("t"),
    ):
        with pytest.raises(
            LakeError, match=r"bucket 'no-such-bucket-loopline' does not exist at s3://.*create it"
        ):
            attempt()


def test_the_loop_runs_with_the_lake_on_the_object_store(config, paths, scenario, s3_lake: str) -> None:
    """Ingest, gate, train, evaluate, promote, monitor and score in process: every partition is an object."""
    demo_data.write_landing(scenario, paths.landing / "loans")
    for month in (1, 2, 3):
        steps.ingest_batch(config, paths, scenario.batch_key(month))
    lake = steps.lake_of(paths, config)
    assert lake.on_object_store and lake.batches("loans") == [scenario.batch_key(m) for m in (1, 2, 3)]

    window = steps.plan_training(config, paths, None, None)
    summary = steps.validate_window(config, paths, window["batches"])
    trained = steps.train_challenger(config, paths, window["batches"], {}, summary, "t", {})
    evaluation = steps.evaluate_challenger(config, paths, window["batches"], trained["version"])
    promotion = steps.promote_challenger(config, paths, trained["version"], evaluation, True, "t")
    assert promotion["promoted"] and registry.champion(config).version == "1"
    inputs = registry._client().get_run(trained["run_id"]).inputs.dataset_inputs
    assert any(s3_lake in entry.dataset.source for entry in inputs), "lineage names the objects"

    for month in (4, 6, 7):
        steps.ingest_batch(config, paths, scenario.batch_key(month))
    shifted = steps.monitor_batch(config, paths, scenario.batch_key(7))
    assert shifted["verdict"] == "drift" and shifted["top_features"]
    scored = steps.score_batch(config, paths, scenario.batch_key(7))
    assert scored["rows"] == lake.partition("loans", scenario.batch_key(7)).rows
    assert scenario.batch_key(7) in lake.batches("loans__predictions")
    assert not paths.lake.exists(), "nothing may be written to the home's lake folder"
