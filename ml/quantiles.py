"""Exact order statistics of numeric columns, in memory bounded by a budget instead of by the column's length.

A reference profile (``drift.numeric_profile``) reads a column's present values in ascending order: the values at
a few ranks, how many values lie below a few points, and the distinct values when there are few. An
``OrderStatistics`` answers those questions. ``SortedColumn`` holds the column sorted in memory (8 bytes a
value); ``StreamedColumns`` answers them exactly for columns that come in chunks, over a few passes:

- values map to unsigned 64-bit keys in the same order (``order_keys``: -0.0 counts as 0.0; NaN and the
  infinities are missing values, left out as ``drift.numeric_profile`` leaves them out);
- pass 1 counts the keys' top bits (65,536 buckets, fewer on a small budget) and the values' moments; the
  ranks the profile reads are then known (the profile is run once on a stand-in that records them);
- each later pass takes the buckets that hold a wanted rank: it collects their values when they fit the
  column's share of the memory (smallest buckets first), and splits the others into finer buckets between
  their smallest and largest keys (count, minimum and maximum per finer bucket); a bucket whose minimum equals
  its maximum holds a single value and is resolved without collecting anything;
- when every wanted rank lies in a collected or single-valued bucket, every answer is exact: equal to the same
  question asked of the whole column sorted in memory (``SortedColumn``).

Memory per column: the bucket counts of pass 1, then the collected values and finer buckets of one pass, both
within the column's share of ``memory_bytes``; the passes needed grow with the logarithm of the rows (two or
three for millions of values).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

Side = Literal["left", "right"]
ROOT_BITS = 16
"""Key bits counted by the first pass (sign, exponent and four mantissa bits of a float64)."""
_SIGN = np.uint64(1 << 63)
_COLLECTED_BYTES = 16
"""Memory per collected value: its key, and its copy when the pass's collection is sorted."""
_BUCKET_BYTES = 24
"""Memory per finer bucket of a split: its count, minimum and maximum key."""


def order_keys(values: np.ndarray) -> np.ndarray:
    """Finite float64 values as uint64 keys in the same order (-0.0 and 0.0 give the same key)."""
    bits = (np.asarray(values, dtype="float64") + 0.0).view(np.uint64)  # + 0.0 turns -0.0 into 0.0
    negative = (bits & _SIGN) != 0
    return np.where(negative, ~bits, bits | _SIGN)


def key_values(keys: np.ndarray) -> np.ndarray:
    """The float64 values of ``order_keys`` (its inverse)."""
    keys = np.asarray(keys, dtype=np.uint64)
    negative = (keys & _SIGN) == 0
    return np.where(negative, ~keys, keys & ~_SIGN).view("float64")


class OrderStatistics(ABC):
    """A column's present (finite) values in ascending order, as far as a profile reads them.

    ``rows`` counts every value, ``size`` the present ones; ``mean`` and ``std`` (population) are ``None``
    when no value is present.
    """

    rows: int
    size: int

    @property
    @abstractmethod
    def mean(self) -> float | None: ...

    @property
    @abstractmethod
    def std(self) -> float | None: ...

    @abstractmethod
    def at(self, ranks: np.ndarray) -> np.ndarray:
        """The values at these 0-based ranks of the ascending order."""

    @abstractmethod
    def count_below(self, points: np.ndarray, side: Side) -> np.ndarray:
        """``np.searchsorted(sorted values, points, side)``: values below (``left``) or up to (``right``) each."""

    @abstractmethod
    def distinct(self, limit: int) -> np.ndarray | None:
        """The distinct values in ascending order when there are at most ``limit``, else ``None``."""


class SortedColumn(OrderStatistics):
    """The present values sorted in memory."""

    def __init__(self, ordered: np.ndarray, rows: int) -> None:
        self.ordered = ordered
        self.rows = rows
        self.size = int(ordered.size)

    @classmethod
    def of(cls, values: np.ndarray) -> SortedColumn:
        """The finite values of a float64 array, sorted (a fresh array)."""
        present = values[np.isfinite(values)]
        present.sort()
        return cls(present, int(values.size))

    @property
    def mean(self) -> float | None:
        return float(self.ordered.mean()) if self.size else None

    @property
    def std(self) -> float | None:
        return float(self.ordered.std()) if self.size else None

    def at(self, ranks: np.ndarray) -> np.ndarray:
        return self.ordered[ranks]

    def count_below(self, points: np.ndarray, side: Side) -> np.ndarray:
        return np.searchsorted(self.ordered, points, side=side)

    def distinct(self, limit: int) -> np.ndarray | None:
        ordered = self.ordered
        values = ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])]
        return values if values.size <= limit else None


class _Requests(OrderStatistics):
    """A stand-in column of ``size`` values that records the ranks and the distinct limit a profile asks for.

    It answers zeros (and "too many distinct values"), so the profile asks for every rank it may need.
    """

    def __init__(self, size: int) -> None:
        self.rows = self.size = size
        self.ranks: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
        self.limit: int | None = None

    @property
    def mean(self) -> float | None:
        return None

    @property
    def std(self) -> float | None:
        return None

    def at(self, ranks: np.ndarray) -> np.ndarray:
        self.ranks.append(np.asarray(ranks, dtype=np.int64).ravel())
        return np.zeros(np.shape(ranks))

    def count_below(self, points: np.ndarray, side: Side) -> np.ndarray:
        return np.zeros(np.shape(points), dtype=np.int64)

    def distinct(self, limit: int) -> np.ndarray | None:
        self.limit = limit if self.limit is None else max(self.limit, limit)
        return None


class _Moments:
    """Count, mean and sum of squared deviations, merged chunk by chunk (Chan et al.)."""

    def __init__(self) -> None:
        self.count, self.mean, self.squares = 0, 0.0, 0.0

    def add(self, values: np.ndarray) -> None:
        if not values.size:
            return
        mean = float(values.mean())
        squares = float(np.square(values - mean).sum())
        count = self.count + values.size
        delta = mean - self.mean
        self.squares += squares + delta * delta * self.count * values.size / count
        self.mean += delta * values.size / count
        self.count = count


class StreamedSelection(OrderStatistics):
    """One column's order statistics, selected exactly over passes of chunks (see the module's docstring).

    ``reads`` is the profile that will read the result: run on a stand-in after the first pass, it tells which
    ranks (and whether the distinct values) to select. Feed a pass with ``add``, close it with ``end_pass``;
    ``pending`` says whether another pass is needed.
    """

    def __init__(self, reads: Callable[[OrderStatistics], object], memory_bytes: int) -> None:
        self._reads = reads
        self.memory_bytes = max(int(memory_bytes), 1 << 16)
        self.rows = self.size = 0
        self.passes = 0
        self._moments = _Moments()
        self._root_bits = int(min(ROOT_BITS, max(8, np.log2(self.memory_bytes / 16))))
        self._root: np.ndarray | None = np.zeros(1 << self._root_bits, dtype=np.int64)
        # The buckets ("leaves") holding every present value, in key order: lowest and highest key, count.
        self._lo = self._hi = np.zeros(0, dtype=np.uint64)
        self._count = np.zeros(0, dtype=np.int64)
        self._collected: dict[int, np.ndarray] = {}  # leaf's lowest key -> its values, sorted
        self._ranks = np.zeros(0, dtype=np.int64)
        self._limit: int | None = None
        self._enumerate = False
        self._plan: _Pass | None = None
        self.pending = True

    # -- passes ----------------------------------------------------------------------------------------------

    def add(self, values: np.ndarray) -> None:
        """One chunk of the current pass (float64; NaN and infinities are missing)."""
        values = np.asarray(values, dtype="float64")
        finite = values[np.isfinite(values)]
        keys = order_keys(finite)
        if self._root is not None:
            self.rows += int(values.size)
            self._moments.add(finite)
            self._root += np.bincount(keys >> np.uint64(64 - self._root_bits), minlength=self._root.size)
        elif self._plan is not None:
            self._plan.add(keys)

    def end_pass(self) -> None:
        """Close the pass: merge what it found and plan the next one (``pending`` turns false when done)."""
        if self._root is not None:
            self._end_root_pass(self._root)
            self._root = None
        elif self._plan is not None:
            self._merge(self._plan)
        self.passes += 1
        self._plan = self._next_pass()
        self.pending = self._plan is not None

    def _end_root_pass(self, root: np.ndarray) -> None:
        used = np.flatnonzero(root).astype(np.uint64)
        width = np.uint64(64 - self._root_bits)
        self._lo = used << width
        self._hi = self._lo | ((np.uint64(1) << width) - np.uint64(1))
        self._count = root[used.astype(np.intp)]
        self.size = int(self._count.sum())
        requests = _Requests(self.size)
        self._reads(requests)
        self._ranks = np.unique(np.concatenate(requests.ranks))
        self._limit = requests.limit
        self._enumerate = self._limit is not None and used.size <= self._limit

    def _merge(self, plan: _Pass) -> None:
        keys = np.concatenate(plan.collected) if plan.collected else np.zeros(0, dtype=np.uint64)
        keys.sort()
        for lo, hi in zip(plan.lo[plan.collect], plan.hi[plan.collect], strict=True):
            start, stop = np.searchsorted(keys, lo, side="left"), np.searchsorted(keys, hi, side="right")
            self._collected[int(lo)] = key_values(keys[start:stop])
        split = ~plan.collect
        kept = ~np.isin(self._lo, plan.lo[split])
        used = np.flatnonzero(plan.counts)
        lo = np.concatenate([self._lo[kept], plan.minimum[used]])
        order = np.argsort(lo, kind="stable")
        self._lo = lo[order]
        self._hi = np.concatenate([self._hi[kept], plan.maximum[used]])[order]
        self._count = np.concatenate([self._count[kept], plan.counts[used]])[order]

    def _resolved(self) -> np.ndarray:
        """Per leaf: a single value, or collected."""
        collected = np.isin(
            self._lo, np.fromiter(self._collected, dtype=np.uint64, count=len(self._collected))
        )
        return (self._lo == self._hi) | collected

    def _next_pass(self) -> _Pass | None:
        resolved = self._resolved()
        wanted = np.zeros(self._lo.size, dtype=bool)
        wanted[self._leaf_of_ranks(self._ranks)] = True
        if self._enumerate:
            distinct = sum(np.unique(v).size - 1 for v in self._collected.values()) + self._lo.size
            self._enumerate = self._limit is not None and distinct <= self._limit
            wanted |= self._enumerate
        need = np.flatnonzero(wanted & ~resolved)
        if not need.size:
            return None
        by_size = need[np.argsort(self._count[need], kind="stable")]
        fits = np.cumsum(self._count[by_size]) <= self.memory_bytes // _COLLECTED_BYTES
        collect, split = np.sort(by_size[fits]), by_size[~fits]
        bits = np.zeros(split.size, dtype=np.int64)
        if split.size:
            # Finer buckets for the split leaves, in proportion to their counts, within the memory share.
            slots = self.memory_bytes // _BUCKET_BYTES * self._count[split] / self._count[split].sum()
            bits = np.clip(np.floor(np.log2(np.maximum(slots, 2))), 1, ROOT_BITS).astype(np.int64)
        return _Pass(self._lo, self._hi, collect, split, bits)

    # -- answers -----------------------------------------------------------------------------------------------

    def _leaf_of_ranks(self, ranks: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.cumsum(self._count), ranks, side="right")

    def _check_done(self) -> None:
        if self.pending:
            raise RuntimeError("the selection needs more passes before it can answer")

    @property
    def mean(self) -> float | None:
        return self._moments.mean if self.size else None

    @property
    def std(self) -> float | None:
        return float(np.sqrt(self._moments.squares / self.size)) if self.size else None

    def at(self, ranks: np.ndarray) -> np.ndarray:
        self._check_done()
        ranks = np.asarray(ranks, dtype=np.int64)
        leaves = self._leaf_of_ranks(ranks)
        below = np.cumsum(self._count) - self._count
        found = np.empty(ranks.shape, dtype="float64")
        for leaf in np.unique(leaves):
            here = leaves == leaf
            lo = int(self._lo[leaf])
            if self._lo[leaf] == self._hi[leaf]:
                found[here] = key_values(self._lo[leaf : leaf + 1])[0]
            elif lo in self._collected:
                found[here] = self._collected[lo][ranks[here] - below[leaf]]
            else:
                raise ValueError(f"rank(s) {ranks[here].tolist()} were not selected")
        return found

    def count_below(self, points: np.ndarray, side: Side) -> np.ndarray:
        self._check_done()
        points = np.asarray(points, dtype="float64")
        counts = np.full(points.shape, self.size, dtype=np.int64)  # NaN sorts last, as in np.searchsorted
        keys = order_keys(np.where(np.isnan(points), 0.0, points))
        leaves = np.searchsorted(self._lo, keys, side="right") - 1
        below = np.cumsum(self._count) - self._count
        for index in np.flatnonzero(~np.isnan(points)):
            leaf, key = int(leaves[index]), keys[index]
            if leaf < 0:
                counts[index] = 0
            elif key > self._hi[leaf]:  # between leaves
                counts[index] = below[leaf] + self._count[leaf]
            elif self._lo[leaf] == self._hi[leaf]:
                inside = key > self._lo[leaf] if side == "left" else key >= self._lo[leaf]
                counts[index] = below[leaf] + (self._count[leaf] if inside else 0)
            elif int(self._lo[leaf]) in self._collected:
                values = self._collected[int(self._lo[leaf])]
                counts[index] = below[leaf] + np.searchsorted(values, points[index], side=side)
            else:
                raise ValueError(f"{points[index]!r} lies among values that were not selected")
        return counts

    def distinct(self, limit: int) -> np.ndarray | None:
        self._check_done()
        if not self._enumerate:
            if self._limit is None or limit > self._limit:
                raise ValueError(f"distinct values up to {limit} were not requested")
            return None
        parts = [
            key_values(self._lo[leaf : leaf + 1])
            if self._lo[leaf] == self._hi[leaf]
            else np.unique(self._collected[int(self._lo[leaf])])
            for leaf in range(self._lo.size)
        ]
        values = np.concatenate(parts) if parts else np.zeros(0)
        return values if values.size <= limit else None


class _Pass:
    """What one refining pass does per leaf: collect the values of ``collect`` leaves, split ``split`` leaves.

    A split leaf's keys go to ``2**bits`` finer buckets of equal key width between its lowest and highest key.
    """

    def __init__(
        self, lo: np.ndarray, hi: np.ndarray, collect: np.ndarray, split: np.ndarray, bits: np.ndarray
    ) -> None:
        active = np.concatenate([collect, split])
        order = np.argsort(lo[active], kind="stable")
        self.lo, self.hi = lo[active][order], hi[active][order]
        self.collect = np.concatenate([np.ones(collect.size, bool), np.zeros(split.size, bool)])[order]
        spans = [int(h) - int(low) for low, h in zip(lo[split], hi[split], strict=True)]
        shifts = [max(0, span.bit_length() - int(b)) for span, b in zip(spans, bits, strict=True)]
        widths = np.array([(span >> shift) + 1 for span, shift in zip(spans, shifts, strict=True)], np.int64)
        shift = np.zeros(active.size, dtype=np.uint64)
        offset = np.zeros(active.size, dtype=np.int64)
        shift[collect.size :] = shifts
        offset[collect.size :] = np.cumsum(widths) - widths
        self.shift, self.offset = shift[order], offset[order]
        total = int(widths.sum())
        self.counts = np.zeros(total, dtype=np.int64)
        self.minimum = np.full(total, np.iinfo(np.uint64).max, dtype=np.uint64)
        self.maximum = np.zeros(total, dtype=np.uint64)
        self.collected: list[np.ndarray] = []

    def add(self, keys: np.ndarray) -> None:
        where = np.searchsorted(self.lo, keys, side="right") - 1
        inside = where >= 0
        inside[inside] &= keys[inside] <= self.hi[where[inside]]
        keys, where = keys[inside], where[inside]
        collect = self.collect[where]
        if collect.any():
            self.collected.append(keys[collect])
        keys, where = keys[~collect], where[~collect]
        if keys.size:
            slot = self.offset[where] + ((keys - self.lo[where]) >> self.shift[where]).astype(np.int64)
            self.counts += np.bincount(slot, minlength=self.counts.size)
            np.minimum.at(self.minimum, slot, keys)
            np.maximum.at(self.maximum, slot, keys)


class StreamedColumns:
    """``StreamedSelection`` of several columns sharing passes and ``memory_bytes`` (split evenly)."""

    def __init__(
        self, columns: Sequence[str], reads: Callable[[OrderStatistics], object], memory_bytes: int
    ) -> None:
        self.memory_bytes = memory_bytes
        share = memory_bytes // max(len(columns), 1)
        self.columns = {column: StreamedSelection(reads, share) for column in columns}

    @property
    def pending(self) -> list[str]:
        """The columns that need another pass."""
        return [column for column, selection in self.columns.items() if selection.pending]

    def add(self, chunk: Mapping[str, Any]) -> None:
        """One chunk of the current pass: a column name -> values mapping (a DataFrame) holding the pending ones."""
        for column in self.pending:
            self.columns[column].add(np.asarray(chunk[column], dtype="float64"))

    def end_pass(self) -> None:
        """Close the pass for every pending column (the next pass shares the memory among those still pending)."""
        pending = self.pending
        for column in pending:
            self.columns[column].memory_bytes = max(self.memory_bytes // len(pending), 1 << 16)
            self.columns[column].end_pass()

    def run(self, chunks: Callable[[list[str]], Iterable[Mapping[str, Any]]]) -> dict[str, OrderStatistics]:
        """Pass over ``chunks(pending columns)`` until every column is selected; the results by column."""
        while pending := self.pending:
            for chunk in chunks(pending):
                self.add(chunk)
            self.end_pass()
        return dict(self.columns)

    def __getitem__(self, column: str) -> StreamedSelection:
        return self.columns[column]
