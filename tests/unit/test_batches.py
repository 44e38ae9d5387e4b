from __future__ import annotations

import pandas as pd
import pytest

from ml.batches import BatchKeyError, batch_key_for, check_key, row_range_of, window_of
from ml.config import BatchingConfig

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    ("by", "moment", "key"),
    [
        ("month", "2025-03-31T23:59:59", "2025-03"),
        ("week", "2025-03-03", "2025-W10"),
        ("day", "2025-03-01", "2025-03-01"),
    ],
)
def test_key_and_window_agree(by: str, moment: str, key: str) -> None:
    batching = BatchingConfig(by=by)
    assert batch_key_for(moment, batching) == key
    start, end = window_of(key, batching)
    assert start <= pd.Timestamp(moment) < end


def test_bad_key_names_the_expected_form() -> None:
    with pytest.raises(BatchKeyError, match="2025-03"):
        check_key("March", BatchingConfig(by="month"))


def test_row_batches() -> None:
    assert row_range_of("000002", BatchingConfig(by="rows", rows_per_batch=10)) == (20, 30)
