#!/usr/bin/env bash
# shimgate benchmark: measures, in one run and with the same client code
# (tests/src/bin/sgbench.rs), six paths to a local origin server:
#   direct       client -> origin over loopback
#   microsocks   plain SOCKS5 proxy, no encryption
#   ssh          ssh -D to a private sshd, cipher aes256-gcm@openssh.com
#   shadowsocks  shadowsocks-rust: sslocal (SOCKS5) -> aes-256-gcm -> ssserver,
#                what a user would pick for speed (cargo install, cached
#                outside the clone; skipped with a line where it can't be built)
#   shimgate     shimgate SOCKS5 proxy -> mTLS/HTTP/2 -> shimgate-gateway -> origin
#   peer-direct  device alice's SOCKS5 proxy -> bob.vpn.internal:PORT, peer to
#                peer (Noise + AES-256-GCM) -> device bob, exporting the origin
#   peer-relay   the same, with bob's peer listener refused by an nftables
#                rule, so every session is relayed through the gateway
# for bulk throughput, connection setup latency, connections per second,
# server CPU per GB and memory per idle connection, then prints a table and
# the targets.
# See docs/BENCHMARKS.md. All traffic stays on 127.0.0.1.
#
# usage: bash tests/bench/run.sh [--quick] [--paths direct,...,peer-relay]
#                                [--json FILE|-] [--skip-build] [--skip-install]
# Exit status: 0 when every selected path ran (whether or not the targets are
# met), 1 when a path failed to run, 2 for a usage error.
set -euo pipefail

usage() {
    sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'
options:
  --paths LIST       comma-separated subset of direct,microsocks,ssh,shadowsocks,shimgate,peer-direct,peer-relay
                     (default: all)
  --json FILE        also write all figures as JSON to FILE ("-": JSON on stdout instead of the table)
  --quick            small sizes for a smoke test (256 MiB bulk x1, 200 samples, 1 s, 200 idle)
  --bulk-bytes N     bytes per bulk transfer, suffix K/M/G binary (default 1G)
  --bulk-runs N      timed bulk transfers per path, median reported (default 5)
  --setup-samples N  sequential setup latency samples (default 1000)
  --cps-secs S       measured seconds of the 8-client connections/s test (default 3)
  --idle-conns N     idle tunneled connections for the memory figure (default 1000)
  --skip-build       use the binaries already in target/release
  --skip-install     don't apt-get install missing tools
  --keep-logs DIR    copy the servers' logs and result files to DIR before cleaning up
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
ALL_PATHS="direct microsocks ssh shadowsocks shimgate peer-direct peer-relay"
PATHS="${ALL_PATHS// /,}"
JSON_OUT=""
SKIP_BUILD=0
SKIP_INSTALL=0
KEEP_LOGS=""
BULK_BYTES=1G
BULK_RUNS=5
SETUP_SAMPLES=1000
CPS_CLIENTS=8
CPS_SECS=3
IDLE_CONNS=1000

while (($#)); do
    case "$1" in
        --paths | --json | --bulk-bytes | --bulk-runs | --setup-samples | --cps-secs | --idle-conns | --keep-logs)
            (($# >= 2)) || { echo "run.sh: $1 needs a value" >&2; exit 2; } ;;
    esac
    case "$1" in
        --paths) PATHS="$2"; shift 2 ;;
        --json) JSON_OUT="$2"; shift 2 ;;
        --quick) BULK_BYTES=256M; BULK_RUNS=1; SETUP_SAMPLES=200; CPS_SECS=1; IDLE_CONNS=200; shift ;;
        --bulk-bytes) BULK_BYTES="$2"; shift 2 ;;
        --bulk-runs) BULK_RUNS="$2"; shift 2 ;;
        --setup-samples) SETUP_SAMPLES="$2"; shift 2 ;;
        --cps-secs) CPS_SECS="$2"; shift 2 ;;
        --idle-conns) IDLE_CONNS="$2"; shift 2 ;;
        --skip-build) SKIP_BUILD=1; shift ;;
        --skip-install) SKIP_INSTALL=1; shift ;;
        --keep-logs) KEEP_LOGS="$2"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
for p in ${PATHS//,/ }; do
    case "$p" in
        direct | microsocks | ssh | shadowsocks | shimgate | peer-direct | peer-relay) ;;
        *) echo "run.sh: unknown path $p (${ALL_PATHS// /, })" >&2; exit 2 ;;
    esac
done
if [[ -n "$JSON_OUT" && "$JSON_OUT" != "-" && "$JSON_OUT" != /* ]]; then
    JSON_OUT="$PWD/$JSON_OUT"
fi
if [[ -n "$KEEP_LOGS" && "$KEEP_LOGS" != /* ]]; then
    KEEP_LOGS="$PWD/$KEEP_LOGS"
fi
cd "$ROOT"

log() { echo "== $*" >&2; }
# descendants, stop_pids, fg_run, start_bg, show_log, fail, start_gateway,
# gw, new_code, wait_device, set_peer_listen (they use WORK, PIDS, BIN, SGBENCH).
# shellcheck source=tests/bench/lib.sh
source "$ROOT/tests/bench/lib.sh"
want() { [[ ",$PATHS," == *",$1,"* ]]; }
want_shimgate() { want shimgate || want peer-direct || want peer-relay; }

# ---------------------------------------------------------------- cleanup
WORK="$(mktemp -d "${TMPDIR:-/tmp}/sgbench.XXXXXX")"
PIDS=()
FG_PID=""
# The nftables table of the relayed peer path, while it exists.
NFT_TABLE=""


# besides what finish_run does (tests/bench/lib.sh)
cleanup_extra() {
    if [[ -n "$NFT_TABLE" ]]; then nft delete table inet "$NFT_TABLE" 2>/dev/null || true; fi
}
on_exit_finish_run





# ---------------------------------------------------------------- tools
if ((!SKIP_INSTALL)); then
    need=()
    if want microsocks && ! command -v microsocks >/dev/null; then need+=(microsocks); fi
    if want ssh; then
        if ! command -v sshd >/dev/null && [[ ! -x /usr/sbin/sshd ]]; then need+=(openssh-server); fi
        if ! command -v ssh >/dev/null || ! command -v ssh-keygen >/dev/null; then need+=(openssh-client); fi
    fi
    if ! command -v ps >/dev/null; then need+=(procps); fi
    if want peer-relay && ! command -v nft >/dev/null; then need+=(nftables); fi
    if ((${#need[@]})); then
        SUDO=()
        if [[ "$(id -u)" != 0 ]]; then
            command -v sudo >/dev/null || { echo "run.sh: need root or sudo to install ${need[*]}" >&2; exit 1; }
            SUDO=(sudo)
        fi
        log "installing ${need[*]}"
        "${SUDO[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
    fi
fi

# 1,000 idle connections need ~2,000 descriptors in a proxy; raise the limit
# for this shell and everything it starts.
FDS_NEEDED=$((IDLE_CONNS * 2 + 1024))
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [[ "$(ulimit -n)" != unlimited ]] && (($(ulimit -n) < FDS_NEEDED)); then
    echo "run.sh: open file limit $(ulimit -n) is below the $FDS_NEEDED needed for $IDLE_CONNS idle connections" >&2
    exit 1
fi

# ---------------------------------------------------------------- build
FAILED=()
declare -A FAIL_REASON=()
# Paths not measured for a reason that is not a failure (shadowsocks-rust
# could not be installed): a column saying why, and exit status 0.
declare -A SKIP_REASON=()
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
[[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
BIN="$TARGET_DIR/release"
SGBENCH="$BIN/sgbench"
if ((!SKIP_BUILD)); then
    if want_shimgate; then
        log "cargo build --release -p shimgate-cli -p shimgate-tests"
        if ! fg_run cargo build --release \
            -p shimgate-cli -p shimgate-tests; then
            for p in shimgate peer-direct peer-relay; do
                FAIL_REASON[$p]="cargo build of shimgate-cli failed"
            done
            log "build failed; measuring the other paths"
            fg_run cargo build --release -p shimgate-tests
        fi
    else
        log "cargo build --release -p shimgate-tests"
        fg_run cargo build --release -p shimgate-tests
    fi
fi
[[ -x "$SGBENCH" ]] || { echo "run.sh: $SGBENCH not built" >&2; exit 1; }

# ---------------------------------------------------------------- origin
read -r ORIGIN_PORT < <("$SGBENCH" ports 1)
ORIGIN="127.0.0.1:$ORIGIN_PORT"
start_bg origin "$SGBENCH" origin --listen "$ORIGIN"
ORIGIN_PID=$BG_PID
"$SGBENCH" wait-port "$ORIGIN" --pid "$BG_PID" --timeout-secs 10 || { fail "origin did not start" origin; exit 1; }

# Other work on the machine makes every figure noisy; say so in the report.
# (The load average would still count our own build; sample /proc/stat for 1 s.)
NOTES=()
# /proc/stat ticks: total, idle (+iowait), process time (user+nice+system), steal.
cpu_sample() { awk '/^cpu / { print $2+$3+$4+$5+$6+$7+$8+$9, $5+$6, $2+$3+$4, $9 }' /proc/stat; }
read -r T0 I0 _ _ < <(cpu_sample)
sleep 1
read -r T1 I1 P1 S1 < <(cpu_sample)
BUSY=$(((100 * ((T1 - T0) - (I1 - I0))) / ((T1 - T0) > 0 ? (T1 - T0) : 1)))
# CPU time of this script and every process it started and reaped (the
# servers are stopped and reaped after their path), in clock ticks.
tree_cpu_ticks() {
    local f
    f="$(<"/proc/$1/stat")"
    f="${f##*) }"
    # shellcheck disable=SC2086
    set -- $f
    echo $((${12} + ${13} + ${14} + ${15})) # utime stime cutime cstime
}
RUN_T0=$T1
RUN_P0=$P1
RUN_S0=$S1
RUN_OWN0=$(tree_cpu_ticks $$)
if ((BUSY > 20)); then
    log "warning: the CPUs were ${BUSY}% busy before the run; other work is running and the figures will be noisy"
    NOTES+=(--note "warning: the CPUs were ${BUSY}% busy just before the run (other work running); figures are noisy")
fi

RESULTS=()
measure() {
    local name="$1" label="$2"
    shift 2
    fg_run "$SGBENCH" measure --name "$name" --label "$label" --target "$ORIGIN" \
        --bulk-bytes "$BULK_BYTES" --bulk-runs "$BULK_RUNS" \
        --setup-samples "$SETUP_SAMPLES" --cps-clients "$CPS_CLIENTS" --cps-secs "$CPS_SECS" \
        --idle-conns "$IDLE_CONNS" --out "$WORK/result-$name.json" "$@"
}

# ---------------------------------------------------------------- paths
run_direct() {
    measure direct "direct loopback"
}

run_microsocks() {
    local port
    read -r port < <("$SGBENCH" ports 1)
    # microsocks logs every connection to stdout.
    start_bg microsocks microsocks -i 127.0.0.1 -p "$port"
    local ms=$BG_PID
    "$SGBENCH" wait-port "127.0.0.1:$port" --pid "$ms" --timeout-secs 10 ||
        { fail "microsocks did not start" microsocks; return 1; }
    measure microsocks "microsocks (SOCKS5, no crypto)" --socks "127.0.0.1:$port" \
        --rss "microsocks=$ms" || { fail "measuring failed" microsocks; return 1; }
    stop_pids "$ms"
}

run_ssh() {
    local d="$WORK/ssh" sshd ssh_port socks_port user
    mkdir -p "$d"
    sshd="$(command -v sshd || echo /usr/sbin/sshd)"
    user="$(id -un)"
    { read -r ssh_port; read -r socks_port; } < <("$SGBENCH" ports 2)
    ssh-keygen -q -t ed25519 -N '' -f "$d/host_key" </dev/null || { fail "ssh-keygen failed"; return 1; }
    ssh-keygen -q -t ed25519 -N '' -f "$d/client_key" </dev/null || { fail "ssh-keygen failed"; return 1; }
    cp "$d/client_key.pub" "$d/authorized_keys"
    cat >"$d/sshd_config" <<EOF
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $d/host_key
PidFile none
AuthorizedKeysFile $d/authorized_keys
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
AllowTcpForwarding yes
Ciphers aes256-gcm@openssh.com
LogLevel ERROR
EOF
    # sshd insists on its privilege separation directory.
    if [[ "$(id -u)" == 0 ]]; then mkdir -p /run/sshd; fi
    start_bg sshd "$sshd" -D -e -f "$d/sshd_config"
    local sshd_pid=$BG_PID
    "$SGBENCH" wait-port "127.0.0.1:$ssh_port" --pid "$sshd_pid" --timeout-secs 10 ||
        { fail "sshd did not start" sshd; return 1; }
    start_bg ssh ssh -F /dev/null -N -D "127.0.0.1:$socks_port" -p "$ssh_port" \
        -i "$d/client_key" -o IdentitiesOnly=yes -o BatchMode=yes \
        -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
        -o ExitOnForwardFailure=yes -o Ciphers=aes256-gcm@openssh.com -o Compression=no \
        -o LogLevel=ERROR "$user@127.0.0.1"
    local ssh_pid=$BG_PID
    "$SGBENCH" wait-port "127.0.0.1:$socks_port" --pid "$ssh_pid" --timeout-secs 15 ||
        { fail "ssh -D did not start" ssh sshd; return 1; }
    measure ssh "ssh -D (aes256-gcm)" --socks "127.0.0.1:$socks_port" \
        --rss "ssh=$ssh_pid" --rss-tree "sshd=$sshd_pid" || { fail "measuring failed" ssh sshd; return 1; }
    stop_pids "$ssh_pid"
    # Let sshd reap its session process, so the session's CPU time is
    # accounted to sshd and then to this script (see OTHER_CPU below).
    local i
    for ((i = 0; i < 30; i++)); do
        [[ -z "$(descendants "$sshd_pid")" ]] && break
        sleep 0.1
    done
    stop_pids "$sshd_pid"
}


# shadowsocks-rust on loopback: ssserver and sslocal (SOCKS5, TCP only),
# one AEAD cipher, a fresh password.
run_shadowsocks() {
    local server_port local_port password
    find_shadowsocks
    if [[ -n "$SS_SKIP" ]]; then
        SKIP_REASON[shadowsocks]="not measured: shadowsocks-rust is not available ($SS_SKIP)"
        return 0
    fi
    { read -r server_port; read -r local_port; } < <("$SGBENCH" ports 2)
    password="$(head -c 24 /dev/urandom | base64)"
    start_bg ssserver "$SS_BIN/ssserver" -m aes-256-gcm -k "$password" -s "127.0.0.1:$server_port"
    local server_pid=$BG_PID
    "$SGBENCH" wait-port "127.0.0.1:$server_port" --pid "$server_pid" --timeout-secs 30 ||
        { fail "ssserver did not start" ssserver; return 1; }
    start_bg sslocal "$SS_BIN/sslocal" -m aes-256-gcm -k "$password" \
        -s "127.0.0.1:$server_port" -b "127.0.0.1:$local_port"
    local local_pid=$BG_PID
    "$SGBENCH" wait-port "127.0.0.1:$local_port" --pid "$local_pid" --timeout-secs 30 ||
        { fail "sslocal did not start" sslocal ssserver; return 1; }
    measure shadowsocks "${LABEL[shadowsocks]}" --socks "127.0.0.1:$local_port" \
        --rss "ssserver=$server_pid" --rss "sslocal=$local_pid" ||
        { fail "measuring failed" sslocal ssserver; return 1; }
    stop_pids "$local_pid" "$server_pid"
}

run_shimgate() {
    local sg="$BIN/shimgate" cdir="$WORK/device" socks_port code
    [[ -x "$BIN/shimgate-gateway" && -x "$sg" ]] || { fail "shimgate binaries not built"; return 1; }
    read -r socks_port < <("$SGBENCH" ports 1)
    start_gateway "$WORK/gateway" gateway || return 1
    local gw_pid=$GW_PID
    gw policy add allow --to 127.0.0.1/32 \
        >"$WORK/gateway-policy.log" 2>&1 || { fail "shimgate-gateway policy add failed" gateway-policy; return 1; }
    code="$(new_code)" || return 1
    "$sg" --config-dir "$cdir" enroll "$code" >"$WORK/enroll.log" 2>&1 ||
        { fail "shimgate enroll failed" enroll gateway; return 1; }
    start_bg shimgate "$sg" --config-dir "$cdir" up --listen "127.0.0.1:$socks_port"
    local sg_pid=$BG_PID
    wait_device "$cdir" "$sg_pid" shimgate || return 1
    measure shimgate "shimgate (gateway path)" --socks "127.0.0.1:$socks_port" \
        --rss "shimgate-gateway=$gw_pid" --rss "shimgate=$sg_pid" ||
        { fail "measuring failed" shimgate gateway; return 1; }
    stop_pids "$sg_pid"
    stop_pids "$gw_pid"
}

# The peer paths: a fresh gateway, device alice (whose SOCKS proxy the client
# uses) and device bob, which exports the origin's port. The client asks
# alice for bob.vpn.internal:ORIGIN_PORT; alice gets a session from the
# gateway (policy: allow --to bob.vpn.internal --ports ORIGIN_PORT) and
# connects to bob's peer listener; bob connects to 127.0.0.1:ORIGIN_PORT.
# Both peer listeners are on 127.0.0.1 (the gateway offers loopback endpoints
# only between devices that are both on loopback). For peer-relay, an
# nftables rule answers connections to bob's peer listener with a TCP reset,
# so the direct attempt fails at once and every session goes through the
# gateway's relay (after a failure alice tries direct again every 5 s, and is
# refused again).

run_peer() {
    local mode="$1" name="peer-$1" sg="$BIN/shimgate"
    local adir="$WORK/$name-alice" bdir="$WORK/$name-bob" code dev d i note
    local alice_socks bob_socks bob_peer want_path=direct
    [[ "$mode" == relay ]] && want_path=relayed
    [[ -x "$BIN/shimgate-gateway" && -x "$sg" ]] || { fail "shimgate binaries not built"; return 1; }
    { read -r alice_socks; read -r bob_socks; read -r bob_peer; } < <("$SGBENCH" ports 3)
    local gwlog="$name-gateway"
    start_gateway "$WORK/$name-gateway" "$gwlog" || return 1
    local gw_pid=$GW_PID
    gw policy add allow --to bob.vpn.internal --ports "$ORIGIN_PORT" \
        >"$WORK/gateway-policy.log" 2>&1 || { fail "shimgate-gateway policy add failed" gateway-policy; return 1; }
    for dev in alice bob; do
        d="$adir"
        [[ "$dev" == bob ]] && d="$bdir"
        code="$(new_code)" || return 1
        "$sg" --config-dir "$d" enroll "$code" --name "$dev" >"$WORK/enroll-$dev.log" 2>&1 ||
            { fail "shimgate enroll ($dev) failed" "enroll-$dev" "$gwlog"; return 1; }
    done
    set_peer_listen "$adir/config.toml" 127.0.0.1:0 || return 1
    set_peer_listen "$bdir/config.toml" "127.0.0.1:$bob_peer" || return 1
    "$sg" --config-dir "$bdir" export "$ORIGIN_PORT" >"$WORK/export.log" 2>&1 ||
        { fail "shimgate export failed" export; return 1; }
    start_bg "$name-bob" "$sg" --config-dir "$bdir" up --listen "127.0.0.1:$bob_socks"
    local bob_pid=$BG_PID
    start_bg "$name-alice" "$sg" --config-dir "$adir" up --listen "127.0.0.1:$alice_socks"
    local alice_pid=$BG_PID
    wait_device "$bdir" "$bob_pid" "$name-bob" "$gwlog" || return 1
    wait_device "$adir" "$alice_pid" "$name-alice" "$gwlog" || return 1
    if [[ "$mode" == relay ]]; then
        command -v nft >/dev/null || { fail "nft (nftables) is needed to refuse the direct path"; return 1; }
        NFT_TABLE="sgbench_$$"
        if ! nft -f - >"$WORK/nft.log" 2>&1 <<EOF
table inet $NFT_TABLE {
    chain out {
        type filter hook output priority 0; policy accept;
        ip daddr 127.0.0.0/8 tcp dport $bob_peer reject with tcp reset
    }
}
EOF
        then
            NFT_TABLE=""
            fail "could not add the nftables rule refusing bob's peer listener (root needed)" nft
            return 1
        fi
    fi
    # Bob's export reaches the gateway on its control stream; `shimgate ping`
    # proves a session works and shows its path.
    for ((i = 0; ; i++)); do
        if "$sg" --config-dir "$adir" ping bob -c 3 >"$WORK/$name-ping.log" 2>&1; then break; fi
        if ((i >= 100)); then
            fail "shimgate ping bob did not succeed within 10 s" "$name-ping" "$name-alice" "$name-bob" "$gwlog"
            return 1
        fi
        sleep 0.1
    done
    # The ping's own result line (its log lines go to the same file).
    local ping_out
    ping_out="$(nocolor <"$WORK/$name-ping.log" | grep -v -E '^[0-9-]+T[0-9:.]+Z +[A-Z]+ ' | tr -s ' \n' ' ')"
    if [[ "$ping_out" != *"path $want_path"* ]]; then
        fail "shimgate ping bob did not take the $want_path path: $ping_out" "$name-ping"; return 1
    fi
    log "shimgate ping bob: $ping_out"
    # What `shimgate peers --json` shows while the sessions run (it shows the
    # path of open links only), sampled every 0.5 s.
    (
        while :; do
            "$sg" --config-dir "$adir" peers --json 2>/dev/null | grep '"path":"' || true
            sleep 0.5
        done
    ) >"$WORK/$name-peers.log" &
    local poll_pid=$!
    PIDS+=("$poll_pid")
    measure "$name" "${LABEL[$name]}" --socks "127.0.0.1:$alice_socks" \
        --socks-dest "bob.vpn.internal:$ORIGIN_PORT" \
        --rss "shimgate-gateway=$gw_pid" --rss "alice=$alice_pid" --rss "bob=$bob_pid" ||
        { stop_pids "$poll_pid"; fail "measuring failed" "$name-alice" "$name-bob" "$gwlog"; return 1; }
    stop_pids "$poll_pid"
    # Which path did the sessions take? Bob logs every session it opens
    # with its path, alice every session she relays, and `shimgate peers`
    # showed the path of the links open when it was sampled.
    local n_direct n_relayed n_relaying seen
    n_direct=$(nocolor <"$WORK/$name-bob.log" | grep -c "peer session open.* port=$ORIGIN_PORT path=direct" || true)
    n_relayed=$(nocolor <"$WORK/$name-bob.log" | grep -c "peer session open.* port=$ORIGIN_PORT path=relayed" || true)
    n_relaying=$(nocolor <"$WORK/$name-alice.log" | grep -c "relaying through the gateway.* port=$ORIGIN_PORT" || true)
    seen="$(grep -o '"path":"[a-z]*"' "$WORK/$name-peers.log" | sort | uniq -c | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}')"
    note="$name: bob opened $n_direct direct and $n_relayed relayed sessions; alice relayed $n_relaying; shimgate peers --json samples: ${seen:-none}"
    log "$note"
    NOTES+=(--note "$note")
    if [[ "$mode" == direct ]] && ((n_relayed > 0 || n_direct == 0)); then
        NOTES+=(--note "warning: $name: not every session took the direct path")
    fi
    if [[ "$mode" == relay ]] && ((n_direct > 0 || n_relayed == 0)); then
        NOTES+=(--note "warning: $name: not every session was relayed")
    fi
    if [[ -n "$NFT_TABLE" ]]; then
        nft delete table inet "$NFT_TABLE" 2>/dev/null || true
        NFT_TABLE=""
    fi
    stop_pids "$alice_pid" "$bob_pid"
    stop_pids "$gw_pid"
}
run_peer-direct() { run_peer direct; }
run_peer-relay() { run_peer relay; }

declare -A LABEL=()
LABEL[direct]="direct loopback"
LABEL[microsocks]="microsocks (SOCKS5, no crypto)"
LABEL[ssh]="ssh -D (aes256-gcm)"
LABEL[shadowsocks]="shadowsocks-rust (aes-256-gcm)"
LABEL[shimgate]="shimgate (gateway path)"
LABEL[peer-direct]="shimgate peer, direct"
LABEL[peer-relay]="shimgate peer, relayed"

for p in $ALL_PATHS; do
    want "$p" || continue
    out="$WORK/result-$p.json"
    if [[ -z "${FAIL_REASON[$p]:-}" ]]; then
        log "measuring ${LABEL[$p]}"
        FAIL_MSG=""
        if ! "run_$p"; then
            FAIL_REASON[$p]="${FAIL_MSG:-failed to run (see the messages above)}"
        fi
    fi
    if [[ -n "${SKIP_REASON[$p]:-}" ]]; then
        log "${LABEL[$p]}: ${SKIP_REASON[$p]}"
        "$SGBENCH" failed --name "$p" --label "${LABEL[$p]}" --reason "${SKIP_REASON[$p]}" --out "$out"
    elif [[ -n "${FAIL_REASON[$p]:-}" ]]; then
        FAILED+=("$p")
        log "${LABEL[$p]}: ${FAIL_REASON[$p]}"
        if [[ ! -s "$out" ]]; then
            "$SGBENCH" failed --name "$p" --label "${LABEL[$p]}" --reason "${FAIL_REASON[$p]}" --out "$out"
        fi
    fi
    RESULTS+=("$out")
done

# How much CPU did other processes take while we measured? Everything the
# machine did minus what this script's processes did (the origin still runs).
# (Interrupt time is left out: loopback TCP work done in softirqs is ours but
# not charged to our processes.)
read -r T2 _ P2 S2 < <(cpu_sample)
OWN=$(($(tree_cpu_ticks $$) - RUN_OWN0 + $(tree_cpu_ticks "$ORIGIN_PID")))
SPAN=$(((T2 - RUN_T0) > 0 ? (T2 - RUN_T0) : 1))
OTHER_PCT=$(((100 * (P2 - RUN_P0 - OWN)) / SPAN))
STEAL_PCT=$(((100 * (S2 - RUN_S0)) / SPAN))
((OTHER_PCT >= 0)) || OTHER_PCT=0
CPU_NOTE="other processes used ${OTHER_PCT}% of the CPUs during the measurements, hypervisor steal ${STEAL_PCT}%"
if ((OTHER_PCT > 10 || STEAL_PCT > 10)); then
    NOTES+=(--note "warning: $CPU_NOTE; figures are noisy")
else
    NOTES+=(--note "$CPU_NOTE")
fi

report=("$SGBENCH" report --date "$(date -u '+%Y-%m-%d %H:%M UTC')" "${NOTES[@]}" "${RESULTS[@]}")
if [[ -n "$JSON_OUT" ]]; then report+=(--json "$JSON_OUT"); fi
"${report[@]}"

if ((${#FAILED[@]})); then
    log "failed to run: ${FAILED[*]}"
    exit 1
fi
