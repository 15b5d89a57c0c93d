#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: the balancer's own cost,
# free of the noise that timing a shared machine has (a count repeats to within ~1%).
#
# Usage: load/instructions.sh [TOP]
#   TOP: how many functions to list, by instructions per request inclusive (default 40).
#   BALANCER_BIN=PATH counts that balancer binary instead of this tree's release build (e.g. a
#   build of an older commit, for before/after; the demo backends are this tree's either way).
#
# Starts 4 demo backends (`balancer demo-backend`) on 127.0.0.1:19401-19404 and the release
# balancer on 127.0.0.1:19400 (access log and admin off) under valgrind's callgrind, warms up
# with wrk for 3 s, counts 10 s of `wrk -t1 -c8` and prints the total and the top functions.
# Loopback only; everything it starts is stopped at the end. Needs valgrind, wrk and gawk
# (Debian: apt-get install -y valgrind wrk gawk). The output file stays in
# target/instructions/ for callgrind_annotate.
set -euo pipefail
top=${1:-40}
cd "$(dirname "$0")/.."
for tool in valgrind callgrind_annotate wrk gawk; do
    command -v "$tool" >/dev/null || {
        echo "instructions.sh: $tool is missing (Debian: apt-get install -y valgrind wrk gawk)" >&2
        exit 1
    }
done
cargo build --release -p balancer-tokio
out=target/instructions
mkdir -p "$out"
rm -f "$out"/callgrind.*
cat > "$out/balancer.toml" <<'EOF'
listen = "127.0.0.1:19400"
policy = "least-pending"
backends = ["127.0.0.1:19401", "127.0.0.1:19402", "127.0.0.1:19403", "127.0.0.1:19404"]
access_log = "off"
admin = "off"
EOF
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT
for id in 1 2 3 4; do
    target/release/balancer demo-backend --listen "127.0.0.1:1940$id" --id "$id" >/dev/null 2>&1 &
    pids+=($!)
done
bin=${BALANCER_BIN:-target/release/balancer}
valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.%p" \
    "$bin" --config "$out/balancer.toml" >"$out/balancer.log" 2>&1 &
proxy=$!
pids+=("$proxy")
for _ in $(seq 100); do
    curl -s -o /dev/null http://127.0.0.1:19400/ && break
    sleep 0.2
done
wrk -t1 -c8 -d3s http://127.0.0.1:19400/ >/dev/null
callgrind_control -z "$proxy" >/dev/null 2>&1
requests=$(wrk -t1 -c8 -d10s http://127.0.0.1:19400/ | awk '/requests in/{print $1}')
callgrind_control -d "$proxy" >/dev/null 2>&1
file=$(ls -t "$out"/callgrind.*.1 | head -1)
total=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",", "", $1); print $1; exit}')
echo "requests: $requests, instructions: $total, per request: $((total / requests)) ($file)"
echo "instructions per request, inclusive, by function:"
callgrind_annotate --inclusive=yes --threshold=100 --auto=no "$file" 2>/dev/null |
    gawk -v n="$requests" 'match($0, /^ *([0-9,]+) \( *[0-9.]+%\)  (.*)$/, m) {
        c = m[1]; gsub(",", "", c); s = m[2]; sub(/ \[.*\]$/, "", s)
        sub(/^.*\.rs:/, "", s); sub(/^.*\.[cSh]:/, "", s)
        printf "%8.0f  %s\n", c / n, substr(s, 1, 120) }' |
    sort -rn | gawk '{ k = $0; sub(/^ *[0-9]+  /, "", k); if (!(k in seen)) { seen[k] = 1; print } }' |
    head -"$top"
