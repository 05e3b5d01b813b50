#!/usr/bin/env bash
# JetStream delivery side by side with natscli's `nats bench` (issue 23):
# three nats-server processes of their own, a three-replica file stream,
# messages of the agent's size, interleaved rounds. `make bench-jetstream`.
#
# Needs nats-server v2.15.3 and natscli v0.5.0 on PATH or in $NATS_BIN
# (GOBIN=... go install github.com/nats-io/nats-server/v2@v2.15.3
#  github.com/nats-io/natscli/nats@v0.5.0).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${NATS_BIN:-$(go env GOPATH)/bin}
rounds=${ROUNDS:-5}
msgs=${MSGS:-100000}
size=545 # the GovernanceEvent of a row of about 500 bytes (natsjs BenchmarkDeliver)
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
routes=nats://127.0.0.1:16222,nats://127.0.0.1:16223,nats://127.0.0.1:16224
for i in 0 1 2; do
  "$bin/nats-server" -a 127.0.0.1 -p $((14222 + i)) -n "n$i" -js -sd "$dir/n$i" \
    --cluster_name bench --cluster "nats://127.0.0.1:$((16222 + i))" --routes "$routes" \
    >"$dir/n$i.log" 2>&1 &
done
urls=nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224
sleep 3
go test -c -o "$dir/natsjs.test" ./natsjs
for r in $(seq "$rounds"); do
  agent=$(PGAUDIT_BENCH_NATS_URL=$urls "$dir/natsjs.test" -test.run '^$' -test.bench '^BenchmarkDeliver$' \
    -test.benchtime "${msgs}x" | awk '/^BenchmarkDeliver/ {printf "%.0f", 1e9 / $3}')
  anchor=$("$bin/nats" bench js pub async pgaudit.bench -s "$urls" --stream NATSBENCH --create --purge \
    --replicas 3 --storage file --size $size --msgs "$msgs" --batch 1024 --dedup --no-progress 2>&1 |
    sed -n 's/.*publisher stats: \([0-9,]*\) msgs\/sec.*/\1/p' | tr -d ,)
  echo "round $r: agent $agent events/s, nats bench $anchor msgs/s, ratio $(awk "BEGIN {printf \"%.2f\", $agent / $anchor}")"
done
