"""Find repeated custom_ids in a job file of any size with flat memory.

A set of every id costs about 80 bytes per item, which breaks the flat-memory promise at millions
of items. A Bloom filter (a few bytes per item) says "certainly new" for almost every id; only the
few ids it flags as "maybe seen" are kept, and a second, cheap pass over the file confirms them and
finds the line of their first appearance.
"""

from __future__ import annotations

import functools
from array import array
from collections.abc import Iterable

BITS_PER_ITEM = 32
MIN_BITS = 1 << 16
MAX_BITS = 1 << 28  # 32 MiB: ~8M items at full precision, still correct (only slower) beyond
MASK_BITS = 4  # bits set per word; two words per key
MASK_TABLE = 4096  # masks per word, picked by 12 bits of the hash each
_WORDS64 = (1 << 64) - 1
_MIX = 0x9E3779B97F4A7C15  # odd: multiplying by it mixes the hash's bits for the second word


@functools.cache
def _masks(seed: int) -> list[int]:
    """MASK_TABLE words with MASK_BITS distinct bits each, from a fixed linear congruential
    sequence: the same in every process, and a few milliseconds to build."""
    masks: list[int] = []
    state = seed
    while len(masks) < MASK_TABLE:
        state = (state * 6364136223846793005 + 1442695040888963407) & _WORDS64
        mask = 0
        for shift in (58, 52, 46, 40):
            mask |= 1 << (state >> shift & 63)
        if mask.bit_count() == MASK_BITS:
            masks.append(mask)
    return masks


class BloomFilter:
    """A fixed-size, blocked Bloom filter over strings: each key sets MASK_BITS bits in each of
    two 64-bit words, so an `add` is a handful of operations instead of a loop over ten bits.

    Keys are hashed with Python's own string hash (SipHash, cached on the string): it differs
    between processes, which does not matter to a filter that lives in one. The false-positive
    rate at 32 bits per item is about 3 in a million (a false positive only costs a second,
    cheap look at the file); there are never false negatives."""

    def __init__(self, expected_items: int) -> None:
        bits = min(MAX_BITS, max(MIN_BITS, expected_items * BITS_PER_ITEM))
        self._words = bits // 64
        self._bits = array("Q", [0]) * self._words
        self._first_masks, self._second_masks = _masks(1), _masks(2)

    def add(self, key: str) -> bool:
        """Add `key`; return True if it may have been added before."""
        h = hash(key) & _WORDS64
        high = h >> 24
        words, bits = self._words, self._bits
        first, second = high % words, ((high * _MIX) >> 24 & _WORDS64) % words
        first_mask = self._first_masks[h & 0xFFF]
        second_mask = self._second_masks[(h >> 12) & 0xFFF]
        a, b = bits[first], bits[second]
        if a & first_mask == first_mask and b & second_mask == second_mask:
            return True
        bits[first] = a | first_mask
        bits[second] = bits[second] | second_mask  # re-read: `second` may equal `first`
        return False


class DuplicateFinder:
    """Pass 1: `add` every id; `maybe_repeated` lists the few ids worth a second look."""

    def __init__(self, expected_items: int) -> None:
        self._bloom = BloomFilter(expected_items)
        self.maybe_repeated: set[str] = set()

    def add(self, custom_id: str) -> None:
        if self._bloom.add(custom_id):
            self.maybe_repeated.add(custom_id)


def confirm_duplicates(
    occurrences: Iterable[tuple[str, int]],
) -> list[tuple[int, str, int]]:
    """Pass 2: from (custom_id, line) pairs of the suspected ids, in file order, return
    (line, custom_id, first_line) for every repeat."""
    first_line: dict[str, int] = {}
    repeats: list[tuple[int, str, int]] = []
    for custom_id, line in occurrences:
        first = first_line.setdefault(custom_id, line)
        if first != line:
            repeats.append((line, custom_id, first))
    return repeats
