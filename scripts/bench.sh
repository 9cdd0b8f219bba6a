#!/usr/bin/env bash
# Measures duplex against the hand-written reference server (examples/reference_server.rs),
# when node and the seed tutorial are available the original Node.js server, and (peers
# section) the servers in ../shared/peers: tokio, C epoll and, when Go is installed, Go.
# Servers are pinned to CPU 0 (taskset), the load (`duplex --role bench`) to CPU 1.
#
# This machine's speed drifts over minutes (it is a VM), so servers are never
# measured one after the other: they run side by side, and each repetition
# measures every server back to back; each table cell is the median run.
#
#   scripts/bench.sh                  # everything: about 26 minutes
#   DURATION=10s REPEAT=7 scripts/bench.sh  # cost, scaling and snapshot runs: longer, more rounds
#   THROUGHPUT_REPEAT=21 ONLY=throughput scripts/bench.sh  # (and LATENCY_REPEAT, SCALING_REPEAT)
#   ONLY=throughput scripts/bench.sh  # one section: memory|throughput|latency|scaling|snapshot|cost|tls|hold|hostile|syscalls|instructions|peers
#   (cost: CPU per reply at a fixed rate, then throughput unpaced, with all servers at once;
#   in the cost runs, "scraped" is duplex with /metrics scraped every second beside it;
#   syscalls: system calls per reply of each server and each bench, with perf;
#   hold: HOLD_CLIENTS (19 500) connections held idle, then one message each;
#   hostile: clients that send lines and never read, HOSTILE_ROUNDS (3) rounds;
#   peers: duplex beside the peers, each on one thread, for each CLIENTS:SIZE in PEERS_CASES)
#   PEERS_CASES="10:32768 1000:16" PEERS_REPEAT=9 ONLY=peers scripts/bench.sh
#   BASELINE=/path/to/other/duplex ONLY=cost scripts/bench.sh  # also compare another build (cost, syscalls, peers)
#   scripts/pool_rounds.py run1.jsonl run2.jsonl  # pool the throughput rounds of saved runs
#
# Prints the tables docs/performance.md quotes; every run's JSON goes to target/bench/results.jsonl.
# Servers listen on free ports (the Node server on 8000, its only port:
# skipped when another program has it), and every start checks that the
# process it started is the one listening, so it never measures another
# program under a server's name.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
REPEAT=${REPEAT:-5}
COST_RATE=${COST_RATE:-10000} # messages/s offered to each server in the cost section
BASELINE=${BASELINE:-}
SCALING_REPEAT=${SCALING_REPEAT:-3}
# One client's round trip drifts by ±20 % within a minute here, and a run is
# cheap (one connection), so latency gets more, shorter runs.
LATENCY_REPEAT=${LATENCY_REPEAT:-11}
LATENCY_DURATION=${LATENCY_DURATION:-3s}
# Closed-loop throughput drifts by ±20 % over minutes too, so it also gets
# more, shorter rounds, and its table pairs each round's runs.
THROUGHPUT_REPEAT=${THROUGHPUT_REPEAT:-11}
THROUGHPUT_DURATION=${THROUGHPUT_DURATION:-3s}
ONLY=${ONLY:-}
# The hold section: this many clients, under the machine's 20 000 open files
# (the server and the bench each need one per client), connecting from these
# local addresses (from one, the kernel's search for a free port halves the
# connect rate past 10 000 connections; docs/performance.md).
HOLD_CLIENTS=${HOLD_CLIENTS:-19500}
HOLD_SOURCES=${HOLD_SOURCES:-127.0.0.1-127.0.0.8}
# The hostile section's rounds: how many lines the kernel's socket buffers
# take before the server stops reading varies from run to run, so every
# round is reported.
HOSTILE_ROUNDS=${HOSTILE_ROUNDS:-3}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SEED=${SEED:-../shared/seed}
# The peers section: its cases (clients:bytes per message, depth 1), rounds and run length.
PEERS_CASES=${PEERS_CASES:-10:32768 1000:16}
PEERS_REPEAT=${PEERS_REPEAT:-7}
PEERS_DURATION=${PEERS_DURATION:-3s}
PEERS_SRC=${PEERS_SRC:-../shared/peers}
PEERS=target/peers
OUT=target/bench
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"

cargo build --release --quiet --bin duplex --example reference_server
BIN=target/release/duplex
REF=target/release/examples/reference_server
ulimit -n "$(ulimit -Hn)" # 10 000 connections on each side

# port_owner PORT [PID]: who listens on TCP port PORT (any local address,
# IPv4 or IPv6), found by socket inode in /proc/net/tcp* and /proc/*/fd:
# `ours` if process PID holds every listener there, `free` if there is
# none, else the other PIDs (`unknown` for processes this user cannot see).
port_owner() {
    python3 - "$1" "${2:-}" <<'PY'
import glob, os, sys
port, pid = int(sys.argv[1]), sys.argv[2]
inodes = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        rows = open(table).read().splitlines()[1:]
    except OSError:
        continue
    for row in rows:
        fields = row.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
            inodes.add("socket:[%s]" % fields[9])
def held(fds):
    found = set()
    for fd in glob.glob(fds):
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link in inodes:
            found.add((fd.split("/")[2], link))
    return found
if not inodes:
    print("free")
elif pid and {link for _, link in held("/proc/%s/fd/*" % pid)} == inodes:
    print("ours")  # every listener (SO_REUSEPORT allows several) is PID's
else:
    others = {owner for owner, _ in held("/proc/[0-9]*/fd/*")} - {pid}
    print(" ".join(sorted(others)) or "unknown")
PY
}

# The original Node server, extracted from the tutorial at run time (never
# committed). It listens on 8000, always: skipped if another program has it.
NODE_DIR=""
NODE_PORT=8000
node_port_owner=""
if command -v node >/dev/null && ls "$SEED"/*.txt >/dev/null 2>&1; then
    node_port_owner=$(port_owner "$NODE_PORT")
    [ "$node_port_owner" = free ] ||
        echo "skipping the Node server: port $NODE_PORT, its only port, is taken (pid $node_port_owner)" >&2
fi
if [ "$node_port_owner" = free ]; then
    NODE_DIR=$(mktemp -d)
    python3 - "$SEED" "$NODE_DIR" <<'PY'
import glob, re, sys
text = open(sorted(glob.glob(sys.argv[1] + "/*.txt"))[0], encoding="utf-8").read()
blocks = re.findall(r"```js\n(.*?)```", text, re.S)
server = next(b for b in blocks if "createServer" in b)
open(sys.argv[2] + "/server.mjs", "w").write(server)
PY
fi

declare -A PID PORT
stop_all() {
    for name in "${!PID[@]}"; do
        kill -TERM "${PID[$name]}" 2>/dev/null || true
        wait "${PID[$name]}" 2>/dev/null || true
        unset "PID[$name]"
    done
}
cleanup() {
    stop_all
    [ -z "$NODE_DIR" ] || rm -rf "$NODE_DIR"
}
trap cleanup EXIT

# wait_for_port PORT PID: waits until process PID itself listens on PORT;
# fails, saying who has the port, if PID exits first or takes too long.
wait_for_port() {
    local port=$1 pid=$2 owner
    for _ in $(seq 600); do
        owner=$(port_owner "$port" "$pid")
        [ "$owner" != ours ] || return 0
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "process $pid is not listening on port $port (listening there: $owner)" >&2
    return 1
}

# listening_port LOG PID: the port process PID says in LOG that it listens
# on (duplex: `listening addr=127.0.0.1:N`; the reference server:
# `listening on 127.0.0.1:N`).
listening_port() {
    local log=$1 pid=$2 port
    for _ in $(seq 600); do
        port=$(sed -nE 's/.*listening (addr=|on )127\.0\.0\.1:([0-9]+).*/\2/p' "$log" | head -n 1)
        if [ -n "$port" ]; then
            echo "$port"
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    echo "process $pid logged no listening address (its log: $log)" >&2
    return 1
}

# free_port: a TCP port free on 127.0.0.1 now, for a server that cannot be
# told to pick its own (the peers); start then checks who listens there.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start NAME PORT KIND [duplex server flags...]: KIND is duplex, baseline, reference, node,
# or a peer (tokio, epoll, go: built into $PEERS), which runs on one thread.
# duplex and the reference listen on a port the kernel picks, read from
# their log; a peer on a port free a moment before; node on NODE_PORT, or
# not at all if another program took it meanwhile (PORT is not used). Then
# checks that the process started is the one listening, and sets PORT[NAME].
start() {
    local name=$1 kind=$3 port=""
    shift 3
    : > "$OUT/$name.log" # never read the log of an earlier server of this name
    case $kind in
        node) port=$NODE_PORT ;;
        tokio|epoll|go) port=$(free_port) ;;
    esac
    case $kind in
        baseline) RUST_LOG=info taskset -c "$SERVER_CPU" "$BASELINE" --role server --addr 127.0.0.1:0 "$@" \
                    2>"$OUT/$name.log" & ;;
        duplex) RUST_LOG=info taskset -c "$SERVER_CPU" "$BIN" --role server --addr 127.0.0.1:0 "$@" \
                    2>"$OUT/$name.log" & ;;
        reference) taskset -c "$SERVER_CPU" "$REF" 127.0.0.1:0 2>"$OUT/$name.log" & ;;
        node) (cd "$NODE_DIR" && exec taskset -c "$SERVER_CPU" node server.mjs) >/dev/null 2>"$OUT/$name.log" & ;;
        tokio|epoll) taskset -c "$SERVER_CPU" "$PEERS/peer-$kind" "$port" 1 >/dev/null 2>"$OUT/$name.log" & ;;
        go) GOMAXPROCS=1 taskset -c "$SERVER_CPU" "$PEERS/peer-go" "$port" >/dev/null 2>"$OUT/$name.log" & ;;
    esac
    PID[$name]=$!
    [ -n "$port" ] || port=$(listening_port "$OUT/$name.log" "${PID[$name]}") || exit 1
    if ! wait_for_port "$port" "${PID[$name]}"; then
        [ "$kind" = node ] || exit 1
        echo "skipping the Node server ($name): it could not listen on port $port" >&2
        kill -TERM "${PID[$name]}" 2>/dev/null || true
        wait "${PID[$name]}" 2>/dev/null || true
        unset "PID[$name]"
        return 0
    fi
    PORT[$name]=$port
}

# start_compared PORT: duplex on PORT, the reference on PORT+1 and, with
# BASELINE, that build on PORT+2; sets `names` to the servers it started
start_compared() {
    names="duplex reference"
    start duplex "$1" duplex --registry-interval 0
    start reference $(($1 + 1)) reference
    if [ -n "$BASELINE" ]; then
        start baseline $(($1 + 2)) baseline --registry-interval 0
        names+=" baseline"
    fi
}

# bench SECTION NAME [bench flags...]: one run against server NAME
bench() {
    local section=$1 name=$2
    shift 2
    if [ -z "${PID[$name]:-}" ]; then
        echo "  $section $name: skipped (not running)" >&2
        return 0
    fi
    local json
    json=$(taskset -c "$LOAD_CPU" "$BIN" --role bench --addr "127.0.0.1:${PORT[$name]}" --json \
        --server-pid "${PID[$name]}" "$@" 2>/dev/null || true)
    [ -n "$json" ] || json='{"errors": -1, "rate": 0}'
    echo "{\"section\": \"$section\", \"server\": \"$name\", \"round\": ${ROUND:-0}, \"result\": $json}" >> "$RESULTS"
    echo "  $section $name $*: $(echo "$json" | python3 -c '
import json, sys
r = json.load(sys.stdin)
cpu = "/".join("%.0f" % c for c in r.get("cpu_busy_pct", []))
print("%.0f/s p50 %.0f us p99 %.0f us, server %.2f us CPU per reply, bench %.2f, CPUs busy %s%%, errors %s" % (r.get("rate", 0), r.get("p50_us", 0), r.get("p99_us", 0), r.get("server_cpu_us_per_reply") or 0, r.get("bench_cpu_us_per_reply") or 0, cpu, r.get("errors")))')" >&2
}

# interleave SECTION RUNS "NAME..." [bench flags...]: RUNS rounds, each server once per round
interleave() {
    local section=$1 runs=$2 names=$3
    shift 3
    for ROUND in $(seq "$runs"); do
        for name in $names; do
            bench "$section" "$name" "$@"
        done
    done
    unset ROUND
}

# together SECTION "NAME..." [bench flags...]: one run against every server at once
together() {
    local section=$1 names=$2
    shift 2
    local pids=()
    for name in $names; do
        bench "$section" "$name" "$@" &
        pids+=($!)
    done
    wait "${pids[@]}"
}

want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

all="duplex reference"
[ -z "$NODE_DIR" ] || all+=" node"

if want memory; then
    # A fresh server each, so "before" is a server that has never had a client.
    # RSS is read with every client greeted and idle, then once each has sent
    # one message and had its reply (still connected).
    for kind in $all; do
        start "$kind" 8110 "$kind" --registry-interval 0
        bench memory "$kind" --clients 10000 --once --duration 20s
        stop_all
    done
fi

if want throughput || want latency || want scaling; then
    start duplex 8100 duplex --registry-interval 0
    start reference 8101 reference
    [ -z "$NODE_DIR" ] || start node 8000 node
    if want throughput; then
        for clients in 50 500; do
            interleave throughput "$THROUGHPUT_REPEAT" "$all" --clients "$clients" --depth 1 --size 16 --duration "$THROUGHPUT_DURATION"
        done
    fi
    if want latency; then
        interleave latency "$LATENCY_REPEAT" "duplex reference" --clients 1 --depth 1 --size 16 --duration "$LATENCY_DURATION"
    fi
    if want scaling; then
        for clients in 1 10 100 1000 10000; do
            interleave scaling-clients "$SCALING_REPEAT" "duplex reference" --clients "$clients" --depth 1 --size 16 --duration "$DURATION"
        done
        for size in 16 1024 65536; do
            interleave scaling-size "$SCALING_REPEAT" "duplex reference" --clients 50 --depth 1 --size "$size" --duration "$DURATION"
        done
    fi
    stop_all
fi

if want snapshot; then
    # 10 000 busy clients, against one server that never logs a snapshot and one
    # that logs its 10 001-line snapshot (to a file) every second: a SIGUSR1
    # a second, as the periodic snapshot is its summary line alone.
    start quiet 8102 duplex --registry-interval 0
    start snapshotting 8103 duplex --registry-interval 0
    (while kill -USR1 "${PID[snapshotting]}" 2>/dev/null; do sleep 1; done) &
    SIGNALLER=$!
    interleave snapshot "$SCALING_REPEAT" "quiet snapshotting" --clients 10000 --depth 1 --size 16 --duration "$DURATION"
    kill "$SIGNALLER" 2>/dev/null || true
    wait "$SIGNALLER" 2>/dev/null || true
    echo "  snapshots logged by the snapshotting server: $(grep -c 'registry snapshot' "$OUT/snapshotting.log" || true)" >&2
    stop_all
fi

if want cost; then
    # What a reply costs each server's core, measured with every server
    # running at once on CPU 0, each loaded by its own bench on CPU 1 at the
    # same fixed rate: whatever the machine does during a round (this VM's
    # speed drifts), it does to all of them. Each round's ratio pairs them.
    # `scraped` is duplex again, with its admin interface scraped every
    # second (curl, on the load's CPU), as Prometheus would, beside the
    # unscraped one: what scraping costs the message path.
    start_compared 8130
    start scraped 8133 duplex --registry-interval 0 --admin-addr 127.0.0.1:0
    admin=""
    for _ in $(seq 100); do
        admin=$(sed -nE 's/.*admin listening addr=([^ ]+).*/\1/p' "$OUT/scraped.log" | head -n 1)
        [ -z "$admin" ] || break
        sleep 0.05
    done
    [ -n "$admin" ] || { echo "the scraped server logged no admin address" >&2; exit 1; }
    (while kill -0 "${PID[scraped]}" 2>/dev/null; do
        taskset -c "$LOAD_CPU" curl -s -o /dev/null "http://$admin/metrics" || true
        sleep 1
    done) &
    scraper=$!
    for clients in 50 500; do
        for ROUND in $(seq "$REPEAT"); do
            together cost "$names scraped" --clients "$clients" --depth 1 --size 16 --rate "$COST_RATE" \
                --connect-rate 5000 --duration "$DURATION"
        done
        # The same, unpaced: every server saturated at once, so each gets
        # about an even share of the core and its replies/s shows what it
        # makes of that share.
        for ROUND in $(seq "$REPEAT"); do
            together side "$names" --clients "$clients" --depth 1 --size 16 \
                --connect-rate 5000 --duration "$DURATION"
        done
    done
    unset ROUND
    kill "$scraper" 2>/dev/null || true
    stop_all
fi

if want tls; then
    # TLS beside plain TCP, both duplex, in the same rounds. The certificates
    # are made now, with openssl, and deleted afterwards (no key is committed).
    TLS_DIR=$(mktemp -d)
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign \
        -keyout "$TLS_DIR/ca.key" -out "$TLS_DIR/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
        -keyout "$TLS_DIR/server.key" -out "$TLS_DIR/server.csr" 2>/dev/null
    openssl x509 -req -in "$TLS_DIR/server.csr" -CA "$TLS_DIR/ca.pem" -CAkey "$TLS_DIR/ca.key" \
        -CAcreateserial -days 2 -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1') \
        -out "$TLS_DIR/server.pem" 2>/dev/null
    tls_server=(--tls-cert "$TLS_DIR/server.pem" --tls-key "$TLS_DIR/server.key")
    tls_bench=(--tls-ca "$TLS_DIR/ca.pem")
    start plain 8140 duplex --registry-interval 0
    start tls 8141 duplex --registry-interval 0 "${tls_server[@]}"
    for clients in 50 500; do
        for ROUND in $(seq "$THROUGHPUT_REPEAT"); do
            flags=(--clients "$clients" --depth 1 --size 16 --duration "$THROUGHPUT_DURATION")
            bench tls-throughput plain "${flags[@]}"
            bench tls-throughput tls "${flags[@]}" "${tls_bench[@]}"
        done
    done
    # Handshakes: connections opened as fast as they go (the connect rate
    # far above what a core can do), each a full handshake; held idle.
    for ROUND in $(seq "$REPEAT"); do
        bench tls-connect plain --clients 2000 --depth 0 --duration 200ms --connect-rate 1000000
        bench tls-connect tls --clients 2000 --depth 0 --duration 200ms --connect-rate 1000000 "${tls_bench[@]}"
    done
    unset ROUND
    stop_all
    # Memory per idle TLS client: a fresh server, 10 000 clients that have
    # finished their handshakes and been greeted, then sit idle.
    start tls 8142 duplex --registry-interval 0 "${tls_server[@]}"
    bench tls-memory tls --clients 10000 --depth 0 --duration 2s "${tls_bench[@]}"
    stop_all
    rm -rf "$TLS_DIR"
fi

if want hold; then
    # Hold HOLD_CLIENTS connections idle (a fresh server), then every one
    # sends exactly one message (--once): is every reply still there?
    sources=()
    [ -z "$HOLD_SOURCES" ] || sources=(--source-addrs "$HOLD_SOURCES")
    start hold 8160 duplex --registry-interval 0 --max-clients "$HOLD_CLIENTS"
    bench hold hold --clients "$HOLD_CLIENTS" --once --duration 30s "${sources[@]}"
    stop_all
fi

if want hostile; then
    # Clients that send lines and never read (scripts/hostile_readers.py),
    # on a fresh server each: a few long lines each (the kernel's buffers take
    # the replies), then enough that the server stops reading them because
    # their replies cannot be written, then a million empty lines each from
    # 200 clients (26 bytes of reply per byte read); the server's RSS with
    # them and after. --max-line is the line size (the default for empty lines).
    for round in $(seq 1 "$HOSTILE_ROUNDS"); do
        for case in "65536 8 1000" "65536 64 1000" "16384 256 1000" "0 1000000 200"; do
            read -r size lines clients <<<"$case"
            max_line=$((size > 0 ? size : 65536))
            start hostile 8170 duplex --registry-interval 0 --max-line "$max_line"
            json=$(python3 scripts/hostile_readers.py --port "${PORT[hostile]}" --server-pid "${PID[hostile]}" \
                --clients "$clients" --size "$size" --lines "$lines")
            echo "{\"section\": \"hostile\", \"server\": \"duplex\", \"round\": $round, \"result\": $json}" >> "$RESULTS"
            echo "  hostile round $round, --max-line $max_line, $clients clients, $lines lines each: $json" >&2
            stop_all
        done
    done
fi

if want peers; then
    # duplex beside what its users would otherwise run, every server on one
    # thread on SERVER_CPU, interleaved rounds; the table pairs each round's runs.
    bash "$PEERS_SRC/build.sh" "$PEERS" >/dev/null
    start duplex 8180 duplex --registry-interval 0
    start tokio 8181 tokio
    start epoll 8182 epoll
    peers="duplex tokio epoll"
    if command -v go >/dev/null && [ -x "$PEERS/peer-go" ]; then
        start go 8183 go
        peers+=" go"
    fi
    if [ -n "$BASELINE" ]; then
        start baseline 8184 baseline --registry-interval 0
        peers+=" baseline"
    fi
    for case in $PEERS_CASES; do
        IFS=: read -r clients size <<<"$case"
        interleave peers "$PEERS_REPEAT" "$peers" --clients "$clients" --depth 1 --size "$size" --duration "$PEERS_DURATION"
    done
    stop_all
fi

if want syscalls && perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then
    # System calls per reply, counted by the kernel (perf's tracepoints) over
    # 3 s in the middle of a fixed-rate run: every server at once on CPU 0,
    # each loaded by its own bench on CPU 1, as in the cost section, and each
    # bench process counted too. At depth 1 a reply is one sendto, so every
    # count is divided by the sendto count.
    start_compared 8140
    events=task-clock,context-switches,raw_syscalls:sys_enter,syscalls:sys_enter_recvfrom,syscalls:sys_enter_sendto,syscalls:sys_enter_epoll_ctl,syscalls:sys_enter_epoll_pwait
    for clients in 50 500; do
        declare -A LOAD=()
        for name in $names; do
            taskset -c "$LOAD_CPU" "$BIN" --role bench --addr "127.0.0.1:${PORT[$name]}" --clients "$clients" \
                --depth 1 --size 16 --rate "$COST_RATE" --connect-rate 5000 --duration 6s >/dev/null 2>&1 &
            LOAD[$name]=$!
        done
        sleep 2 # connected and warmed up
        counters=()
        for name in $names; do
            perf stat -x, -e "$events" -p "${PID[$name]}" -- sleep 3 2>"$OUT/perf.$name.server.csv" &
            counters+=($!)
            perf stat -x, -e "$events" -p "${LOAD[$name]}" -- sleep 3 2>"$OUT/perf.$name.bench.csv" &
            counters+=($!)
        done
        wait "${counters[@]}" "${LOAD[@]}"
        for name in $names; do
            for side in server bench; do
                python3 - "$OUT/perf.$name.$side.csv" "$name" "$side" "$clients" >> "$RESULTS" <<'PY'
import json, sys
counts = {}
for line in open(sys.argv[1]):
    fields = line.strip().split(",")
    if len(fields) > 3 and fields[0].replace(".", "", 1).isdigit():
        event = fields[2].split(":")[-1]
        counts["syscalls" if event == "sys_enter" else event.replace("sys_enter_", "")] = float(fields[0])
print(json.dumps({"section": "syscalls", "server": sys.argv[2], "side": sys.argv[3],
                  "result": {"clients": int(sys.argv[4]), "counts": counts}}))
PY
            done
        done
        echo "  syscalls $clients clients: counted" >&2
    done
    stop_all
fi

if want instructions && command -v valgrind >/dev/null; then
    # User-space instructions per reply, counted by callgrind: unlike replies/s,
    # this does not drift with the machine. Counters are zeroed after a warm-up
    # and dumped after a 5 s load, so start-up is not counted.
    for kind in duplex reference; do
        rm -f "$OUT/callgrind.$kind".*
        case $kind in
            duplex) server=("$BIN" --role server --addr 127.0.0.1:0 --registry-interval 0) ;;
            reference) server=("$REF" 127.0.0.1:0) ;;
        esac
        : > "$OUT/$kind.log"
        RUST_LOG=info valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.$kind.%p" "${server[@]}" \
            2>"$OUT/$kind.log" &
        PID[$kind]=$!
        PORT[$kind]=$(listening_port "$OUT/$kind.log" "${PID[$kind]}") || exit 1
        wait_for_port "${PORT[$kind]}" "${PID[$kind]}" || exit 1
        "$BIN" --role bench --addr "127.0.0.1:${PORT[$kind]}" --clients 50 --duration 1s >/dev/null 2>&1 || true
        callgrind_control -z "${PID[$kind]}" >/dev/null
        json=$("$BIN" --role bench --addr "127.0.0.1:${PORT[$kind]}" --clients 50 --depth 1 --size 16 --duration 5s --json 2>/dev/null || true)
        callgrind_control -d "${PID[$kind]}" >/dev/null
        stop_all
        instructions=$(awk '/^summary:/ {print $2}' "$OUT/callgrind.$kind".*.1)
        echo "{\"section\": \"instructions\", \"server\": \"$kind\", \"result\": ${json:-{\}}, \"instructions\": $instructions}" >> "$RESULTS"
        echo "  instructions $kind: $instructions for $(echo "${json:-{\}}" | python3 -c 'import json, sys; print(json.load(sys.stdin).get("replies"))') replies" >&2
    done
fi

python3 - "$RESULTS" "$SERVER_CPU" "$LOAD_CPU" <<'PY'
import json, os, platform, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
server_cpu, load_cpu = int(sys.argv[2]), int(sys.argv[3])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"machine: {cpu}, {os.cpu_count()} cores, Linux {platform.release()}; servers on CPU {server_cpu}, load on CPU {load_cpu}")

def median_run(section, server, **match):
    """The run with the median rate among matching runs, with all rates attached."""
    found = [r["result"] for r in runs if r["section"] == section and r["server"] == server
             and all(r["result"].get(k) == v for k, v in match.items())]
    if not found:
        return None
    found.sort(key=lambda r: r.get("rate", 0))
    median = dict(found[len(found) // 2])
    median["rates"] = [round(r.get("rate", 0)) for r in found]
    median["errors_all"] = sum(max(r.get("errors", 0), 0) for r in found) if all(r.get("errors", 0) >= 0 for r in found) else "failed run"
    return median

def table(title, header, lines):
    if not lines:
        return
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for line in lines:
        print("| " + " | ".join(str(x) for x in line) + " |")

def us(x):
    return f"{x:.0f}"

def rates(r):
    return " ".join(f"{x / 1000:.0f}k" for x in r["rates"])

def busy(r):
    cpus = r.get("cpu_busy_pct") or []
    if len(cpus) <= max(server_cpu, load_cpu):
        return "-"
    return f"{cpus[server_cpu]:.0f}% / {cpus[load_cpu]:.0f}%"

def paired_rounds(section, clients):
    """{round: {server: result}} for a section whose servers ran at once."""
    rounds = {}
    for r in runs:
        if r["section"] == section and r["result"].get("clients") == clients:
            rounds.setdefault(r["round"], {})[r["server"]] = r["result"]
    return rounds

def side_table(clients):
    """Per round, every server's replies/s; ratios against the reference."""
    rounds = paired_rounds("side", clients)
    lines = []
    for name in ("duplex", "reference", "baseline"):
        found = [by[name] for by in rounds.values() if name in by]
        if not found:
            continue
        ratios = sorted(by[name]["rate"] / by["reference"]["rate"] for by in rounds.values()
                        if name in by and by.get("reference", {}).get("rate"))
        cpu = [r["server_cpu_us_per_reply"] for r in found if r.get("server_cpu_us_per_reply")]
        lines.append((clients, name, f"{statistics.median(r['rate'] for r in found):.0f}",
                      f"{statistics.median(ratios):.2f}x" if ratios else "-",
                      " ".join(f"{x:.2f}" for x in ratios),
                      f"{statistics.median(cpu):.2f}" if cpu else "-", bench_cpu(found),
                      sum(r.get("errors", 0) for r in found)))
    return lines

def cost_table(clients):
    """Per round, every server's CPU per reply; ratios against duplex."""
    rounds = paired_rounds("cost", clients)
    names = [n for n in ("duplex", "scraped", "reference", "baseline") if any(n in by for by in rounds.values())]
    lines = []
    for name in names:
        found = [by[name] for by in rounds.values() if name in by]
        costs = [r.get("server_cpu_us_per_reply") or 0 for r in found]
        ratios = sorted(by[name]["server_cpu_us_per_reply"] / by["duplex"]["server_cpu_us_per_reply"]
                        for by in rounds.values()
                        if name in by and "duplex" in by and by[name].get("server_cpu_us_per_reply") and by["duplex"].get("server_cpu_us_per_reply"))
        offered = found[0].get("offered_rate") or 0
        kept_up = min(r.get("rate", 0) for r in found) / offered if offered else 0
        errors = sum(r.get("errors", 0) for r in found)
        lines.append((clients, name, f"{statistics.median(costs):.2f}", bench_cpu(found),
                      f"{statistics.median(ratios):.2f}x" if ratios else "-",
                      " ".join(f"{x:.2f}" for x in ratios), f"{offered:.0f}", f"{kept_up:.1%}", errors))
    return lines

def bench_cpu(found):
    """The median of the benches' own CPU per reply (each bench loaded one server)."""
    cpu = [r["bench_cpu_us_per_reply"] for r in found if r.get("bench_cpu_us_per_reply")]
    return f"{statistics.median(cpu):.2f}" if cpu else "-"

lines = []
for clients in (50, 500):
    ref = median_run("throughput", "reference", clients=clients)
    for server in ("duplex", "reference", "node"):
        r = median_run("throughput", server, clients=clients)
        if r:
            ratio = f"{r['rate'] / ref['rate']:.2f}x" if ref and ref["rate"] else "-"
            cpu = r.get("server_cpu_us_per_reply")
            rounds = [by[server]["rate"] / by["reference"]["rate"] for by in paired_rounds("throughput", clients).values()
                      if by.get(server, {}).get("rate") and by.get("reference", {}).get("rate")]
            paired = f"{statistics.median(rounds):.2f}x, {sum(x > 1 for x in rounds)} of {len(rounds)}" if rounds else "-"
            lines.append((clients, server, f"{r['rate']:.0f}", ratio, paired, us(r["p50_us"]), us(r["p99_us"]), busy(r), f"{cpu:.1f}" if cpu else "-", r["errors_all"], rates(r)))
table("Throughput, depth 1, 16-byte messages (median of interleaved runs)",
      ["clients", "server", "replies/s", "vs reference", "each round vs the reference run beside it: median, rounds above 1", "p50 us", "p99 us", "server/load CPU busy", "server us CPU per reply", "errors (all runs)", "every run, replies/s"], lines)

lines = []
for clients in (50, 500):
    rounds = paired_rounds("tls-throughput", clients)
    ratios = sorted(by["tls"]["rate"] / by["plain"]["rate"] for by in rounds.values()
                    if by.get("tls", {}).get("rate") and by.get("plain", {}).get("rate"))
    for server in ("plain", "tls"):
        r = median_run("tls-throughput", server, clients=clients)
        if r:
            cpu = r.get("server_cpu_us_per_reply")
            paired = f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})" if server == "tls" and ratios else "-"
            lines.append((clients, server, f"{r['rate']:.0f}", paired, us(r["p50_us"]), us(r["p99_us"]), busy(r), f"{cpu:.1f}" if cpu else "-", r["errors_all"], rates(r)))
table("TLS beside plain TCP: duplex, depth 1, 16-byte messages (median of interleaved runs)",
      ["clients", "connection", "replies/s", "TLS vs plain, each round paired: median (range)", "p50 us", "p99 us", "server/load CPU busy", "server us CPU per reply", "errors (all runs)", "every run, replies/s"], lines)

lines = []
for server in ("plain", "tls"):
    found = sorted((r["result"] for r in runs if r["section"] == "tls-connect" and r["server"] == server),
                   key=lambda r: r.get("connects_per_second", 0))
    if found:
        r = found[len(found) // 2]
        cpu = [x["server_cpu_us_per_connect"] for x in found if x.get("server_cpu_us_per_connect")]
        per_core = f"{1e6 / statistics.median(cpu):.0f}" if cpu else "-"
        lines.append((server, r["connected"], f"{r['connects_per_second']:.0f}",
                      f"{statistics.median(cpu):.0f}" if cpu else "-", per_core,
                      " ".join(f"{x.get('connects_per_second', 0):.0f}" for x in found), sum(max(x.get("errors", 0), 0) for x in found)))
table("Connections opened as fast as they go: with TLS, each a full handshake (median run; per core = 1 s / server CPU per connect)",
      ["connection", "connected", "per second, as opened", "server us CPU per connect", "per server core second", "every run, per second", "errors (all runs)"], lines)

lines = []
for r in (run["result"] for run in runs if run["section"] == "tls-memory"):
    if r.get("server_rss_before_kib") is not None:
        grown = (r["server_rss_connected_kib"] - r["server_rss_before_kib"]) * 1024
        lines.append(("tls", r["connected"], r["server_rss_before_kib"], r["server_rss_connected_kib"], f"{grown / max(r['connected'], 1):.0f}"))
table("Memory per idle TLS client (server RSS, fresh server)",
      ["connection", "clients", "RSS before KiB", "RSS connected KiB", "bytes per client"], lines)

lines = cost_table(50) + cost_table(500)
table("Server CPU time per reply at a fixed offered load, all servers at once on one core (median of rounds)",
      ["clients", "server", "us CPU per reply", "its bench's us CPU per reply", "vs duplex (median of rounds)", "every round, vs duplex", "offered/s each", "lowest rate reached", "errors (all rounds)"], lines)

table("Throughput side by side: all servers saturated at once on one core, each by its own bench (median of rounds)",
      ["clients", "server", "replies/s", "vs reference (median of rounds)", "every round, vs reference", "us CPU per reply", "its bench's us CPU per reply", "errors (all rounds)"],
      side_table(50) + side_table(500))

lines = []
for row in runs:
    if row["section"] == "syscalls":
        c = row["result"]["counts"]
        replies = c.get("sendto") or 0
        if replies:
            per = lambda key: f"{c.get(key, 0) / replies:.2f}"
            process = row["server"] if row["side"] == "server" else f"bench loading {row['server']}"
            lines.append((row["result"]["clients"], process, per("syscalls"), per("recvfrom"), per("sendto"),
                          per("epoll_ctl"), per("epoll_pwait"), per("context-switches"),
                          f"{c.get('task-clock', 0) * 1000 / replies:.2f}"))
table(f"System calls per reply at a fixed offered load, all servers at once on one core, each bench on the other (perf stat, 3 s)",
      ["clients", "process", "system calls", "recvfrom", "sendto", "epoll_ctl", "epoll_pwait", "context switches", "us CPU"], lines)

lines = []
for server in ("duplex", "reference"):
    found = sorted((r["result"] for r in runs if r["section"] == "latency" and r["server"] == server), key=lambda r: r["p50_us"])
    if found:
        p50 = statistics.median(r["p50_us"] for r in found)
        p99 = statistics.median(r["p99_us"] for r in found)
        lines.append((server, us(p50), us(p99), " ".join(us(r["p50_us"]) for r in found), sum(r["errors"] for r in found)))
table("Latency, 1 client, depth 1 (median of interleaved runs)",
      ["server", "p50 us", "p99 us", "every run's p50, us", "errors (all runs)"], lines)

def scaling_table(section, key, values, title, first_column):
    """duplex against the reference, one row per value of `key`."""
    lines = []
    for value in values:
        d, ref = median_run(section, "duplex", **{key: value}), median_run(section, "reference", **{key: value})
        if d and ref:
            lines.append((value, f"{d['rate']:.0f}", us(d["p99_us"]), f"{ref['rate']:.0f}", us(ref["p99_us"]), f"{d['rate'] / ref['rate']:.2f}x", f"{d['errors_all']}/{ref['errors_all']}"))
    table(title, [first_column, "duplex replies/s", "duplex p99 us", "reference replies/s", "reference p99 us", "duplex vs reference", "errors duplex/reference"], lines)

scaling_table("scaling-clients", "clients", (1, 10, 100, 1000, 10000),
              "Cost by clients, depth 1, 16-byte messages (median of interleaved runs)", "clients")
scaling_table("scaling-size", "size", (16, 1024, 65536),
              "Cost by message size, 50 clients, depth 1 (median of interleaved runs)", "bytes")

lines = []
for server in ("duplex", "reference", "node"):
    r = median_run("memory", server)
    if r and r.get("server_rss_connected_kib"):
        before, after, n = r["server_rss_before_kib"], r["server_rss_connected_kib"], r["connected"]
        end = r.get("server_rss_end_kib") or after
        per = lambda kib: f"{(kib - before) * 1024 / max(n, 1):.0f}"
        lines.append((server, n, before, after, per(after), end, per(end), r["replies"], r["errors_all"]))
table("Memory, 10 000 idle clients: all greeted, then after one message each (fresh server each)",
      ["server", "connected", "RSS before KiB", "RSS greeted KiB", "bytes per client greeted",
       "RSS after one message each KiB", "bytes per client after", "replies", "errors"], lines)

lines = []
cases = sorted({(r["result"].get("clients"), r["result"].get("size")) for r in runs if r["section"] == "peers"})
for clients, size in cases:
    rounds = {}
    for r in runs:
        if r["section"] == "peers" and (r["result"].get("clients"), r["result"].get("size")) == (clients, size):
            rounds.setdefault(r["round"], {})[r["server"]] = r["result"]
    for name in ("duplex", "tokio", "epoll", "go", "baseline"):
        found = [by[name] for by in rounds.values() if name in by]
        if not found:
            continue
        ratios = [by["duplex"]["rate"] / by[name]["rate"] for by in rounds.values()
                  if by.get(name, {}).get("rate") and by.get("duplex", {}).get("rate")]
        cpu = [r["server_cpu_us_per_reply"] for r in found if r.get("server_cpu_us_per_reply")]
        lines.append((clients, size, name, f"{statistics.median(r['rate'] for r in found):.0f}",
                      f"{statistics.median(cpu):.2f}" if cpu else "-",
                      "-" if name == "duplex" or not ratios else f"{statistics.median(ratios):.2f}x",
                      "-" if name == "duplex" else " ".join(f"{x:.2f}" for x in ratios),
                      sum(r.get("errors", 0) for r in found)))
table("duplex beside the peers (../shared/peers), each server on one thread, depth 1 (median of interleaved rounds)",
      ["clients", "bytes", "server", "replies/s", "server us CPU per reply", "duplex vs it (median of rounds)",
       "every round, duplex vs it", "errors (all rounds)"], lines)

lines = []
for row in runs:
    if row["section"] == "instructions" and row["result"].get("replies"):
        r = row["result"]
        lines.append((row["server"], row["instructions"], r["replies"], f"{row['instructions'] / r['replies']:.0f}", r["errors"]))
table("User-space instructions per reply (callgrind), 50 clients, depth 1, 16-byte messages",
      ["server", "instructions", "replies", "instructions per reply", "errors"], lines)

lines = []
for server, label in (("quiet", "no snapshots"), ("snapshotting", "a 10 001-line snapshot every 1 s")):
    r = median_run("snapshot", server)
    if r:
        lines.append((label, f"{r['rate']:.0f}", us(r["p50_us"]), us(r["p99_us"]), us(r["p999_us"]), r["errors_all"], rates(r)))
table("Registry snapshots with 10 000 busy clients, depth 1 (median of interleaved runs)",
      ["duplex", "replies/s", "p50 us", "p99 us", "p99.9 us", "errors (all runs)", "every run, replies/s"], lines)

lines = []
for r in (run["result"] for run in runs if run["section"] == "hostile"):
    grew = lambda kib: f"{(kib - r['rss_before_kib']) / 1024:.1f}"
    tcp = r.get("tcp_mem_before_kib"), r.get("tcp_mem_stuck_kib")
    tcp = f"{(tcp[1] - tcp[0]) / 1024:.0f}" if None not in tcp else "-"
    lines.append((r["clients"], r["size"], r["lines"], r["clients_the_server_stopped_reading"], r["rss_before_kib"],
                  grew(r["rss_stuck_kib"]), f"{r['bytes_per_client']:.0f}", grew(r["rss_after_kib"]), tcp))
table("Clients that send lines and never read (--max-line = line size, 64 KiB for empty lines; fresh server each)",
      ["clients", "line bytes", "lines each", "clients the server stopped reading", "RSS before KiB",
       "MiB above it, with them", "bytes per client", "MiB above it, after they left",
       "kernel TCP MiB with them (both ends)"], lines)

lines = []
for r in (run["result"] for run in runs if run["section"] == "hold"):
    rss = r.get("server_rss_before_kib"), r.get("server_rss_connected_kib"), r.get("server_rss_end_kib")
    per = lambda kib: f"{(kib - rss[0]) * 1024 / max(r['connected'], 1):.0f}" if None not in (rss[0], kib) else "-"
    sources = len(r.get("source_addrs") or {}) or 1
    lines.append((r.get("clients"), sources, r.get("connected"), f"{r.get('connects_per_second', 0):.0f}", r.get("replies"),
                  r.get("errors"), per(rss[1]), per(rss[2]), us(r.get("p50_us", 0)), us(r.get("max_us", 0)),
                  f"{r.get('bench_cpu_us_per_reply') or 0:.2f}"))
table("Holding clients idle, then one message each (--once; a fresh server)",
      ["clients", "source addresses", "connected", "connects/s", "replies", "errors",
       "server RSS bytes per client greeted", "bytes per client after", "p50 us", "max us", "bench us CPU per reply"], lines)
PY
