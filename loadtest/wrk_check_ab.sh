#!/bin/bash
# usage: loadtest/wrk_check_ab.sh BASE_BIN NEW_BIN ; 3 interleaved rounds, wrk -t2 -c64 -d5s POST /check, memory store
set -e
CFG=$(mktemp --suffix=.yaml); printf "by_user: \"1000000/m\"\nby_tenant: \"100000000/m\"\n" > "$CFG"
for r in 1 2 3; do
  for name in main metrics; do
    bin=$1; [ $name = metrics ] && bin=$2
    port=$((20000 + RANDOM % 20000))
    $bin --listen 127.0.0.1:$port --grpc-listen off --config "$CFG" >/dev/null 2>&1 &
    pid=$!
    for i in $(seq 50); do curl -sf http://127.0.0.1:$port/healthz >/dev/null && break; sleep 0.1; done
    rps=$(wrk -t2 -c64 -d5s -s "$(dirname "$0")/wrk_check.lua" http://127.0.0.1:$port | awk '/Requests\/sec/{print $2}')
    echo "round $r $name $rps"
    kill $pid; wait $pid 2>/dev/null || true
  done
done
