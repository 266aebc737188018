"""The flat-memory duplicate finder: no false negatives, few false positives."""

from __future__ import annotations

from batchrunner.duplicates import BloomFilter, DuplicateFinder, confirm_duplicates


def test_every_repeat_is_flagged_and_new_ids_rarely_are() -> None:
    finder = DuplicateFinder(expected_items=20_000)
    for i in range(20_000):
        finder.add(f"id-{i}")
    assert len(finder.maybe_repeated) <= 2  # false positives are rare at 32 bits per item
    for i in range(0, 20_000, 1000):
        finder.add(f"id-{i}")
    assert {f"id-{i}" for i in range(0, 20_000, 1000)} <= finder.maybe_repeated


def test_an_undersized_filter_stays_correct() -> None:
    bloom = BloomFilter(expected_items=1)  # far more items than it was sized for
    seen = [bloom.add(f"k{i}") for i in range(100_000)]
    assert all(bloom.add(f"k{i}") for i in range(0, 100_000, 997))  # never a false negative
    assert sum(seen) < 100_000  # but it still tells most new keys apart


def test_confirm_reports_each_repeat_with_its_first_line() -> None:
    pairs = [("a", 3), ("b", 5), ("a", 9), ("a", 12)]
    assert confirm_duplicates(pairs) == [(9, "a", 3), (12, "a", 3)]
