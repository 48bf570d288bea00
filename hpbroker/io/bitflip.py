"""Is a CRC32C mismatch exactly one flipped bit?  (Recovery's question about
the last batch of a log: a torn write, or damage after it was written.)

CRC32C is linear over GF(2): for two messages of the same length,
``crc(m) ^ crc(m ^ e) == raw(e)``, where ``raw`` is the CRC with a zero
initial register and no final xor.  For ``e`` one bit ``b`` of byte ``i``
of an ``n``-byte message, ``raw(e) = Z**(n-1-i) (T[1 << b])``: the table
entry of that byte, then ``n-1-i`` zero bytes, each the linear step
``Z(r) = (r >> 8) ^ T[r & 0xff]`` of the reflected table ``T``.

So the syndrome ``crc(stored bytes) ^ crc in the header`` of a batch whose
covered bytes took one bit flip is ``Z**k (T[1 << b])`` for some
``0 <= k < n`` and bit ``b``.  :func:`single_bit_error` finds ``k`` by
baby-step giant-step (``Z`` is invertible): about ``sqrt(n)`` table lookups
per candidate bit, some milliseconds for a 4 MiB batch, instead of the
``8 n`` CRCs of flipping every bit in turn.  A torn write (whole sectors
left as zeros) or junk gives a random-looking syndrome, which matches one
of the ``8 n`` single-bit syndromes with probability ``8 n / 2**32``;
recovery asks only about batches that have no unwritten-looking sector at
all, so that is no torn write's fate (docs/storage.md, "Recovery").

A syndrome of a single set bit is a flip in the stored CRC field itself.
"""

from __future__ import annotations

import math

_POLY = 0x82F63B78  # CRC32C (Castagnoli), reflected


def _table() -> list[int]:
    t = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ (_POLY if c & 1 else 0)
        t.append(c)
    return t


T = _table()


def _zero_step(r: int) -> int:
    return (r >> 8) ^ T[r & 0xFF]


def _tables_of(images: list[int]) -> list[list[int]]:
    """Byte tables of the linear map whose image of bit ``j`` is ``images[j]``."""
    out = []
    for byte in range(4):
        col = images[8 * byte: 8 * byte + 8]
        tab = [0] * 256
        for x in range(1, 256):
            low = x & -x
            tab[x] = tab[x ^ low] ^ col[low.bit_length() - 1]
        out.append(tab)
    return out


def _apply(tabs, r: int) -> int:
    return tabs[0][r & 0xFF] ^ tabs[1][(r >> 8) & 0xFF] ^ tabs[2][(r >> 16) & 0xFF] ^ tabs[3][r >> 24]


def _power_tables(m: int):
    """Byte tables of ``Z**m``."""
    images = []
    for j in range(32):
        r = 1 << j
        for _ in range(m):
            r = _zero_step(r)
        images.append(r)
    return _tables_of(images)


def single_bit_error(syndrome: int, nbytes: int) -> tuple[int, int] | None:
    """``(byte index, bit)`` of the one flipped bit of an ``nbytes``-byte
    message whose CRC32C differs from the expected one by ``syndrome``, or
    None when no single flipped bit explains it."""
    if syndrome == 0 or nbytes <= 0:
        return None
    m = max(1, math.isqrt(nbytes) + 1)
    baby = {}
    r = syndrome
    for j in range(m):  # Z**j (S), j < m
        baby.setdefault(r, j)
        r = _zero_step(r)
    zm = _power_tables(m)
    for bit in range(8):
        v = T[1 << bit]
        g_max = nbytes // m + 1
        for g in range(0, g_max + 1):  # Z**(g m) (v) == Z**j (S)  =>  S == Z**(g m - j) (v)
            j = baby.get(v)
            if j is not None:
                k = g * m - j
                if 0 <= k < nbytes:
                    return nbytes - 1 - k, bit
            v = _apply(zm, v)
    return None
