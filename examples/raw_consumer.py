"""Print every message of a topic with only pyzmq + msgpack (docs/protocol.md).

    python examples/raw_consumer.py tcp://127.0.0.1:7600 TOPIC [IDLE_MS]

Reads all partitions from the beginning, one value per line on stdout; with
IDLE_MS, exits once no partition has had anything new for that long.
"""
import struct, sys, time
import msgspec, zmq

enc, dec = msgspec.msgpack.encode, msgspec.msgpack.decode
url, topic = sys.argv[1], sys.argv[2]
idle_ms = int(sys.argv[3]) if len(sys.argv) > 3 else None
ctx = zmq.Context()
socks = {}

def call(ep, head):
    if ep not in socks:
        socks[ep] = ctx.socket(zmq.DEALER); socks[ep].setsockopt(zmq.LINGER, 0); socks[ep].connect(ep)
    socks[ep].send_multipart([enc(head)])
    if not socks[ep].poll(30_000): sys.exit("no reply from the broker")
    frames = socks[ep].recv_multipart()
    rep = dec(frames[0])
    if rep["code"]: sys.exit(f"error {rep['code']}: {rep['message']}")
    return rep, frames[1:]

def records(payload, want):
    """(offset, key, value) of every record at or after offset ``want``."""
    pos = 0
    while pos + 64 <= len(payload):
        base, length = struct.unpack_from("<qI", payload, pos)
        (count,) = struct.unpack_from("<I", payload, pos + 28)
        at = pos + 64 + 16 * count
        for i in range(count):
            _, klen, vlen, hlen = struct.unpack_from("<iiii", payload, pos + 64 + 16 * i)
            key = payload[at:at + klen] if klen >= 0 else None
            at += max(klen, 0)
            if base + i >= want:
                yield base + i, key, payload[at:at + vlen]
            at += vlen + hlen
        pos += length

md, _ = call(url, {"t": "Metadata", "id": 0, "topics": [topic]})
acceptors = md["acceptors"] or [url]
parts = [p["partition"] for p in md["topics"][0]["partitions"]]
offsets = {p: call(acceptors[p % len(acceptors)], {"t": "ListOffsets", "id": 1, "topic": topic, "partition": p, "spec": -2})[0]["offset"] for p in parts}
last_data = time.monotonic()
while idle_ms is None or (time.monotonic() - last_data) * 1000 < idle_ms:
    got = False
    for p in parts:  # one fetch at a time, short long-poll per partition
        rep, (payload,) = call(acceptors[p % len(acceptors)], {"t": "Fetch", "id": 2, "topic": topic, "partition": p,
                                                               "offset": offsets[p], "max_wait_ms": 100})
        for off, key, value in records(payload, offsets[p]):
            sys.stdout.buffer.write(value + b"\n")
            offsets[p] = off + 1
            got = True
    sys.stdout.flush()
    if got:
        last_data = time.monotonic()
