"""Produce stdin lines to hpbroker with only pyzmq + msgpack (docs/protocol.md).

    python examples/raw_producer.py tcp://127.0.0.1:7600 TOPIC < lines

Each record carries one header, ("line", its line number as ASCII bytes).
"""
import struct, sys, time
import msgspec, zmq
from crc32c import crc32c

enc, dec = msgspec.msgpack.encode, msgspec.msgpack.decode

def encode_headers(pairs):  # docs/protocol.md "Record headers": msgpack array of [str, bin] pairs
    return enc([[name, bytes(value)] for name, value in pairs]) if pairs else b""

def make_batch(values, headers):  # docs/protocol.md section 5: 64-byte header, 16-byte entries, data
    hs = [encode_headers(h) for h in headers]  # per record, b"" for none (headers_length 0)
    n, data, now = len(values), b"".join(v + h for v, h in zip(values, hs)), time.time_ns() // 1_000_000
    table = b"".join(struct.pack("<iiii", 0, -1, len(v), len(h)) for v, h in zip(values, hs))
    b = bytearray(struct.pack("<qIiB3xIHxxIqqqi4x", 0, 64 + 16 * n + len(data), 0, 2, 0, 0, n, now, now, -1, -1))
    b += table + data
    struct.pack_into("<I", b, 20, crc32c(bytes(b[24:])))  # CRC32C of bytes [24, end)
    return bytes(b)

def call(sock, head, *payload):
    sock.send_multipart([enc(head), *payload])
    if not sock.poll(30_000): sys.exit("no reply from the broker")
    rep = dec(sock.recv_multipart()[0])
    if rep["code"]: sys.exit(f"error {rep['code']}: {rep['message']}")
    return rep

url, topic = sys.argv[1], sys.argv[2]
ctx = zmq.Context()
socks = {}
def sock(ep):
    if ep not in socks:
        socks[ep] = ctx.socket(zmq.DEALER); socks[ep].setsockopt(zmq.LINGER, 0); socks[ep].connect(ep)
    return socks[ep]
md = call(sock(url), {"t": "Metadata", "id": 0, "topics": [topic]})
acceptors, nparts = md["acceptors"] or [url], len(md["topics"][0]["partitions"])
lines = sys.stdin.buffer.read().split(b"\n")
if lines and lines[-1] == b"": lines.pop()
for i in range(0, len(lines), 1000):  # one batch of up to 1000 lines per request, round robin
    p = (i // 1000) % nparts
    chunk = lines[i:i + 1000]
    headers = [[("line", b"%d" % (i + j))] for j in range(len(chunk))]
    head = {"t": "Produce", "id": i + 1, "topic": topic, "partition": p}
    rep = call(sock(acceptors[p % len(acceptors)]), head, make_batch(chunk, headers))
    print(f"partition {p}: offsets {rep['base_offsets'][0]}..", file=sys.stderr)
print(f"sent {len(lines)} messages", file=sys.stderr)
