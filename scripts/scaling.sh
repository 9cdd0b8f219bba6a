#!/usr/bin/env bash
# The scaling table of docs/performance.md: duplex and the peers of
# ../shared/peers (tokio, Go, C epoll), each server pinned to K cores
# (taskset), loaded from other cores by independent `duplex --role bench`
# processes, rounds alternating between the servers.
#
#   BUILD_ONLY=1 scripts/scaling.sh   builds static binaries into $BIN and stops
#   scripts/scaling.sh                runs the table with the binaries in $BIN
#                                     (built first when missing)
#   REPORT="a.txt b.txt" scripts/scaling.sh
#                                     prints the table from earlier runs'
#                                     results.txt files, their rounds together
#
# The binaries are static (baseline x86-64), so $BIN can be carried to a
# bigger machine and the table run there in one go. Settings (environment):
#   BIN=target/scaling-bin   CORES="1 2 4 8"   DEPTHS="1 8"   ROUNDS=2
#   CLIENTS=1000   SIZE=16   DURATION=3s   SERVERS="duplex tokio go epoll"
#   LOAD_CPUS=8-15 (the load's cores, never the servers')   LOADERS=4
#   OUT=target/scaling (every run's JSON and logs)
# The server's cores are 0..K-1; the load's are split evenly between the
# LOADERS bench processes, each with --threads set to its share.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/scaling-bin}
CORES=${CORES:-"1 2 4 8"}
DEPTHS=${DEPTHS:-"1 8"}
ROUNDS=${ROUNDS:-2}
CLIENTS=${CLIENTS:-1000}
SIZE=${SIZE:-16}
DURATION=${DURATION:-3s}
SERVERS=${SERVERS:-"duplex tokio go epoll"}
LOAD_CPUS=${LOAD_CPUS:-8-15}
LOADERS=${LOADERS:-4}
OUT=${OUT:-target/scaling}

summarize() { # results files...
    python3 - "$CORES" "$DEPTHS" "$@" <<'EOF'
import statistics, sys
from collections import defaultdict
rows = defaultdict(list)
for path in sys.argv[3:]:
    for line in open(path):
        kind, k, depth, _, rate, server, bench, errors = line.split()
        rows[(kind, int(k), int(depth))].append((float(rate), float(server), float(bench), int(errors)))
cores = [int(k) for k in sys.argv[1].split()]
kinds = [k for k in ("duplex", "tokio", "go", "epoll") if any(key[0] == k for key in rows)]
for depth in (int(d) for d in sys.argv[2].split()):
    print(f"\nreplies/s, depth {depth} (median of rounds; server us CPU per reply in brackets)\n")
    print("| server | " + " | ".join(f"{k} cores" for k in cores) + f" | efficiency at {cores[-1]} |")
    print("|---|" + "---|" * (len(cores) + 1))
    for kind in kinds:
        cells, rates = [], []
        for k in cores:
            runs = rows.get((kind, k, depth), [])
            if not runs:
                cells.append("-"); rates.append(0); continue
            rate = statistics.median(r[0] for r in runs)
            server = statistics.median(r[1] for r in runs)
            errors = sum(r[3] for r in runs)
            rates.append(rate)
            cells.append(f"{rate / 1000:.0f}k ({server:.1f})" + (f" {errors} errors" if errors else ""))
        eff = rates[-1] / (rates[0] * cores[-1] / cores[0]) if rates[0] else 0
        print(f"| {kind} | " + " | ".join(cells) + f" | {eff:.2f} |")
    print("\nduplex against each, per core count (replies/s ratio of the medians):")
    for kind in kinds:
        if kind == "duplex":
            continue
        ratios = []
        for k in cores:
            d = [r[0] for r in rows.get(("duplex", k, depth), [])]
            o = [r[0] for r in rows.get((kind, k, depth), [])]
            ratios.append(f"{statistics.median(d) / statistics.median(o):.2f}x" if d and o else "-")
        print(f"  vs {kind}: " + " ".join(ratios))
EOF
}

build() {
    mkdir -p "$BIN"
    RUSTFLAGS="-C target-feature=+crt-static -C target-cpu=x86-64" \
        cargo build --release --locked --quiet --target x86_64-unknown-linux-gnu \
        --target-dir target/static
    # Replaced, not overwritten: a copy may still be running.
    cp target/static/x86_64-unknown-linux-gnu/release/duplex "$BIN/duplex.new"
    strip --strip-all "$BIN/duplex.new"
    mv -f "$BIN/duplex.new" "$BIN/duplex"
    CARGO_TARGET_DIR="$PWD/target/peers-build" ../shared/peers/build.sh "$BIN"
}

if [ -n "${REPORT:-}" ]; then
    # shellcheck disable=SC2086 # a list of files
    summarize $REPORT
    exit 0
fi
if [ -n "${BUILD_ONLY:-}" ] || [ ! -x "$BIN/duplex" ]; then
    build
fi
[ -n "${BUILD_ONLY:-}" ] && exit 0
mkdir -p "$OUT"
# Every server holds CLIENTS connections; some start with a soft limit of 1024.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# The load's cores, as a list, split into LOADERS comma-separated groups.
expand() {
    local part first last
    for part in ${1//,/ }; do
        first=${part%-*} last=${part#*-}
        seq "$first" "$last"
    done
}
mapfile -t load_cpus < <(expand "$LOAD_CPUS")
per_loader=$(( ${#load_cpus[@]} / LOADERS ))
[ "$per_loader" -ge 1 ] || { echo "LOADERS=$LOADERS is more than the ${#load_cpus[@]} load cores" >&2; exit 2; }
groups=()
for ((l = 0; l < LOADERS; l++)); do
    group=$(IFS=,; echo "${load_cpus[*]:$((l * per_loader)):$per_loader}")
    groups+=("$group")
done

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# CPU time of a process so far, in clock ticks.
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

start_server() { # kind cores port -> pid
    local kind=$1 k=$2 port=$3 cpus="0-$(($2 - 1))"
    case $kind in
        # exec: the case runs in a subshell of its own, whose pid is $!.
        duplex) RUST_LOG=warn exec taskset -c "$cpus" "$BIN/duplex" --role server \
                    --addr "127.0.0.1:$port" --threads "$k" --max-clients 100000 ;;
        tokio|epoll) exec taskset -c "$cpus" "$BIN/peer-$kind" "$port" "$k" ;;
        go) GOMAXPROCS=$k exec taskset -c "$cpus" "$BIN/peer-go" "$port" ;;
    esac >"$OUT/server-$kind.log" 2>&1 &
    echo $!
}

wait_listening() { # port
    for _ in $(seq 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listens on port $1" >&2
    return 1
}

# One run: prints "replies_per_s server_us_per_reply bench_us_per_reply errors".
run_one() { # kind cores depth round
    local kind=$1 k=$2 depth=$3 round=$4 port pid before after l
    port=$(free_port)
    pid=$(start_server "$kind" "$k" "$port")
    if ! wait_listening "$port"; then
        kill "$pid" 2>/dev/null || true
        echo "0 0 0 1"
        return
    fi
    before=$(cpu_ticks "$pid")
    local jsons=()
    for ((l = 0; l < LOADERS; l++)); do
        local json="$OUT/$kind-k$k-d$depth-r$round-l$l.json"
        jsons+=("$json")
        taskset -c "${groups[$l]}" "$BIN/duplex" --role bench --addr "127.0.0.1:$port" \
            --clients $((CLIENTS / LOADERS)) --depth "$depth" --size "$SIZE" \
            --duration "$DURATION" --threads "$per_loader" --json >"$json" 2>/dev/null &
    done
    wait_loaders
    after=$(cpu_ticks "$pid")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    python3 - "$before" "$after" "$(getconf CLK_TCK)" "${jsons[@]}" <<'EOF'
import json, sys
before, after, hz = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
runs = []
for path in sys.argv[4:]:
    try:
        runs.append(json.load(open(path)))
    except (OSError, ValueError):
        runs.append({"rate": 0, "replies": 0, "errors": 1})
rate = sum(r.get("rate") or 0 for r in runs)
replies = sum(r.get("replies") or 0 for r in runs)
errors = sum(r.get("errors") or 0 for r in runs)
bench = [r.get("bench_cpu_us_per_reply") for r in runs if r.get("bench_cpu_us_per_reply")]
server_us = (after - before) / hz * 1e6 / replies if replies else 0
print(f"{rate:.0f} {server_us:.2f} {sum(bench) / len(bench) if bench else 0:.2f} {errors}")
EOF
}

wait_loaders() {
    local job
    for job in $(jobs -p); do
        # The server is a job too: wait only for the loaders.
        [ "$job" = "$pid" ] || wait "$job" || true
    done
}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, Linux $(uname -r)"
echo "servers on cores 0..K-1; load: $LOADERS bench processes on cores $LOAD_CPUS ($per_loader threads each)"
echo "$CLIENTS clients, $SIZE-byte messages, $DURATION per run, $ROUNDS rounds alternating servers"
results="$OUT/results.txt"
: >"$results"
for ((round = 1; round <= ROUNDS; round++)); do
    for k in $CORES; do
        for depth in $DEPTHS; do
            for kind in $SERVERS; do
                [ "$kind" = go ] && [ ! -x "$BIN/peer-go" ] && continue
                line=$(run_one "$kind" "$k" "$depth" "$round")
                echo "$kind $k $depth $round $line" | tee -a "$results" >&2
            done
        done
    done
done
summarize "$results"
