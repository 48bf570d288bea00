"""Which partition each record goes to, and with which key.

Per source (docs/tail.md, "Keys and partitions"):

* ``partition = P``: every record to P (with the fixed key or the
  key_regex's key, if given);
* ``key = "K"``: every record with key K, to ``partition_for_key(K, partitions)``
  (the Producer's own rule for a keyed ``send``);
* ``key_regex``: each record's key is the group ``key`` (else group 1) of
  the first match in the record; partition by that key as above; a record
  it does not match goes without a key to the file's partition;
* none of them: no key, and all of a file's records to one partition, a
  hash of the path the file was found at, so a file's order is kept and
  a file that replaces it at the same path (rotation) continues there.

The no-key and fixed-key cases cost nothing per record; ``key_regex`` is a
regex search per record, then one send per partition.
"""

from __future__ import annotations

from hpbroker.partitioning import partition_for_key

from hpbroker.tail.config import Source


def path_partition(path: str, partitions: int) -> int:
    return partition_for_key(path.encode("utf-8", "surrogateescape"), partitions)


class Router:
    def __init__(self, source: Source, partitions: int):
        self.source = source
        self.partitions = partitions
        self._by_key: dict[bytes, int] = {}
        rx = source.key_rx
        self._group = None if rx is None else ("key" if "key" in rx.groupindex else 1)

    def route(self, records: list[bytes], file_partition: int) -> list[tuple[int, list[bytes], list | None]]:
        """``records`` as ``[(partition, values, keys or None), ...]``, each
        list in the records' order."""
        src = self.source
        if src.key_rx is None:
            if src.key_bytes is not None:
                part = src.partition if src.partition is not None else self._key_partition(src.key_bytes)
                return [(part, records, [src.key_bytes] * len(records))]
            return [(src.partition if src.partition is not None else file_partition, records, None)]
        keys = self._keys(records)
        if src.partition is not None:
            return [(src.partition, records, keys)]
        groups: dict[int, tuple[list, list]] = {}
        kp = self._key_partition
        for rec, k in zip(records, keys):
            part = file_partition if k is None else kp(k)
            g = groups.get(part)
            if g is None:
                g = groups[part] = ([], [])
            g[0].append(rec)
            g[1].append(k)
        return [(p, vals, ks) for p, (vals, ks) in groups.items()]

    def _key_partition(self, key: bytes) -> int:
        p = self._by_key.get(key)
        if p is None:
            p = partition_for_key(key, self.partitions)
            if len(self._by_key) < 100_000:
                self._by_key[key] = p
        return p

    def _keys(self, records: list[bytes]) -> list[bytes | None]:
        src = self.source
        g = self._group
        if src.fast:
            return [None if m is None else m.group(g) for m in map(src.key_rx.search, records)]
        enc = src.encoding
        out = []
        for rec in records:
            m = src.key_rx.search(rec.decode(enc, "replace"))
            k = None if m is None else m.group(g)
            out.append(None if k is None else k.encode(enc, "replace"))
        return out
