#!/usr/bin/env bash
# Measures duplex against the hand-written reference server (examples/reference_server.rs)
# and, when node and the seed tutorial are available, the original Node.js server.
# Each server is pinned to CPU 0 (taskset), the load (`duplex --role bench`) to CPU 1.
# Prints the tables that docs/performance.md quotes; raw JSON lines go to target/bench/.
#
#   scripts/bench.sh                 # everything, 5 s per measurement
#   DURATION=10s scripts/bench.sh    # longer measurements
#   ONLY=throughput scripts/bench.sh # one section: throughput|latency|scaling|memory|snapshot
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
ONLY=${ONLY:-}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SEED=${SEED:-../shared/seed}
OUT=target/bench
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

cargo build --release --quiet --bin duplex --example reference_server
BIN=target/release/duplex
REF=target/release/examples/reference_server
ulimit -n "$(ulimit -Hn)"   # 10 000 connections on each side

# The original Node server, extracted from the tutorial at run time (never committed).
NODE_DIR=""
if command -v node >/dev/null && ls "$SEED"/*.txt >/dev/null 2>&1; then
    NODE_DIR=$(mktemp -d)
    python3 - "$SEED" "$NODE_DIR" <<'PY'
import glob, re, sys
text = open(sorted(glob.glob(sys.argv[1] + "/*.txt"))[0], encoding="utf-8").read()
blocks = re.findall(r"```js\n(.*?)```", text, re.S)
server = next(b for b in blocks if "createServer" in b)
open(sys.argv[2] + "/server.mjs", "w").write(server)
PY
fi

SERVER_PID=""
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
cleanup() { stop_server; [ -z "$NODE_DIR" ] || rm -rf "$NODE_DIR"; }
trap cleanup EXIT

wait_for_port() {
    for _ in $(seq 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "server on port $1 did not start" >&2
    exit 1
}

# start_server NAME [duplex server flags...]; sets SERVER_PID and PORT
start_server() {
    local name=$1
    shift
    stop_server
    case $name in
        duplex)
            PORT=8100
            taskset -c "$SERVER_CPU" "$BIN" --role server --addr "127.0.0.1:$PORT" "$@" \
                2>"$OUT/duplex-server.log" &
            ;;
        reference)
            PORT=8101
            taskset -c "$SERVER_CPU" "$REF" "127.0.0.1:$PORT" 2>/dev/null &
            ;;
        node)
            PORT=8000 # fixed in the original
            (cd "$NODE_DIR" && exec taskset -c "$SERVER_CPU" node server.mjs >/dev/null 2>&1) &
            ;;
    esac
    SERVER_PID=$!
    wait_for_port "$PORT"
}

# bench SECTION SERVER [bench flags...]: one measurement, appended to the results
bench() {
    local section=$1 server=$2
    shift 2
    local json
    json=$(taskset -c "$LOAD_CPU" "$BIN" --role bench --addr "127.0.0.1:$PORT" --json \
        --server-pid "$SERVER_PID" "$@" 2>/dev/null || true)
    if [ -z "$json" ]; then
        json='{"errors": -1}'
    fi
    echo "{\"section\": \"$section\", \"server\": \"$server\", \"result\": $json}" >> "$RESULTS"
    echo "  $section $server $*: $(echo "$json" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(f"{r.get("rate",0):.0f}/s p50 {r.get("p50_us",0):.0f} us p99 {r.get("p99_us",0):.0f} us errors {r.get("errors")}")')" >&2
}

want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

servers=(duplex reference)
[ -n "$NODE_DIR" ] && servers+=(node)

if want throughput; then
    for server in "${servers[@]}"; do
        start_server "$server" --registry-interval 0
        for clients in 50 500; do
            bench throughput "$server" --clients "$clients" --depth 1 --size 16 --duration "$DURATION"
        done
    done
fi

if want latency; then
    for server in duplex reference; do
        start_server "$server" --registry-interval 0
        bench latency "$server" --clients 1 --depth 1 --size 16 --duration "$DURATION"
    done
fi

if want scaling; then
    for server in duplex reference; do
        start_server "$server" --registry-interval 0
        for clients in 1 10 100 1000 10000; do
            bench scaling-clients "$server" --clients "$clients" --depth 1 --size 16 --duration "$DURATION"
        done
        for size in 16 1024 65536; do
            bench scaling-size "$server" --clients 50 --depth 1 --size "$size" --duration "$DURATION"
        done
    done
fi

if want memory; then
    for server in "${servers[@]}"; do
        start_server "$server" --registry-interval 0
        bench memory "$server" --clients 10000 --depth 0 --duration 2s
    done
fi

if want snapshot; then
    # p99 with 10 000 clients, without and then with a 10 001-line registry
    # snapshot logged (to a file) every second.
    start_server duplex --registry-interval 0
    bench snapshot-off duplex --clients 10000 --depth 1 --size 16 --duration "$DURATION"
    start_server duplex --registry-interval 1s
    bench snapshot-every-1s duplex --clients 10000 --depth 1 --size 16 --duration "$DURATION"
    snapshots=$(grep -c "registry snapshot" "$OUT/duplex-server.log" || true)
    echo "  snapshots logged during the second run: $snapshots" >&2
fi
stop_server

python3 - "$RESULTS" <<'PY'
import json, os, platform, subprocess, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"machine: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}; server on CPU 0, load on CPU 1")

def table(title, header, lines):
    if not lines:
        return
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for line in lines:
        print("| " + " | ".join(str(x) for x in line) + " |")

def pick(section, server, **match):
    for row in rows:
        r = row["result"]
        if row["section"] == section and row["server"] == server and all(r.get(k) == v for k, v in match.items()):
            return r
    return None

def us(x):
    return f"{x:.0f}"

lines = []
for clients in (50, 500):
    ref = pick("throughput", "reference", clients=clients)
    for server in ("duplex", "reference", "node"):
        r = pick("throughput", server, clients=clients)
        if r and "rate" in r:
            ratio = f"{r['rate'] / ref['rate']:.2f}x" if ref and ref.get("rate") else "-"
            lines.append((clients, server, f"{r['rate']:.0f}", ratio, us(r["p50_us"]), us(r["p99_us"]), r["errors"]))
table("Throughput, depth 1, 16-byte messages", ["clients", "server", "replies/s", "vs reference", "p50 us", "p99 us", "errors"], lines)

lines = []
for server in ("duplex", "reference"):
    r = pick("latency", server)
    if r and "rate" in r:
        lines.append((server, us(r["p50_us"]), us(r["p99_us"]), us(r["p999_us"]), f"{r['rate']:.0f}", r["errors"]))
table("Latency, 1 client, depth 1", ["server", "p50 us", "p99 us", "p99.9 us", "replies/s", "errors"], lines)

lines = []
for clients in (1, 10, 100, 1000, 10000):
    cells = [clients]
    for server in ("duplex", "reference"):
        r = pick("scaling-clients", server, clients=clients)
        cells += [f"{r['rate']:.0f}", us(r["p99_us"]), r["errors"]] if r and "rate" in r else ["-", "-", "-"]
    lines.append(cells)
table("Cost by clients, depth 1, 16-byte messages", ["clients", "duplex replies/s", "duplex p99 us", "duplex errors", "reference replies/s", "reference p99 us", "reference errors"], lines)

lines = []
for size in (16, 1024, 65536):
    cells = [size]
    for server in ("duplex", "reference"):
        r = pick("scaling-size", server, size=size)
        cells += [f"{r['rate']:.0f}", us(r["p99_us"]), r["errors"]] if r and "rate" in r else ["-", "-", "-"]
    lines.append(cells)
table("Cost by message size, 50 clients, depth 1", ["bytes", "duplex replies/s", "duplex p99 us", "duplex errors", "reference replies/s", "reference p99 us", "reference errors"], lines)

lines = []
for server in ("duplex", "reference", "node"):
    r = pick("memory", server)
    if r and r.get("server_rss_connected_kib"):
        before, after, n = r["server_rss_before_kib"], r["server_rss_connected_kib"], r["connected"]
        lines.append((server, n, before, after, f"{(after - before) * 1024 / max(n, 1) / 1024:.2f}", r["errors"]))
table("Memory, 10 000 idle clients (all greeted)", ["server", "connected", "RSS before KiB", "RSS connected KiB", "KiB per client", "errors"], lines)

lines = []
for section, label in (("snapshot-off", "no snapshot"), ("snapshot-every-1s", "snapshot every 1 s")):
    r = pick(section, "duplex")
    if r and "rate" in r:
        lines.append((label, f"{r['rate']:.0f}", us(r["p50_us"]), us(r["p99_us"]), us(r["p999_us"]), r["errors"]))
table("Registry snapshot with 10 000 clients, depth 1", ["duplex", "replies/s", "p50 us", "p99 us", "p99.9 us", "errors"], lines)
PY
