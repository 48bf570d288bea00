"""One batch's evaluation of a parsed filter, vectorised: key tests as
numpy over the record table and the key bytes, header tests found with
numpy and decoded only where they may match (docs/protocol.md, "Filters";
:mod:`hpbroker.protocol.filters` says how)."""

from __future__ import annotations

import numpy as np

from hpbroker import batch
from hpbroker.protocol.filter_tree import And, Header, Key, Not, Test

#: more distinct needles than this in a filter's header tests, and a batch's
#: records are all decoded instead of searched for each needle: the search
#: costs a pass over the batch per needle, the decode one dict lookup per record
MAX_NEEDLES = 8


class BatchEval:
    """One batch's evaluation: the record table, and what is computed lazily
    (the bytes as numpy, each record's header mask)."""

    def __init__(self, buf, table, starts):
        self.buf = buf
        self.table = table
        self.starts = starts
        self.n = len(table)
        self._u8 = None
        self._hmask = None

    def u8(self) -> np.ndarray:
        if self._u8 is None:
            self._u8 = np.frombuffer(self.buf, dtype=np.uint8)
        return self._u8

    def run(self, root, headers) -> np.ndarray:
        self.headers = headers
        return self.node(root)

    def node(self, nd) -> np.ndarray:
        cls = nd.__class__
        if cls is Header:
            return ((self.header_mask() >> np.uint64(nd.slot)) & np.uint64(1)).astype(bool)
        if cls is Key:
            return self.key(nd.test)
        if cls is Not:
            return ~self.node(nd.kid)
        out = self.node(nd.kids[0])
        for k in nd.kids[1:]:
            if cls is And:
                if not out.any():
                    return out
                out &= self.node(k)
            else:
                if out.all():
                    return out
                out |= self.node(k)
        return out

    # -- keys: numpy over the table and the key bytes -----------------------------------------

    def key(self, t: Test) -> np.ndarray:
        klen = self.table["key_len"]
        if t.op == "exists":
            return klen >= 0 if t.present else klen < 0
        out = np.zeros(self.n, dtype=bool)
        if t.op in ("eq", "in"):
            by_len: dict[int, list[bytes]] = {}
            for v in t.values:
                by_len.setdefault(len(v), []).append(v)
            for size, vals in by_len.items():
                cand = np.flatnonzero(klen == size)
                if not len(cand):
                    continue
                if size == 0:
                    out[cand] = True
                    continue
                rows = self.gather(self.starts[cand], size)
                if len(vals) == 1:
                    hit = (rows == np.frombuffer(vals[0], dtype=np.uint8)).all(axis=1)
                else:
                    want = np.frombuffer(b"".join(vals), dtype=np.uint8).reshape(-1, size).view(f"V{size}").ravel()
                    hit = np.isin(rows.view(f"V{size}").ravel(), want)
                out[cand[hit]] = True
            return out
        v = t.values[0]
        size = len(v)
        cand = np.flatnonzero(klen >= size)
        if not len(cand) or size == 0:
            out[cand] = True
            return out
        at = self.starts[cand]
        if t.op == "suffix":
            at = at + klen[cand] - size
        hit = (self.gather(at, size) == np.frombuffer(v, dtype=np.uint8)).all(axis=1)
        out[cand[hit]] = True
        return out

    def gather(self, at: np.ndarray, size: int) -> np.ndarray:
        """``size`` bytes from each position in ``at``: a (len(at), size) array."""
        return self.u8()[at[:, None] + np.arange(size, dtype=np.int64)]

    # -- headers: found with numpy, decoded only where they may match ------------------------

    def header_mask(self) -> np.ndarray:
        """Per record, a uint64 whose bit ``slot`` says whether header leaf
        ``slot`` holds for it.

        The records a header test can hold for are found first, vectorised:
        their headers bytes contain one of the test's needles (the value,
        or the name).  Only those are decoded (once per distinct blob); the
        others get each test's default.  A batch without headers, or whose
        records all carry the same headers, is decided with one decode."""
        if self._hmask is not None:
            return self._hmask
        hlen = self.table["headers_len"]
        hstart = self.starts + np.maximum(self.table["key_len"], 0) + self.table["value_len"]
        n = self.n
        if not hlen.any():
            self._hmask = np.full(n, self._bits(b""), dtype=np.uint64)
            return self._hmask
        size = int(hlen[0])
        if (hlen == size).all():
            rows = self.gather(hstart, size)
            if (rows == rows[0]).all():  # every record carries the same headers: decode once
                self._hmask = np.full(n, self._bits(bytes(rows[0])), dtype=np.uint64)
                return self._hmask
        default = sum(1 << h.slot for h in self.headers if h.default)
        out = np.full(n, default, dtype=np.uint64)
        cand = self._candidates(hstart, hlen)
        mv = memoryview(self.buf)
        memo: dict[bytes, int] = {}
        for i, s, ln in zip(cand.tolist(), hstart[cand].tolist(), hlen[cand].tolist()):
            blob = mv[s:s + ln].tobytes()
            bits = memo.get(blob)
            if bits is None:
                bits = memo[blob] = self._bits(blob)
            out[i] = bits
        self._hmask = out
        return out

    def _candidates(self, hstart: np.ndarray, hlen: np.ndarray) -> np.ndarray:
        """The records (sorted indexes) whose headers bytes hold a needle of
        any header test; every record with headers when searching would cost
        more than decoding them all (many needles, or a needle everywhere)."""
        everyone = np.flatnonzero(hlen)
        needles = list(dict.fromkeys(nd for h in self.headers for nd in h.needles))
        if len(needles) > MAX_NEEDLES:
            return everyone
        lo = int(self.starts[0])
        hi = int(hstart[-1] + hlen[-1])
        region = self.u8()[lo:hi]
        hits = []
        for needle in needles:
            pos = find_all(region, needle, limit=4 * self.n + 64)
            if pos is None:
                return everyone
            pos += lo
            rec = np.searchsorted(hstart, pos, side="right") - 1
            inside = pos + len(needle) <= hstart[rec] + hlen[rec]  # hstart[rec] <= pos by construction
            hits.append(rec[inside])
        return np.unique(np.concatenate(hits)) if hits else np.zeros(0, dtype=np.int64)

    def _bits(self, blob: bytes) -> int:
        try:
            pairs = batch.decode_headers(blob)
        except batch.CorruptBatch:
            pairs = []  # headers that are not the documented layout: as none
        bits = 0
        for h in self.headers:
            if h.holds(pairs):
                bits |= 1 << h.slot
        return bits


def find_all(region: np.ndarray, needle: bytes, limit: int) -> np.ndarray | None:
    """Every position of ``needle`` in the uint8 array ``region``,
    overlapping ones too: one vectorised pass for the first byte, then each
    next byte checked at the positions still in the running.  None when
    more than ``limit`` positions are still in the running after four bytes
    (a needle made of bytes the data is full of): the cost would grow with
    the needle's length."""
    size = len(needle)
    room = len(region) - size + 1
    if room <= 0:
        return np.zeros(0, dtype=np.int64)
    want = np.frombuffer(needle, dtype=np.uint8)
    pos = np.flatnonzero(region[:room] == want[0])
    for j in range(1, size):
        if not len(pos):
            break
        if j == 4 and len(pos) > limit:
            return None
        pos = pos[region[pos + j] == want[j]]
    return pos
