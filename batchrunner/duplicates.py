"""Find repeated custom_ids in a job file of any size with flat memory.

A set of every id costs about 80 bytes per item, which breaks the flat-memory promise at millions
of items. A Bloom filter (a few bytes per item) says "certainly new" for almost every id; only the
few ids it flags as "maybe seen" are kept, and a second, cheap pass over the file confirms them and
finds the line of their first appearance.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

BITS_PER_ITEM = 32
HASHES = 10
MIN_BITS = 1 << 16
MAX_BITS = 1 << 28  # 32 MiB: ~8M items at full precision, still correct (only slower) beyond


class BloomFilter:
    """A fixed-size Bloom filter over strings, with double hashing from one blake2b digest."""

    def __init__(self, expected_items: int) -> None:
        bits = min(MAX_BITS, max(MIN_BITS, expected_items * BITS_PER_ITEM))
        self._size = bits
        self._bits = bytearray((bits + 7) // 8)

    def add(self, key: str) -> bool:
        """Add `key`; return True if it may have been added before."""
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        first = int.from_bytes(digest[:8], "little")
        step = int.from_bytes(digest[8:], "little") | 1
        size, bits = self._size, self._bits
        seen = True
        for i in range(HASHES):
            pos = (first + i * step) % size
            byte, mask = pos >> 3, 1 << (pos & 7)
            if not bits[byte] & mask:
                seen = False
                bits[byte] |= mask
        return seen


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
