from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

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
