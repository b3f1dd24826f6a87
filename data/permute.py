"""Keyed pseudo-random permutations of [0, n), evaluated position by position: the item at any
position is computed without the rest, so a permutation of hundreds of millions of items is
never held in memory, and a stream resumed at any position continues the same order."""
from __future__ import annotations

import numpy as np

__all__ = ["keyed_permutation"]

_ROUNDS = 4             # rounds of the mixing function


def keyed_permutation(positions: np.ndarray, n: int, key: tuple[int, ...]) -> np.ndarray:
    """The items at `positions` (< `n`) of the permutation of [0, n) keyed by `key` (int64).

    On b-bit integers (2^b the smallest power of two >= n), `_ROUNDS` rounds of: xor a key,
    multiply by an odd key mod 2^b, xor the value shifted right by about b/2 (each step a
    bijection, so the rounds are one); values that land >= n are sent through the rounds
    again (cycle walking), which keeps the map a bijection of [0, n). The round keys come from
    `key` (a tuple of non-negative integers, e.g. (seed, pass))."""
    positions = np.asarray(positions, dtype=np.int64)
    bits = max(1, int(n - 1).bit_length())
    dt = np.uint32 if bits <= 32 else np.uint64
    keys = np.random.default_rng([*key, 0x5EED]).integers(0, 1 << bits, size=(_ROUNDS, 2),
                                                          dtype=np.uint64).astype(dt)
    keys[:, 1] |= dt(1)
    mask, shift = dt((1 << bits) - 1), dt((bits + 1) // 2)

    def rounds(x):
        for k, a in keys:
            x ^= k
            x *= a
            x &= mask
            x ^= x >> shift
        return x

    x = rounds(positions.astype(dt))
    out = np.flatnonzero(x >= n)
    while len(out):
        x[out] = y = rounds(x[out])
        out = out[y >= n]
    return x.astype(np.int64)
