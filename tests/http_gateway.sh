#!/usr/bin/env bash
# The HTTP gateway with curl, as an operator would use it.  Usage: http_gateway.sh http://127.0.0.1:PORT
# Exits non-zero (and says which step) when any answer is not what docs/http.md promises.
set -euo pipefail
base=${1:?usage: $0 http://HOST:PORT}
fail() { echo "http_gateway.sh: $*" >&2; exit 1; }

[ "$(curl -fsS "$base/healthz")" = '{"status": "ok"}' ] || fail "/healthz"

ack=$(printf 'one\ntwo\nthree\n' | curl -fsS -X POST -H 'Content-Type: application/x-ndjson' --data-binary @- \
      "$base/topics/curl/partitions/0")
echo "$ack" | grep -q '"count":3' || fail "ndjson produce: $ack"
base_offset=$(echo "$ack" | sed -E 's/.*"base_offset":([0-9]+).*/\1/')

ack=$(curl -fsS -X POST -H 'X-Hpbroker-Key: k' --data-binary 'keyed' "$base/topics/curl")
echo "$ack" | grep -q '"count":1' || fail "keyed produce: $ack"

got=$(curl -fsS "$base/topics/curl/partitions/0?offset=$base_offset&format=text")
[ "$(echo "$got" | wc -l)" -ge 3 ] || fail "consume: $got"
echo "$got" | head -1 | grep -q '"value":"one"' || fail "first value: $got"
echo "$got" | sed -n 3p | grep -q '"value":"three"' || fail "third value: $got"

code=$(curl -sS -o /tmp/hpb-curl-$$ -w '%{http_code}' "$base/topics/curl/partitions/42?offset=0")
[ "$code" = 404 ] || fail "unknown partition gave $code"
grep -q '"code":1' /tmp/hpb-curl-$$ || fail "unknown partition body: $(cat /tmp/hpb-curl-$$)"
rm -f /tmp/hpb-curl-$$

# read the whole body first: grep -q stops reading at the first match, and curl, still writing a
# large /metrics into the closed pipe, then fails with "(23) Failed writing body" under pipefail
metrics=$(curl -fsS "$base/metrics") || fail "/metrics: curl failed"
grep -q '^hpbroker_requests_total{' <<<"$metrics" || fail "/metrics"
echo "http_gateway.sh: ok"
