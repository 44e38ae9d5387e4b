from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ml import lake as lake_module
from ml.lake import Lake, LakeError, atomic_write_bytes

pytestmark = pytest.mark.fast


def test_rewrite_replaces_and_hash_is_stable(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    frame = pd.DataFrame({"id": ["a", "b"], "x": [1.0, 2.0]})
    first = lake.write("t", "2025-01", frame)
    second = lake.write("t", "2025-01", frame)
    assert first.sha256 == second.sha256
    assert lake.batches("t") == ["2025-01"]
    assert len(lake.read("t", ["2025-01"])) == 2
    assert lake.partition("t", "2025-01").rows == 2
    assert [p.name for p in (tmp_path / "t" / "batch=2025-01").iterdir() if p.name.endswith(".tmp")] == []


def test_different_content_different_hash(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    a = lake.write("t", "1", pd.DataFrame({"x": [1.0]}))
    b = lake.write("t", "2", pd.DataFrame({"x": [2.0]}))
    assert a.sha256 != b.sha256


def test_missing_partition_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LakeError, match="ingest that batch first"):
        Lake(tmp_path).read("t", ["2030-01"])


def test_failed_write_leaves_old_file(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, None)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_streamed_write_equals_one_write_and_scan_keeps_row_order(tmp_path: Path) -> None:
    import hashlib

    import numpy as np

    lake = Lake(tmp_path)
    frame = pd.DataFrame({"id": np.arange(10_000), "x": np.linspace(0, 1, 10_000), "s": ["a", "b"] * 5_000})
    whole = lake.write("t", "1", frame)
    scanned = list(lake.scan("t", ["1"], ["id", "x"], 3_000))
    assert [offset for _, offset, _ in scanned] == [0, 3_000, 6_000, 9_000]
    assert all(batch.num_rows <= 3_000 and batch.schema.names == ["id", "x"] for _, _, batch in scanned)
    streamed = lake.write_stream(
        "t",
        "2",
        (b.to_pandas().assign(s=frame["s"].iloc[o : o + b.num_rows].to_numpy()) for _, o, b in scanned),
    )
    assert streamed.rows == whole.rows == 10_000
    data_file = Path(streamed.path) / "data.parquet"
    assert (
        streamed.sha256
        == hashlib.sha256(data_file.read_bytes()).hexdigest()
        == lake.partition("t", "2").sha256
    )
    pd.testing.assert_frame_equal(lake.read("t", ["2"]), lake.read("t", ["1"]))
    assert not [p for p in Path(streamed.path).iterdir() if p.name.endswith(".tmp")]


def test_failed_stream_keeps_the_old_partition(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    old = lake.write("t", "1", pd.DataFrame({"x": [1.0, 2.0]}))

    def broken():
        yield pd.DataFrame({"x": [3.0]})
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError, match="source died"):
        lake.write_stream("t", "1", broken())
    assert lake.partition("t", "1").sha256 == old.sha256
    assert lake.read("t", ["1"])["x"].tolist() == [1.0, 2.0]
    assert not [p for p in Path(old.path).iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(LakeError, match="empty"):
        lake.write_stream("t", "2", iter([]))


def test_memory_estimate_reads_only_the_footer(tmp_path: Path) -> None:
    import numpy as np

    lake = Lake(tmp_path)
    lake.write(
        "t", "1", pd.DataFrame({"a": np.zeros(1000), "b": np.zeros(1000, dtype="int32"), "s": ["x"] * 1000})
    )
    assert lake.memory_estimate("t", ["1"], ["a"]) == 8_000
    assert lake.memory_estimate("t", ["1"], ["a", "b"]) == 12_000
    assert lake.memory_estimate("t", ["1"]) > 12_000 + 8 * 1000


def test_footers_are_parsed_once_until_the_partition_is_rewritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[Path] = []

    def counting(data_file: Path) -> lake_module.Footer:
        parsed.append(data_file)
        return real(data_file)

    real = lake_module._read_footer
    monkeypatch.setattr(lake_module, "_read_footer", counting)
    lake = Lake(tmp_path)
    lake.write("t", "2025-01", pd.DataFrame({"id": ["a", "b"], "x": [1.0, 2.0]}))
    first = (lake.footer_rows("t", ["2025-01"]), lake.schema("t", "2025-01").names)
    estimate = lake.memory_estimate("t", ["2025-01"], ["x"])
    for _ in range(3):
        assert (lake.footer_rows("t", ["2025-01"]), lake.schema("t", "2025-01").names) == first
        assert lake.memory_estimate("t", ["2025-01"], ["x"]) == estimate == 16
    assert first == (2, ["id", "x"]) and len(parsed) == 1  # every call after the first is a cache hit

    lake.write("t", "2025-01", pd.DataFrame({"id": ["a", "b", "c"], "y": [1, 2, 3]}))  # replaced in place
    assert lake.footer_rows("t", ["2025-01"]) == 3 and lake.schema("t", "2025-01").names == ["id", "y"]
    assert lake.memory_estimate("t", ["2025-01"], ["y"]) == 24 and len(parsed) == 2


def test_footer_cache_keeps_the_newest_files_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lake_module, "FOOTER_CACHE_FILES", 2)
    lake = Lake(tmp_path)
    for batch in ("1", "2", "3"):
        lake.write("t", batch, pd.DataFrame({"x": [1.0]}))
        lake.footer_rows("t", [batch])
    assert [Path(path).parent.name for path in lake._footers] == ["batch=2", "batch=3"]


def test_footer_estimates_match_the_parquet_metadata(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    frame = pd.DataFrame({"n": range(1000), "text": [f"value-{i}" for i in range(1000)]})
    lake.write("t", "1", frame)
    meta = pq.ParquetFile(tmp_path / "t" / "batch=1" / "data.parquet").metadata
    text_bytes = sum(meta.row_group(g).column(1).total_uncompressed_size for g in range(meta.num_row_groups))
    assert lake.memory_estimate("t", ["1"]) == 8 * 1000 + text_bytes + 8 * 1000
    assert lake.schema("t", "1").equals(pq.read_schema(tmp_path / "t" / "batch=1" / "data.parquet"))


@pytest.mark.fast
def test_the_lake_location_comes_from_the_config_then_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml.config import ConfigError, LakeConfig, Paths, load_config

    config, paths = load_config(Path(__file__).resolve().parents[2] / "loopline.yaml"), Paths(tmp_path)
    monkeypatch.delenv("LOOPLINE_LAKE_URI", raising=False)
    assert paths.lake_location(config) == tmp_path / "lake"
    monkeypatch.setenv("LOOPLINE_LAKE_URI", "s3://shared/lake")
    assert paths.lake_location(config) == "s3://shared/lake"
    configured = config.model_copy(update={"lake": LakeConfig(uri=str(tmp_path / "mine"))})
    assert paths.lake_location(configured) == tmp_path / "mine"
    monkeypatch.setenv("LOOPLINE_LAKE_URI", "gs://elsewhere/lake")
    with pytest.raises(ConfigError, match=r"LOOPLINE_LAKE_URI='gs://elsewhere/lake'.*s3://bucket/prefix"):
        paths.lake_location(config)
    with pytest.raises(ValueError, match=r"lake.uri 'hdfs://x/y': use a folder or s3://bucket/prefix"):
        LakeConfig(uri="hdfs://x/y")
    with pytest.raises(LakeError, match="name a bucket"):
        Lake("s3://")
