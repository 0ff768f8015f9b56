#!/usr/bin/env bash
# Socket shim benchmark: what `shimgate run -- CMD` costs against a SOCKS5
# client on the same path, and what UDP through the shim does.
#
# The shim leaves loopback destinations alone, so this runs on four network
# namespaces (needs root), like tests/e2e/harness/hosts.rs:
#
#   dev    198.51.100.2 --veth-- 198.51.100.1  gw  203.0.113.1 --veth-- 203.0.113.2  intra
#   shimgate up, clients        shimgate-gateway (no forwarding)          HTTP origin :8080
#   sslocal (127.0.0.1)         ssserver (198.51.100.1)                   UDP echo :5353
#   192.0.2.1                   192.0.2.17
#     | veth: the LAN            | veth (bob's route to 198.51.100.1)
#   192.0.2.2        bob        192.0.2.18
#   a second device: shimgate up, a UDP echo on 127.0.0.1:5353 exported as 5353/udp
#
# The device namespace has no route to the intranet: whatever reaches it went
# through `shimgate up` and the gateway. Like tests/e2e/peer.rs's three hosts,
# the device ("alice") and bob share a LAN, so their peer session goes direct.
#
#  1. Connection setup: N sequential HTTP requests from the device namespace,
#     alternating  (a) shimgate run -- curl URL
#                  (b) curl --socks5-hostname 127.0.0.1:1080 URL
#     time to first byte (curl's time_starttransfer: includes the tunnel
#     setup in both), and the wall time of the whole command (for (a) also
#     shimgate run's own start and exec). Context: plain curl from the
#     gateway namespace (no VPN).
#  2. UDP: a Python client under `shimgate run` in the device namespace
#     against a UDP echo in the intranet: sequential round trips (64 B), then
#     datagrams/s and loss with a window of datagrams in flight (64 B and
#     1200 B). Baseline: the same client, directly from the gateway namespace.
#  3. UDP against shadowsocks-rust: one Rust client (sgbench udp-rtt and
#     udp-flood), the same figures, through SOCKS5 UDP ASSOCIATE to
#     (a) shimgate up's SOCKS port and (b) sslocal in the device namespace,
#     whose ssserver (aes-256-gcm, tcp_and_udp) runs in the gateway namespace
#     where shimgate-gateway runs; context: the same client directly from the
#     gateway namespace. Ratios (a)/(b) against the targets. shadowsocks-rust
#     is taken from $SS_ROOT/bin (default ~/.cache/shimgate-bench/
#     shadowsocks-rust), installed there with cargo install when missing;
#     if that fails, that path is skipped. Also the peer path: the same
#     client through the device's SOCKS port to bob's UDP echo (`shimgate
#     export 5353/udp` on bob, a gateway rule allowing it), addressed by
#     bob's VPN IP (sgbench sends IPv4 targets only; the proxy treats it as
#     bob.vpn.internal), over the alice-bob LAN ("peer (direct)"), then with
#     that LAN blocked in the device namespace (a prohibit route), through
#     the gateway's relay ("peer (relayed)"). Each column is labelled with
#     the paths bob logged for its sessions ("peer session open ... path=").
#
# usage: sudo bash tests/bench/shim.sh [--samples N] [--skip-build] ...
# Exit status: 0 when everything was measured (whether or not the targets
# are met; also when shadowsocks-rust could not be installed and its path was
# skipped), 1 when something could not be run (the shadowsocks or peer path
# failing: after the other figures are printed), 2 for a usage error.
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
ROOT="$(cd "$(dirname "$SELF")/../.." && pwd)"

usage() {
    sed -n '2,52p' "$SELF" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
options:
  --samples N      sequential curl runs per variant (default 300)
  --udp-rtt N      sequential UDP round trips per client and path (default 2000)
  --udp-secs S     seconds per UDP throughput run (default 3)
  --inflight N     UDP datagrams in flight in the throughput runs (default 64)
  --skip-build     use the binaries already in target/release (incl. sgbench)
  --keep-logs DIR  copy the logs and raw samples to DIR before cleaning up
environment:
  SS_ROOT          where shadowsocks-rust is (bin/sslocal, bin/ssserver) or gets installed
                   (default ${XDG_CACHE_HOME:-$HOME/.cache}/shimgate-bench/shadowsocks-rust)
EOF
}

# ------------------------------------------------------------ the curl loop
# Runs inside a namespace (`ip netns exec NS bash shim.sh __curl_loop ...`),
# so that what is timed is the command itself, not `ip netns exec`.
# Arguments: samples, warm-up runs, output dir, then variant names. Each
# sample runs every variant once; the order flips every sample so drift and
# any "second one is warmer" effect hit all variants alike. Appends
# "http_code time_connect time_starttransfer wall_us" per run to DIR/NAME.txt
# (a run that printed nothing has no code: counted as failed). curl writes
# its figures straight to the file: no command substitution (a fork of this
# shell) inside the timed span. Uses SG, CDIR, CURL, URL, SOCKS from the
# environment.
curl_variant() {
    local fmt='%{http_code} %{time_connect} %{time_starttransfer} '
    case "$1" in
        shim) "$SG" --config-dir "$CDIR" run -- "$CURL" -so /dev/null -w "$fmt" "$URL" ;;
        socks) "$CURL" --socks5-hostname "$SOCKS" -so /dev/null -w "$fmt" "$URL" ;;
        direct) "$CURL" -so /dev/null -w "$fmt" "$URL" ;;
    esac
}

curl_loop() {
    local samples="$1" warmup="$2" dir="$3" i v t0 t1
    shift 3
    local variants=("$@") order
    for ((i = 0; i < warmup; i++)); do
        for v in "${variants[@]}"; do curl_variant "$v" >/dev/null 2>&1 || true; done
    done
    for ((i = 0; i < samples; i++)); do
        order=("${variants[@]}")
        if ((i % 2)); then
            # reversed
            order=()
            for v in "${variants[@]}"; do order=("$v" "${order[@]}"); done
        fi
        for v in "${order[@]}"; do
            # $EPOCHREALTIME: no fork for the clock; "s.uuuuuu" -> µs.
            t0=${EPOCHREALTIME/./}
            curl_variant "$v" >>"$dir/$v.txt" 2>/dev/null || true
            t1=${EPOCHREALTIME/./}
            echo "$((t1 - t0))" >>"$dir/$v.txt"
        done
    done
}

if [[ "${1:-}" == __curl_loop ]]; then
    shift
    curl_loop "$@"
    exit 0
fi

# ------------------------------------------------------------ arguments
SAMPLES=300
UDP_RTT=2000
UDP_SECS=3
INFLIGHT=64
SKIP_BUILD=0
KEEP_LOGS=""
while (($#)); do
    case "$1" in
        --samples | --udp-rtt | --udp-secs | --inflight | --keep-logs)
            (($# >= 2)) || { echo "shim.sh: $1 needs a value" >&2; exit 2; } ;;
    esac
    case "$1" in
        --samples) SAMPLES="$2"; shift 2 ;;
        --udp-rtt) UDP_RTT="$2"; shift 2 ;;
        --udp-secs) UDP_SECS="$2"; shift 2 ;;
        --inflight) INFLIGHT="$2"; shift 2 ;;
        --skip-build) SKIP_BUILD=1; shift ;;
        --keep-logs) KEEP_LOGS="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "shim.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
for n in "$SAMPLES" "$UDP_RTT" "$UDP_SECS" "$INFLIGHT"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "shim.sh: $n is not a positive integer" >&2; exit 2; }
done
if [[ -n "$KEEP_LOGS" && "$KEEP_LOGS" != /* ]]; then KEEP_LOGS="$PWD/$KEEP_LOGS"; fi
[[ "$(id -u)" == 0 ]] || { echo "shim.sh: needs root (network namespaces)" >&2; exit 1; }
for tool in ip curl; do
    command -v "$tool" >/dev/null || { echo "shim.sh: needs $tool" >&2; exit 1; }
done
# One interpreter for every side, a real ELF file (a pyenv shim script in
# PATH would make `shimgate run` start bash first).
PYTHON=/usr/bin/python3
[[ -x "$PYTHON" ]] || { echo "shim.sh: needs $PYTHON" >&2; exit 1; }
cd "$ROOT"

log() { echo "== $*" >&2; }
# stop_pids, finish_run, start_bg, show_log, fail, gw, new_code, nocolor
# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"

# Only the directories and proxies this script names.
unset DATABASE_URL SHIMGATE_HOME SHIMGATE_GATEWAY_DIR LD_PRELOAD
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY all_proxy ALL_PROXY no_proxy NO_PROXY

# ------------------------------------------------------------ cleanup
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sgshim.XXXXXX")"
PIDS=()
FG_PID=""
KEEP_PATTERNS="*.log *.txt setup/*.txt"
DEV_NS="sgb-dev-$$"
GW_NS="sgb-gw-$$"
INTRA_NS="sgb-intra-$$"
BOB_NS="sgb-bob-$$"
MADE_NS=()

# besides what finish_run does: kill what is left in our namespaces (a
# namespace with a process in it outlives `ip netns del`), then delete them.
# shellcheck disable=SC2317 # called by finish_run (tests/bench/lib.sh)
cleanup_extra() {
    local ns pid
    for ns in "${MADE_NS[@]}"; do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
}
on_exit_finish_run

# ------------------------------------------------------------ build
# The whole workspace: the binaries, the preload library and sgbench.
release_binaries --workspace shimgate shimgate-gateway libshimgate_preload.so sgbench
SG="$BIN/shimgate"
CURL="$(command -v curl)"

find_shadowsocks
if [[ -n "$SS_SKIP" ]]; then
    echo "shim.sh: shadowsocks-rust not available ($SS_SKIP): skipping the shadowsocks-rust UDP path" >&2
fi

# A build or test elsewhere on the machine skews every figure; say so.
NOTES=()
busy_note() {
    local others
    others="$(ps -eo comm= | grep -cxE 'cargo|rustc|cc1|ld|cargo-nextest' || true)"
    if ((others > 0)); then
        NOTES+=("warning: $others cargo/rustc/compiler processes were running $1; the figures are skewed")
    fi
}
busy_note "before the measurements"

# ------------------------------------------------------------ namespaces
DEV_IP=198.51.100.2
GW_DEV_IP=198.51.100.1
GW_INTRA_IP=203.0.113.1
INTRA_IP=203.0.113.2
# bob: 192.0.2.0/28 the LAN with the device, 192.0.2.16/28 the link to the gateway
DEV_LAN_IP=192.0.2.1
BOB_LAN_IP=192.0.2.2
GW_BOB_IP=192.0.2.17
BOB_IP=192.0.2.18
GW_PORT=8443
SOCKS=127.0.0.1:1080
HTTP_PORT=8080
ECHO_PORT=5353

new_ns() {
    ip netns add "$1"
    MADE_NS+=("$1")
    ip -n "$1" link set lo up
}

# A veth pair made directly inside the two namespaces, so nothing is ever
# left in ours. Interface names: at most 15 bytes.
veth() {
    local a="$1" a_addr="$2" b="$3" b_addr="$4" ia="$5" ib="$6"
    ip link add "$ia" netns "$a" type veth peer name "$ib" netns "$b"
    ip -n "$a" addr add "$a_addr" dev "$ia"
    ip -n "$b" addr add "$b_addr" dev "$ib"
    ip -n "$a" link set "$ia" up
    ip -n "$b" link set "$ib" up
}

make_hosts() {
    new_ns "$DEV_NS"
    new_ns "$GW_NS"
    new_ns "$INTRA_NS"
    new_ns "$BOB_NS"
    veth "$DEV_NS" "$DEV_IP/24" "$GW_NS" "$GW_DEV_IP/24" "sgbd$$" "sgbg$$"
    veth "$GW_NS" "$GW_INTRA_IP/24" "$INTRA_NS" "$INTRA_IP/24" "sgbh$$" "sgbi$$"
    veth "$GW_NS" "$GW_BOB_IP/28" "$BOB_NS" "$BOB_IP/28" "sgbj$$" "sgbk$$"
    veth "$DEV_NS" "$DEV_LAN_IP/28" "$BOB_NS" "$BOB_LAN_IP/28" "sgbl$$" "sgbm$$"
    # bob dials the gateway where the device does (its TLS name and the
    # address in bob's config); the gateway host delivers that locally.
    ip -n "$BOB_NS" route add "$GW_DEV_IP/32" via "$GW_BOB_IP"
    # Neither the gateway host nor bob routes: the device reaches the
    # intranet only through the gateway process.
    ip netns exec "$GW_NS" sysctl -qw net.ipv4.ip_forward=0
    ip netns exec "$BOB_NS" sysctl -qw net.ipv4.ip_forward=0
}

# Waits (up to 30 s) until LOG matches PATTERN, failing early if PID exited.
wait_line() {
    local tag="$1" pattern="$2" pid="$3" i
    for ((i = 0; i < 300; i++)); do
        # (the log appears once the background shell has opened it)
        if [[ -f "$WORK/$tag.log" ]] && nocolor <"$WORK/$tag.log" | grep -q -- "$pattern"; then return 0; fi
        kill -0 "$pid" 2>/dev/null || { fail "$tag exited" "$tag"; return 1; }
        sleep 0.1
    done
    fail "$tag did not log \"$pattern\" within 30 s" "$tag"
    return 1
}

# ------------------------------------------------------------ servers
# The HTTP origin: one thread, accept, read the request head, answer a tiny
# fixed response, close. Cheaper per request than http.server or a forking
# server, so the origin adds as little as possible to the time to first byte.
cat >"$WORK/origin.py" <<'EOF'
import socket, sys
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(256)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.settimeout(5)
    try:
        buf = b""
        while b"\r\n\r\n" not in buf:
            d = c.recv(4096)
            if not d:
                break
            buf += d
        c.sendall(RESP)
    except OSError:
        pass
    c.close()
EOF

# The UDP echo: sends every datagram back to where it came from.
cat >"$WORK/echo.py" <<'EOF'
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, src = s.recvfrom(65536)
    s.sendto(data, src)
EOF

# The UDP client, the same program on both paths (unconnected socket,
# sendto/recvfrom, as most UDP programs do). Every datagram starts with its
# 8-byte sequence number; an answer that is not the one awaited (late, or
# from another address) is not counted as an answer.
#   rtt HOST PORT COUNT SIZE: COUNT sequential round trips after 20 warm-up
#     ones (the first of which includes the shim's relay setup: reported).
#     Prints: first_us answered lost p50_us p99_us mean_us
#   flood HOST PORT SECS SIZE INFLIGHT: keeps INFLIGHT datagrams outstanding
#     for SECS (after 0.5 s of warm-up); one unanswered for 0.5 s is lost.
#     Prints: sent answered lost late answered_per_s
cat >"$WORK/udp_client.py" <<'EOF'
import math, socket, sys, time
mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
dest = (host, port)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
now = time.perf_counter

def packet(seq, size):
    return seq.to_bytes(8, "big") + bytes(size - 8)

def rank(sorted_xs, p):
    return sorted_xs[max(0, math.ceil(p / 100 * len(sorted_xs)) - 1)]

def round_trip(seq, size):
    """Seconds for one answered datagram, or None when lost (1 s)."""
    s.settimeout(1)
    t0 = now()
    s.sendto(packet(seq, size), dest)
    while True:
        try:
            data, src = s.recvfrom(65536)
        except socket.timeout:
            return None
        if src == dest and int.from_bytes(data[:8], "big") == seq:
            return now() - t0

if mode == "rtt":
    count, size = int(sys.argv[4]), int(sys.argv[5])
    first = round_trip(0, size)
    for i in range(1, 20):
        round_trip(i, size)
    times = [round_trip(20 + i, size) for i in range(count)]
    ok = sorted(t for t in times if t is not None)
    us = lambda t: "%.0f" % (t * 1e6) if t is not None else "nan"
    print(us(first), len(ok), count - len(ok),
          us(rank(ok, 50)) if ok else "nan", us(rank(ok, 99)) if ok else "nan",
          us(sum(ok) / len(ok)) if ok else "nan")
elif mode == "flood":
    secs, size, inflight = float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    s.settimeout(0.05)
    out = {}  # seq -> time sent, for the datagrams not yet answered
    seq = sent = lost = late = per_sec = 0
    start = now()
    measure_from = start + 0.5
    end = measure_from + secs
    next_expiry = start + 0.1
    while True:
        t = now()
        if t < end:
            while len(out) < inflight:
                s.sendto(packet(seq, size), dest)
                out[seq] = t
                sent += t >= measure_from
                seq += 1
        elif not out or t > end + 1:
            break
        if t >= next_expiry:
            # Unanswered for 0.5 s: lost, and its place in the window freed.
            next_expiry = t + 0.1
            for k in [k for k, ts in out.items() if t - ts > 0.5]:
                lost += out.pop(k) >= measure_from
        try:
            data, src = s.recvfrom(65536)
        except socket.timeout:
            continue
        got = now()
        ts = out.pop(int.from_bytes(data[:8], "big"), None) if src == dest else None
        if ts is None:
            late += 1
        elif measure_from <= got <= end:
            per_sec += 1
    lost += sum(ts >= measure_from for ts in out.values())
    # sent in the window, of them answered, lost, late answers, answers/s
    print(sent, sent - lost, lost, late, "%.0f" % (per_sec / secs))
EOF

start_origins() {
    start_bg origin ip netns exec "$INTRA_NS" "$PYTHON" -u "$WORK/origin.py" "$INTRA_IP" "$HTTP_PORT"
    wait_line origin ready "$BG_PID" || return 1
    start_bg echo ip netns exec "$INTRA_NS" "$PYTHON" -u "$WORK/echo.py" "$INTRA_IP" "$ECHO_PORT"
    wait_line echo ready "$BG_PID" || return 1
}

# The gateway in the gateway namespace, listening on its device side; the
# intranet allowed for the origin's TCP port and the echo's UDP port.
# Admin commands run outside the namespace: they only need the data dir.
start_gateway_ns() {
    GW_DIR="$WORK/gateway"
    gw init --name gw.shimgate.test --ip "$GW_DEV_IP" --listen "$GW_DEV_IP:$GW_PORT" \
        --public-addr "$GW_DEV_IP:$GW_PORT" >"$WORK/gateway-init.log" 2>&1 ||
        { fail "shimgate-gateway init failed" gateway-init; return 1; }
    {
        gw policy add allow --to 203.0.113.0/24 --ports "$HTTP_PORT" &&
            gw policy add allow --to 203.0.113.0/24 --proto udp --ports "$ECHO_PORT" &&
            gw policy add allow --to bob.vpn.internal --proto udp --ports "$ECHO_PORT"
    } >"$WORK/gateway-policy.log" 2>&1 || { fail "shimgate-gateway policy add failed" gateway-policy; return 1; }
    start_bg gateway ip netns exec "$GW_NS" "$BIN/shimgate-gateway" --data-dir "$GW_DIR" serve --console off
    GW_PID=$BG_PID
    wait_line gateway "gateway listening" "$GW_PID"
}

# Waits until `shimgate status` for config dir DIR, run in namespace NS,
# exits 0; PID: its `shimgate up`, logging to TAG.log.
wait_status() {
    local ns="$1" dir="$2" pid="$3" tag="$4" i
    for ((i = 0; i < 300; i++)); do
        if ip netns exec "$ns" "$SG" --config-dir "$dir" status >/dev/null 2>&1; then return 0; fi
        kill -0 "$pid" 2>/dev/null || { fail "shimgate up ($tag) exited" "$tag" gateway; return 1; }
        sleep 0.1
    done
    fail "shimgate status ($tag) did not exit 0 within 30 s" "$tag" gateway
    return 1
}

# Enrolls a device in the device namespace and starts `shimgate up` there;
# waits until `shimgate status` (run there too) exits 0.
start_device_ns() {
    local code
    CDIR="$WORK/device"
    code="$(new_code)" || return 1
    ip netns exec "$DEV_NS" "$SG" --config-dir "$CDIR" enroll "$code" --name bench-shim \
        >"$WORK/enroll.log" 2>&1 || { fail "shimgate enroll failed" enroll gateway; return 1; }
    start_bg device ip netns exec "$DEV_NS" "$SG" --config-dir "$CDIR" up --listen "$SOCKS"
    DEV_PID=$BG_PID
    wait_status "$DEV_NS" "$CDIR" "$DEV_PID" device
}

# bob, the second device, in its namespace: a UDP echo on its loopback,
# enrolled as "bob", exporting the echo as ECHO_PORT/udp, `shimgate up`;
# waits until bob is online for peer sessions, and sets PEER_TARGET to bob's
# VPN IP and the echo's port. (Not `shimgate ping bob`: the policy allows
# only the UDP port, and a ping is refused.) On failure sets PEER_SKIP and
# returns 1.
start_bob_ns() {
    local code out
    BOB_DIR="$WORK/bob"
    PEER_TARGET=""
    start_bg bob-echo ip netns exec "$BOB_NS" "$PYTHON" -u "$WORK/echo.py" 127.0.0.1 "$ECHO_PORT"
    wait_line bob-echo ready "$BG_PID" || { PEER_SKIP="bob's UDP echo did not start"; return 1; }
    code="$(new_code)" || { PEER_SKIP="no enrollment code for bob"; return 1; }
    ip netns exec "$BOB_NS" "$SG" --config-dir "$BOB_DIR" enroll "$code" --name bob \
        >"$WORK/bob-enroll.log" 2>&1 || { PEER_SKIP="shimgate enroll (bob) failed"; show_log bob-enroll gateway; return 1; }
    ip netns exec "$BOB_NS" "$SG" --config-dir "$BOB_DIR" export "$ECHO_PORT/udp" \
        >"$WORK/bob-export.log" 2>&1 || { PEER_SKIP="shimgate export $ECHO_PORT/udp (bob) failed"; show_log bob-export; return 1; }
    start_bg bob ip netns exec "$BOB_NS" "$SG" --config-dir "$BOB_DIR" up --listen "$SOCKS"
    BOB_PID=$BG_PID
    wait_status "$BOB_NS" "$BOB_DIR" "$BOB_PID" bob || { PEER_SKIP="$FAIL_MSG"; return 1; }
    out="$(ip netns exec "$BOB_NS" "$SG" --config-dir "$BOB_DIR" status --json 2>/dev/null |
        "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["vpn_ip"])' 2>&1)" ||
        { PEER_SKIP="no vpn_ip in bob's shimgate status --json: $out"; return 1; }
    [[ "$out" =~ ^[0-9]+(\.[0-9]+){3}$ ]] || { PEER_SKIP="bob's vpn_ip is not an IPv4 address: $out"; return 1; }
    BOB_VPN_IP="$out"
    wait_line bob "online for peer sessions exports=$ECHO_PORT/udp" "$BOB_PID" ||
        { PEER_SKIP="$FAIL_MSG"; return 1; }
    PEER_TARGET="$BOB_VPN_IP:$ECHO_PORT"
}

# The paths of bob's peer sessions to the echo (the lines "peer session open
# ... port=ECHO_PORT path=P" of bob.log after its first SKIP lines): the
# distinct ones, joined by "+" ("none" when there was none).
bob_paths() {
    local skip="$1" paths
    paths="$(nocolor <"$WORK/bob.log" | tail -n "+$((skip + 1))" | grep -- "peer session open" |
        grep -- "port=$ECHO_PORT " | grep -o 'path=[a-z]*' | cut -d= -f2 | sort -u | paste -sd+)" || true
    echo "${paths:-none}"
}
bob_lines() { wc -l <"$WORK/bob.log"; }

# shadowsocks-rust laid out like shimgate: ssserver in the gateway namespace
# on the gateway's device-side address (where shimgate-gateway listens),
# sslocal in the device namespace as a SOCKS5 server with UDP on loopback;
# both on ports free in their namespace, one AEAD cipher, a fresh password.
# Sets SS_SOCKS; on failure sets SS_SKIP and returns 1.
start_shadowsocks() {
    local server_port local_port password
    SS_SOCKS=""
    if ! read -r server_port < <(ip netns exec "$GW_NS" "$SGBENCH" ports 1) ||
        ! read -r local_port < <(ip netns exec "$DEV_NS" "$SGBENCH" ports 1); then
        SS_SKIP="no free ports for it"
        return 1
    fi
    password="$(head -c 24 /dev/urandom | base64)"
    start_bg ssserver ip netns exec "$GW_NS" "$SS_BIN/ssserver" -U -m aes-256-gcm -k "$password" \
        -s "$GW_DEV_IP:$server_port"
    ip netns exec "$GW_NS" "$SGBENCH" wait-port "$GW_DEV_IP:$server_port" --pid "$BG_PID" --timeout-secs 30 ||
        { SS_SKIP="ssserver did not start"; show_log ssserver; return 1; }
    start_bg sslocal ip netns exec "$DEV_NS" "$SS_BIN/sslocal" -U -m aes-256-gcm -k "$password" \
        -s "$GW_DEV_IP:$server_port" -b "127.0.0.1:$local_port"
    ip netns exec "$DEV_NS" "$SGBENCH" wait-port "127.0.0.1:$local_port" --pid "$BG_PID" --timeout-secs 30 ||
        { SS_SKIP="sslocal did not start"; show_log sslocal; return 1; }
    SS_SOCKS="127.0.0.1:$local_port"
}

# The Rust UDP client (sgbench udp-rtt / udp-flood) on one path:
#   socks-sg  device namespace, through shimgate up's SOCKS port
#   socks-ss  device namespace, through sslocal
#   peer-d, peer-r  device namespace, through shimgate up's SOCKS port to
#             bob's echo at bob's VPN IP (a peer session: direct; relayed
#             once the LAN is blocked)
#   direct    gateway namespace, straight to the echo
sgb_udp() {
    local side="$1" mode="$2" ns="$DEV_NS" via=() target="$INTRA_IP:$ECHO_PORT"
    shift 2
    case "$side" in
        socks-sg) via=(--socks "$SOCKS") ;;
        socks-ss) via=(--socks "$SS_SOCKS") ;;
        peer-d | peer-r) via=(--socks "$SOCKS"); target="$PEER_TARGET" ;;
        direct) ns="$GW_NS" ;;
    esac
    ip netns exec "$ns" "$SGBENCH" "udp-$mode" --target "$target" "${via[@]}" "$@"
}

# A few round trips must be answered (the device namespace has no route of
# its own to the echo, so an answer went through the proxy).
check_udp_socks() {
    local side="$1" out answered
    out="$(sgb_udp "$side" rtt --count 5 2>&1)" || { echo "$out"; return 1; }
    read -r _ answered _ <<<"$out"
    [[ "$answered" =~ ^[1-9] ]] || { echo "no answer in 25 round trips: $out"; return 1; }
}

# Proves the setup before measuring: each variant fetches the page, and the
# device namespace cannot reach the intranet on its own.
check_paths() {
    local v out
    for v in shim socks; do
        out="$(ip netns exec "$DEV_NS" env SG="$SG" CDIR="$CDIR" CURL="$CURL" URL="$URL" SOCKS="$SOCKS" \
            bash "$SELF" __curl_loop 1 0 "$WORK/check" "$v" 2>&1; cat "$WORK/check/$v.txt" 2>/dev/null)" || true
        [[ "$out" == 200\ * ]] || { fail "curl ($v) from the device namespace did not get 200: $out" device gateway; return 1; }
    done
    if ip netns exec "$DEV_NS" "$CURL" -s -m 2 -o /dev/null "$URL"; then
        fail "the device namespace reaches the intranet without the VPN: the measurement would be meaningless"
        return 1
    fi
}

# ------------------------------------------------------------ figures
# Nearest-rank percentile P of column COL of FILE (rows with code 200 only),
# times SCALE, rounded.
pct() {
    local file="$1" col="$2" p="$3" scale="${4:-1}"
    awk -v c="$col" '$1 == 200 { print $c }' "$file" | sort -g |
        awk -v p="$p" -v s="$scale" '{ v[NR] = $1 } END {
            if (NR == 0) { print "nan"; exit }
            r = int(p / 100 * NR); if (r < p / 100 * NR) r++; if (r < 1) r = 1
            printf "%.0f\n", v[r] * s }'
}
failed_runs() { awk '$1 != 200' "$1" | wc -l; }
# A / B with two decimals ("n/a" if either is missing).
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else printf "n/a" }'; }

run_udp() {
    # $1: namespace, then client arguments. Under `shimgate run` when $1 is the device's.
    local ns="$1"
    shift
    if [[ "$ns" == "$DEV_NS" ]]; then
        ip netns exec "$ns" "$SG" --config-dir "$CDIR" run -- "$PYTHON" "$WORK/udp_client.py" "$@"
    else
        ip netns exec "$ns" "$PYTHON" "$WORK/udp_client.py" "$@"
    fi
}

# ------------------------------------------------------------ run
log "namespaces $DEV_NS, $GW_NS, $INTRA_NS, $BOB_NS"
make_hosts
start_origins || exit 1
start_gateway_ns || exit 1
start_device_ns || exit 1
URL="http://$INTRA_IP:$HTTP_PORT/"
mkdir -p "$WORK/check" "$WORK/setup"
check_paths || exit 1
out="$(check_udp_socks socks-sg)" ||
    { fail "UDP through shimgate's SOCKS port (UDP ASSOCIATE) failed: $out" device gateway; exit 1; }
# The shadowsocks path failing once installed is a failure (exit 1 at the
# end), but the other figures are still measured and printed.
SS_SOCKS=""
SS_FAILED=0
ss_failed() {
    SS_SKIP="$1"
    SS_SOCKS=""
    SS_FAILED=1
    fail "$@"
}
if [[ -z "$SS_SKIP" ]]; then
    log "shadowsocks-rust: ssserver in $GW_NS, sslocal in $DEV_NS ($SS_VERSION)"
    if ! start_shadowsocks; then
        ss_failed "$SS_SKIP"
    elif ! out="$(check_udp_socks socks-ss)"; then
        ss_failed "UDP through sslocal and ssserver failed: $out" sslocal ssserver
    fi
fi
# The peer path likewise: its failure is reported (exit 1 at the end), the
# rest is measured. PEER_TARGET empty: not measured (any more).
PEER_TARGET=""
PEER_SKIP=""
PEER_FAILED=0
peer_failed() {
    PEER_SKIP="$1"
    PEER_TARGET=""
    PEER_FAILED=1
    fail "$@"
}
log "peer path: bob in $BOB_NS, exporting its UDP echo 127.0.0.1:$ECHO_PORT as $ECHO_PORT/udp"
if ! start_bob_ns; then
    peer_failed "bob's setup failed: $PEER_SKIP"
elif ! out="$(check_udp_socks peer-d)"; then
    peer_failed "UDP to bob's export through the device's SOCKS port failed: $out" bob device gateway
fi
# The lines of bob's log from here on tell the measured sessions' paths.
BOB_FROM="$(bob_lines 2>/dev/null || echo 0)"

log "connection setup: $SAMPLES x (shimgate run -- curl, curl --socks5-hostname), alternating"
fg_run ip netns exec "$DEV_NS" env SG="$SG" CDIR="$CDIR" CURL="$CURL" URL="$URL" SOCKS="$SOCKS" \
    bash "$SELF" __curl_loop "$SAMPLES" 10 "$WORK/setup" shim socks
log "connection setup: $SAMPLES x curl from the gateway namespace (no VPN)"
fg_run ip netns exec "$GW_NS" env CURL="$CURL" URL="$URL" \
    bash "$SELF" __curl_loop "$SAMPLES" 10 "$WORK/setup" direct

log "UDP: $UDP_RTT sequential round trips, then ${UDP_SECS} s x 64 B and 1200 B with $INFLIGHT in flight"
declare -A UDP=()
for side in shim direct; do
    ns="$DEV_NS"
    [[ "$side" == direct ]] && ns="$GW_NS"
    UDP[$side-rtt]="$(run_udp "$ns" rtt "$INTRA_IP" "$ECHO_PORT" "$UDP_RTT" 64 2>>"$WORK/udp-$side.log")" ||
        { fail "UDP round trips ($side) failed" "udp-$side" device gateway; exit 1; }
    for size in 64 1200; do
        UDP[$side-$size]="$(run_udp "$ns" flood "$INTRA_IP" "$ECHO_PORT" "$UDP_SECS" "$size" "$INFLIGHT" \
            2>>"$WORK/udp-$side.log")" || { fail "UDP flood $size B ($side) failed" "udp-$side" device gateway; exit 1; }
    done
    printf '%s\n' "$side rtt ${UDP[$side-rtt]}" "$side 64 ${UDP[$side-64]}" "$side 1200 ${UDP[$side-1200]}" \
        >>"$WORK/udp.txt"
done

# The same figures with the Rust client through SOCKS5 UDP ASSOCIATE: for
# each figure shimgate's SOCKS port, sslocal and the direct peer path one
# after the other (the order flips from one figure to the next), then the
# direct context run. Then, with the LAN blocked, the relayed peer path.
log "UDP via SOCKS5 UDP ASSOCIATE (sgbench): shimgate up, sslocal, peer (direct), direct;" \
    "$UDP_RTT round trips, then ${UDP_SECS} s x 64 B and 1200 B with $INFLIGHT in flight"
declare -A R=()
# One figure (rtt, 64, 1200) on each of the given sides.
sgb_figure() {
    local fig="$1" side args out
    shift
    if [[ "$fig" == rtt ]]; then
        args=(rtt --count "$UDP_RTT" --size 64)
    else
        args=(flood --secs "$UDP_SECS" --size "$fig" --inflight "$INFLIGHT")
    fi
    for side in "$@"; do
        if [[ "$side" == socks-ss && -z "$SS_SOCKS" ]]; then continue; fi
        if [[ "$side" == peer-? && -z "$PEER_TARGET" ]]; then continue; fi
        if out="$(sgb_udp "$side" "${args[@]}" 2>>"$WORK/sgb-udp-$side.log")"; then
            R[$side-$fig]="$out"
            echo "sgbench $side $fig $out" >>"$WORK/udp.txt"
        elif [[ "$side" == socks-ss ]]; then
            ss_failed "sgbench udp-${args[0]} ($fig) through sslocal failed" sgb-udp-socks-ss sslocal ssserver
        elif [[ "$side" == peer-? ]]; then
            peer_failed "sgbench udp-${args[0]} ($fig, $side) to bob failed" "sgb-udp-$side" bob device
        else
            fail "sgbench udp-${args[0]} ($fig, $side) failed" "sgb-udp-$side" device gateway
            exit 1
        fi
    done
}
n=0
for fig in rtt 64 1200; do
    order=(socks-sg socks-ss peer-d)
    if ((n++ % 2)); then order=(peer-d socks-ss socks-sg); fi
    sgb_figure "$fig" "${order[@]}" direct
done
# The paths bob logged for those sessions (and for the check's).
PEER_D_PATHS=""
PEER_R_PATHS=""
if [[ -n "$PEER_TARGET" ]]; then PEER_D_PATHS="$(bob_paths "$BOB_FROM")"; fi
if [[ -n "$PEER_TARGET" ]]; then
    # As tests/e2e/peer.rs does: the device can no longer reach bob's LAN
    # address, so new sessions go through the gateway's relay.
    log "UDP via SOCKS5 UDP ASSOCIATE (sgbench): peer, relayed (the LAN blocked in $DEV_NS)"
    ip -n "$DEV_NS" route add prohibit "$BOB_LAN_IP/32"
    BOB_FROM="$(bob_lines)"
    if ! out="$(check_udp_socks peer-r)"; then
        peer_failed "UDP to bob's export with the LAN blocked failed: $out" bob device gateway
    else
        for fig in rtt 64 1200; do sgb_figure "$fig" peer-r; done
        PEER_R_PATHS="$(bob_paths "$BOB_FROM")"
    fi
fi
busy_note "during the measurements"

# ------------------------------------------------------------ report
S="$WORK/setup"
declare -A F=()
for v in shim socks direct; do
    F[$v-ttfb50]="$(pct "$S/$v.txt" 3 50 1e6)"
    F[$v-ttfb99]="$(pct "$S/$v.txt" 3 99 1e6)"
    F[$v-conn50]="$(pct "$S/$v.txt" 2 50 1e6)"
    F[$v-wall50]="$(pct "$S/$v.txt" 4 50)"
    F[$v-wall99]="$(pct "$S/$v.txt" 4 99)"
    F[$v-failed]="$(failed_runs "$S/$v.txt")"
done
TTFB_RATIO="$(ratio "${F[shim-ttfb50]}" "${F[socks-ttfb50]}")"
VERDICT=MISS
if awk -v r="$TTFB_RATIO" 'BEGIN { exit !(r ~ /^[0-9.]+$/ && r <= 1.2) }'; then VERDICT=PASS; fi

echo
echo "Connection setup: $SAMPLES sequential HTTP GETs per variant to $URL (µs, nearest-rank)"
printf '%-42s %9s %9s %12s %9s %9s %6s\n' variant "ttfb p50" "ttfb p99" "connect p50" "wall p50" "wall p99" failed
row() {
    printf '%-42s %9s %9s %12s %9s %9s %6s\n' "$2" "${F[$1-ttfb50]}" "${F[$1-ttfb99]}" \
        "${F[$1-conn50]}" "${F[$1-wall50]}" "${F[$1-wall99]}" "${F[$1-failed]}"
}
row shim "(a) shimgate run -- curl (device ns)"
row socks "(b) curl --socks5-hostname (device ns)"
row direct "curl, gateway ns -> intranet (no VPN)"
echo "ratio (a)/(b): ttfb p50 $TTFB_RATIO, ttfb p99 $(ratio "${F[shim-ttfb99]}" "${F[socks-ttfb99]}"), wall p50 $(ratio "${F[shim-wall50]}" "${F[socks-wall50]}")"
echo "target: shimgate run curl setup p50 <= 1.2 x curl --socks5-hostname (time to first byte): $TTFB_RATIO -> $VERDICT"
echo "(ttfb = curl's time_starttransfer, the tunnel setup included in both; connect = time_connect, which for"
echo " (a) is the whole tunnel setup (connect() completes when the far end answered) and for (b) only the"
echo " loopback connect to the SOCKS port; wall = the whole command, for (a) with shimgate run's own start)"

echo
echo "UDP to the echo at $INTRA_IP:$ECHO_PORT, one Python client (µs; datagrams/s answered)"
read -r s_first s_ok s_lost s_p50 s_p99 _ <<<"${UDP[shim-rtt]}"
read -r d_first d_ok d_lost d_p50 d_p99 _ <<<"${UDP[direct-rtt]}"
printf '%-44s %16s %20s %7s\n' "" "shimgate run" "direct (gateway ns)" ratio
printf '%-44s %16s %20s %7s\n' "first datagram's round trip (shim: + relay)" "$s_first" "$d_first" "$(ratio "$s_first" "$d_first")"
printf '%-44s %16s %20s %7s\n' "round trip p50 (64 B, $UDP_RTT sequential)" "$s_p50" "$d_p50" "$(ratio "$s_p50" "$d_p50")"
printf '%-44s %16s %20s %7s\n' "round trip p99" "$s_p99" "$d_p99" "$(ratio "$s_p99" "$d_p99")"
printf '%-44s %16s %20s %7s\n' "  unanswered of $UDP_RTT" "$s_lost" "$d_lost" ""
: "$s_ok" "$d_ok"
loss() { awk -v l="$1" -v s="$2" 'BEGIN { printf "%d (%.2f%%)", l, (s > 0 ? 100 * l / s : 0) }'; }
for size in 64 1200; do
    read -r s_sent s_ans s_lost s_late s_rate <<<"${UDP[shim-$size]}"
    read -r d_sent d_ans d_lost d_late d_rate <<<"${UDP[direct-$size]}"
    printf '%-44s %16s %20s %7s\n' "$size B, $INFLIGHT in flight, ${UDP_SECS} s: datagrams/s" "$s_rate" "$d_rate" "$(ratio "$s_rate" "$d_rate")"
    printf '%-44s %16s %20s %7s\n' "  lost of sent (late answers: $s_late / $d_late)" \
        "$(loss "$s_lost" "$s_sent")" "$(loss "$d_lost" "$d_sent")" ""
    printf '%-44s %16s %20s %7s\n' "  payload Mbit/s each way" \
        "$(awk -v r="$s_rate" -v z="$size" 'BEGIN { printf "%.1f", r * z * 8 / 1e6 }')" \
        "$(awk -v r="$d_rate" -v z="$size" 'BEGIN { printf "%.1f", r * z * 8 / 1e6 }')" ""
    : "$s_ans" "$d_ans"
done

# Field N of the sgbench output for SIDE-FIGURE ("n/a" when not measured).
rf() {
    local v
    v="$(awk -v n="$2" '{ print $n }' <<<"${R[$1]:-}")"
    echo "${v:-n/a}"
}
# Lost as a percentage of sent.
loss_pct() { awk -v l="$1" -v s="$2" 'BEGIN { if (l ~ /^[0-9]+$/ && s ~ /^[0-9]+$/ && s > 0) printf "%.2f", 100 * l / s; else printf "n/a" }'; }
loss_cell() { if [[ "$2" == n/a ]]; then echo n/a; else echo "$1 ($2%)"; fi; }
mbits() { awk -v r="$1" -v z="$2" 'BEGIN { if (r ~ /^[0-9.]+$/) printf "%.1f", r * z * 8 / 1e6; else printf "n/a" }'; }
# PASS when RATIO OP LIMIT holds (OP: le or ge), MISS when not, n/a without a ratio.
verdict() {
    awk -v r="$1" -v op="$2" -v l="$3" 'BEGIN {
        if (r !~ /^[0-9.]+$/) { print "n/a"; exit }
        ok = (op == "le") ? (r <= l) : (r >= l)
        print (ok ? "PASS" : "MISS") }'
}
trow() {
    # label, (a), (b), direct, peer direct, peer relayed, ratio, target
    printf '%-44s %13s %15s %14s %14s %14s %8s  %s\n' "$@"
}
# A peer column's heading: the paths bob logged for its sessions.
peer_head() {
    case "$1" in
        "") echo "peer ($2)" ;;
        *) echo "peer ($1)" ;;
    esac
}
PD_HEAD="$(peer_head "$PEER_D_PATHS" direct)"
PR_HEAD="$(peer_head "$PEER_R_PATHS" relayed)"

echo
echo "UDP through SOCKS5 UDP ASSOCIATE, one Rust client (sgbench udp-rtt/udp-flood) in the device namespace, to the"
echo "echo at $INTRA_IP:$ECHO_PORT (µs; datagrams/s answered):"
echo "  (a) shimgate up's SOCKS port $SOCKS -> the association's UDP channel (AES-256-GCM, opened on TLS 1.3 / HTTP/2) -> shimgate-gateway $GW_DEV_IP:$GW_PORT"
if [[ -n "$SS_VERSION" ]]; then
    echo "  (b) $SS_VERSION: sslocal ${SS_SOCKS:-(failed)} -> aes-256-gcm UDP -> ssserver $GW_DEV_IP (gateway ns)"
fi
echo "  direct: the same client from the gateway namespace, no proxy (context)"
echo "  peer: the same client in the device namespace through (a)'s SOCKS port to bob's VPN IP ${BOB_VPN_IP:-?}"
echo "    (bob.vpn.internal), port $ECHO_PORT: a peer session to bob ($BOB_NS), whose shimgate up hands the"
echo "    datagrams to its UDP echo 127.0.0.1:$ECHO_PORT (exported as $ECHO_PORT/udp); direct over the LAN"
echo "    $DEV_LAN_IP-$BOB_LAN_IP, relayed: the same with that LAN blocked (prohibit route), through the gateway."
echo "    Headed by the paths bob logged for the column's sessions (\"peer session open ... path=\")."
if [[ -n "$SS_SKIP" ]]; then echo "  shadowsocks-rust path skipped: $SS_SKIP"; fi
if [[ -n "$PEER_SKIP" ]]; then echo "  peer path not (fully) measured: $PEER_SKIP"; fi
# label, then the figure's field N for each side: trow_f LABEL N RATIO TARGET
trow_f() {
    trow "$1" "$(rf "socks-sg-$2" "$3")" "$(rf "socks-ss-$2" "$3")" "$(rf "direct-$2" "$3")" \
        "$(rf "peer-d-$2" "$3")" "$(rf "peer-r-$2" "$3")" "$4" "${5:-}"
}
trow "" "(a) shimgate" "(b) shadowsocks" "direct (gw ns)" "$PD_HEAD" "$PR_HEAD" "(a)/(b)" target
trow "UDP ASSOCIATE (TCP connect to reply)" "$(rf socks-sg-rtt 7)" "$(rf socks-ss-rtt 7)" "" \
    "$(rf peer-d-rtt 7)" "$(rf peer-r-rtt 7)" "$(ratio "$(rf socks-sg-rtt 7)" "$(rf socks-ss-rtt 7)")" ""
trow_f "first datagram's round trip" rtt 1 "$(ratio "$(rf socks-sg-rtt 1)" "$(rf socks-ss-rtt 1)")"
RTT_RATIO="$(ratio "$(rf socks-sg-rtt 4)" "$(rf socks-ss-rtt 4)")"
RTT_VERDICT="$(verdict "$RTT_RATIO" le 1.5)"
trow_f "round trip p50 (64 B, $UDP_RTT sequential)" rtt 4 "$RTT_RATIO" "<= 1.5: $RTT_VERDICT"
trow_f "round trip p99" rtt 5 "$(ratio "$(rf socks-sg-rtt 5)" "$(rf socks-ss-rtt 5)")"
trow_f "round trip mean" rtt 6 "$(ratio "$(rf socks-sg-rtt 6)" "$(rf socks-ss-rtt 6)")"
trow_f "  unanswered of $UDP_RTT" rtt 3 "$(ratio "$(rf socks-sg-rtt 3)" "$(rf socks-ss-rtt 3)")"
declare -A RATE_RATIO=() RATE_VERDICT=()
# "lost (pct%)" of SIDE-SIZE
loss_of() { loss_cell "$(rf "$1" 3)" "$(loss_pct "$(rf "$1" 3)" "$(rf "$1" 1)")"; }
for size in 64 1200; do
    a_rate="$(rf "socks-sg-$size" 5)"
    b_rate="$(rf "socks-ss-$size" 5)"
    RATE_RATIO[$size]="$(ratio "$a_rate" "$b_rate")"
    RATE_VERDICT[$size]="$(verdict "${RATE_RATIO[$size]}" ge 1.0)"
    trow_f "$size B, $INFLIGHT in flight, ${UDP_SECS} s: datagrams/s" "$size" 5 \
        "${RATE_RATIO[$size]}" ">= 1.0: ${RATE_VERDICT[$size]}"
    a_loss="$(loss_pct "$(rf "socks-sg-$size" 3)" "$(rf "socks-sg-$size" 1)")"
    b_loss="$(loss_pct "$(rf "socks-ss-$size" 3)" "$(rf "socks-ss-$size" 1)")"
    trow "  lost of sent" "$(loss_of "socks-sg-$size")" "$(loss_of "socks-ss-$size")" "$(loss_of "direct-$size")" \
        "$(loss_of "peer-d-$size")" "$(loss_of "peer-r-$size")" "$(ratio "$a_loss" "$b_loss")" ""
    trow_f "  late answers" "$size" 4 ""
    trow "  payload Mbit/s each way" "$(mbits "$a_rate" "$size")" "$(mbits "$b_rate" "$size")" \
        "$(mbits "$(rf "direct-$size" 5)" "$size")" "$(mbits "$(rf "peer-d-$size" 5)" "$size")" \
        "$(mbits "$(rf "peer-r-$size" 5)" "$size")" "${RATE_RATIO[$size]}" ""
done
echo "(ratio n/a: a figure is missing or the shadowsocks one is 0)"
echo "target: gateway-path UDP round trip p50 <= 1.5 x shadowsocks-rust's: $RTT_RATIO -> $RTT_VERDICT"
echo "target: datagrams/s >= 1.0 x shadowsocks-rust's: 64 B ${RATE_RATIO[64]} -> ${RATE_VERDICT[64]}," \
    "1200 B ${RATE_RATIO[1200]} -> ${RATE_VERDICT[1200]}"

echo
echo "machine: $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for n in "${NOTES[@]}"; do echo "$n"; done
rc=0
if ((SS_FAILED)); then
    echo "shim.sh: the shadowsocks-rust path failed: $SS_SKIP" >&2
    rc=1
fi
if ((PEER_FAILED)); then
    echo "shim.sh: the peer path failed: $PEER_SKIP" >&2
    rc=1
fi
exit "$rc"
