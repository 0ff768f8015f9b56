# Shell helpers shared by the benchmark scripts (run.sh, load.sh, soak.sh);
# sourced, not run. The caller defines WORK (a temp dir for logs), PIDS (an
# array of background pids finish_run stops), FG_PID, BIN (target/release)
# and SGBENCH, and may set GW_SERVE_ARGS (extra `shimgate-gateway serve` flags).
# shellcheck shell=bash
if ! declare -p GW_SERVE_ARGS >/dev/null 2>&1; then GW_SERVE_ARGS=(); fi
if ! declare -p GW_WRAP >/dev/null 2>&1; then GW_WRAP=(); fi

# Children, grandchildren... of a pid (sshd forks per session).
descendants() {
    local c
    for c in $(ps -o pid= --ppid "$1" 2>/dev/null); do
        echo "$c"
        descendants "$c"
    done
}

# Stops the given pids (and their descendants): TERM, up to 3 s, then KILL.
stop_pids() {
    local all=() pid i alive
    for pid in "$@"; do
        [[ -n "$pid" ]] || continue
        all+=("$pid")
        mapfile -t -O "${#all[@]}" all < <(descendants "$pid")
    done
    ((${#all[@]})) || return 0
    kill -TERM "${all[@]}" 2>/dev/null || true
    for ((i = 0; i < 30; i++)); do
        alive=0
        for pid in "${all[@]}"; do
            if kill -0 "$pid" 2>/dev/null; then alive=1; fi
        done
        ((alive)) || break
        sleep 0.1
    done
    kill -KILL "${all[@]}" 2>/dev/null || true
    for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}

# The end of every bench script, as its EXIT trap (on_exit_finish_run):
# stops what it started, newest first (FG_PID, then PIDS), runs the caller's
# cleanup_extra if it defines one, copies the files of $WORK matching
# KEEP_PATTERNS (default: logs and JSON) to $KEEP_LOGS if that is set, and
# removes $WORK. Exits with the status the script was exiting with.
finish_run() {
    local rc=$?
    trap - EXIT INT TERM
    local rev=() i p
    if [[ -n "$FG_PID" ]]; then rev+=("$FG_PID"); fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do rev+=("${PIDS[i]}"); done
    ((${#rev[@]} == 0)) || stop_pids "${rev[@]}"
    if declare -F cleanup_extra >/dev/null; then cleanup_extra; fi
    if [[ -n "${KEEP_LOGS:-}" ]]; then
        mkdir -p "$KEEP_LOGS"
        for p in ${KEEP_PATTERNS:-*.log *.json}; do
            cp "$WORK"/$p "$KEEP_LOGS"/ 2>/dev/null || true
        done
    fi
    rm -rf "$WORK"
    exit "$rc"
}

# finish_run on exit; INT and TERM exit (so it runs) with 130 and 143.
on_exit_finish_run() {
    trap finish_run EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# Runs a command and waits for it. Bash runs traps only between commands, so
# a long command in the foreground would delay the cleanup on SIGTERM; `wait`
# is interrupted by the signal instead.
fg_run() {
    local rc=0
    "$@" &
    FG_PID=$!
    wait "$FG_PID" || rc=$?
    FG_PID=""
    return "$rc"
}

# Starts a background process with its output in $WORK/NAME.log; sets BG_PID.
start_bg() {
    local name="$1"
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    BG_PID=$!
    PIDS+=("$BG_PID")
}

# The logs are colored even when they don't go to a terminal.
nocolor() { sed 's/\x1b\[[0-9;]*m//g'; }

show_log() {
    local l
    for l in "$@"; do
        if [[ -s "$WORK/$l.log" ]]; then
            echo "---- last lines of $l.log:" >&2
            tail -n 15 "$WORK/$l.log" | nocolor >&2
        fi
    done
}

# Sets BIN (target/release, under CARGO_TARGET_DIR when set) and SGBENCH;
# unless SKIP_BUILD=1 builds `-p shimgate-cli -p shimgate-tests` (the whole
# workspace when the first argument is --workspace: the preload library
# too) in release; then exits unless every file named (in BIN) is there.
release_binaries() {
    local what=(-p shimgate-cli -p shimgate-tests) f
    if [[ "${1:-}" == --workspace ]]; then what=(--workspace); shift; fi
    TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
    [[ "$TARGET_DIR" == /* ]] || TARGET_DIR="$ROOT/$TARGET_DIR"
    BIN="$TARGET_DIR/release"
    SGBENCH="$BIN/sgbench"
    if ((!SKIP_BUILD)); then
        echo "== cargo build --release ${what[*]}" >&2
        fg_run cargo build --release "${what[@]}"
    fi
    for f in "$@"; do
        [[ -e "$BIN/$f" ]] || { echo "${0##*/}: $BIN/$f is missing (build, or drop --skip-build)" >&2; exit 1; }
    done
}

# Records why the current path failed and shows the given logs.
FAIL_MSG=""
fail() {
    FAIL_MSG="$1"
    echo "${0##*/}: $1" >&2
    shift
    show_log "$@"
}

# Starts a fresh gateway with its data in DIR (SQLite registry) and its log in
# TAG.log; sets GW_PORT and GW_PID. Then `gw ARGS` runs the gateway's CLI on
# it. GW_SERVE_ARGS: extra `serve` flags; GW_WRAP: a command `serve` runs
# under (cost.sh: valgrind), which may make it slow to start.
start_gateway() {
    local dir="$1" tag="$2"
    GW_DIR="$dir"
    read -r GW_PORT < <("$SGBENCH" ports 1)
    # Explicit dirs only, and the default SQLite database.
    unset DATABASE_URL SHIMGATE_HOME SHIMGATE_GATEWAY_DIR
    gw init --name localhost --ip 127.0.0.1 --listen "127.0.0.1:$GW_PORT" \
        >"$WORK/$tag-init.log" 2>&1 || { fail "shimgate-gateway init failed" "$tag-init"; return 1; }
    start_bg "$tag" "${GW_WRAP[@]}" "$BIN/shimgate-gateway" --data-dir "$GW_DIR" serve "${GW_SERVE_ARGS[@]}"
    GW_PID=$BG_PID
    "$SGBENCH" wait-port "127.0.0.1:$GW_PORT" --pid "$GW_PID" --timeout-secs 120 ||
        { fail "shimgate-gateway serve did not start" "$tag"; return 1; }
}
gw() { "$BIN/shimgate-gateway" --data-dir "$GW_DIR" "$@"; }

# Prints a fresh enrollment code for user bench.
new_code() {
    local code
    code="$(gw token create --user bench --quiet 2>"$WORK/gateway-token.log")" ||
        { fail "shimgate-gateway token create failed" gateway-token; return 1; }
    [[ "$code" == sg1-* ]] || { fail "token create printed ${code:-nothing}, not an sg1- code"; return 1; }
    echo "$code"
}

# Waits until the device proxy with config dir DIR (pid PID, log TAG.log) is
# up and connected: `shimgate status` exits 0. GWTAG: the gateway's log.
# WAIT_DEVICE_SECS: how long (default 30).
wait_device() {
    local dir="$1" pid="$2" tag="$3" gwtag="${4:-gateway}" i limit="${WAIT_DEVICE_SECS:-30}"
    for ((i = 0; ; i++)); do
        if "$BIN/shimgate" --config-dir "$dir" status >/dev/null 2>&1; then return 0; fi
        if ! kill -0 "$pid" 2>/dev/null; then
            fail "shimgate up ($tag) exited" "$tag" "$gwtag"; return 1
        fi
        if ((i >= limit * 10)); then
            fail "shimgate status ($tag) did not exit 0 within $limit s" "$tag" "$gwtag"; return 1
        fi
        sleep 0.1
    done
}

# Sets peer_listen in a device's config.toml (enroll writes the default).
set_peer_listen() {
    local file="$1" addr="$2"
    if grep -q '^peer_listen *=' "$file"; then
        sed -i "s/^peer_listen *=.*/peer_listen = \"$addr\"/" "$file"
    else
        # A top-level key must come before the first [table].
        sed -i "1i peer_listen = \"$addr\"" "$file"
    fi
    grep -q "^peer_listen = \"$addr\"" "$file" || { fail "could not set peer_listen in $file"; return 1; }
}

# shadowsocks-rust (sslocal, ssserver), from $SS_ROOT/bin (default
# ~/.cache/shimgate-bench/shadowsocks-rust, outside the clone, kept between
# runs), installed there with cargo install when missing. Sets SS_BIN,
# SS_VERSION, and SS_SKIP: why it cannot be used (empty: it can). Uses WORK.
find_shadowsocks() {
    SS_ROOT="${SS_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/shimgate-bench/shadowsocks-rust}"
    SS_BIN="$SS_ROOT/bin"
    SS_SKIP=""
    SS_VERSION=""
    if [[ ! -x "$SS_BIN/sslocal" || ! -x "$SS_BIN/ssserver" ]]; then
        if ! command -v cargo >/dev/null; then
            SS_SKIP="it is not in $SS_BIN and cargo is not installed"
        else
            log "shadowsocks-rust is not in $SS_BIN: cargo install shadowsocks-rust --locked --root $SS_ROOT" \
                "(the first build takes several minutes: about 6 on 2 cores)"
            if ! fg_run cargo install shadowsocks-rust --locked --root "$SS_ROOT" >"$WORK/ss-install.log" 2>&1; then
                show_log ss-install
                SS_SKIP="cargo install shadowsocks-rust failed"
            elif [[ ! -x "$SS_BIN/sslocal" || ! -x "$SS_BIN/ssserver" ]]; then
                SS_SKIP="cargo install shadowsocks-rust did not put sslocal and ssserver in $SS_BIN"
            fi
        fi
    fi
    if [[ -z "$SS_SKIP" ]]; then
        SS_VERSION="$("$SS_BIN/ssserver" --version 2>/dev/null | head -n 1)" || SS_VERSION="shadowsocks (version unknown)"
    fi
}

# ---- network namespaces (tun.sh). The caller defines NETNS=() (the
# namespaces made so far) and calls netns_cleanup from its cleanup_extra.

# Makes namespace NAME with its loopback up and remembers it in NETNS.
netns_add() {
    ip netns add "$1" || { fail "ip netns add $1 failed (root needed)"; return 1; }
    NETNS+=("$1")
    ip -n "$1" link set lo up
}

# Connects namespaces A and B with a veth pair: netns_veth A A_CIDR B B_CIDR
# [A_IF B_IF] (interface names default to veth-a, veth-b).
netns_veth() {
    local a="$1" a_addr="$2" b="$3" b_addr="$4" ia="${5:-veth-a}" ib="${6:-veth-b}"
    if ! { ip link add "$ia" netns "$a" type veth peer name "$ib" netns "$b" &&
        ip -n "$a" addr add "$a_addr" dev "$ia" &&
        ip -n "$b" addr add "$b_addr" dev "$ib" &&
        ip -n "$a" link set "$ia" up &&
        ip -n "$b" link set "$ib" up; }; then
        fail "could not connect $a and $b with a veth pair"
        return 1
    fi
}

# Kills what still runs in the namespaces of NETNS (by pid, from
# `ip netns pids`) and deletes them, newest first.
netns_cleanup() {
    local i ns pids
    for ((i = ${#NETNS[@]} - 1; i >= 0; i--)); do
        ns="${NETNS[i]}"
        mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null)
        ((${#pids[@]} == 0)) || stop_pids "${pids[@]}"
        ip netns del "$ns" 2>/dev/null || true
    done
    NETNS=()
}

# Like start_gateway, in two steps, so that policy can be added before
# `serve` loads it (a device asks for its routes when it connects, then only
# every minute). gateway_init_ns DIR TAG NAME IP PORT [init args...]: `init`
# with the server certificate naming NAME and IP, listening on IP:PORT
# (devices dial IP:PORT); sets GW_DIR and GW_PORT, and `gw` then works (the
# registry is a file). gateway_serve_ns NS TAG IP: `serve` in namespace NS,
# waiting for its port; sets GW_PID.
gateway_init_ns() {
    local dir="$1" tag="$2" name="$3" ip="$4" port="$5"
    shift 5
    GW_DIR="$dir"
    GW_PORT="$port"
    unset DATABASE_URL SHIMGATE_HOME SHIMGATE_GATEWAY_DIR
    gw init --name "$name" --ip "$ip" --listen "$ip:$port" --public-addr "$ip:$port" "$@" \
        >"$WORK/$tag-init.log" 2>&1 || { fail "shimgate-gateway init failed" "$tag-init"; return 1; }
}
gateway_serve_ns() {
    local ns="$1" tag="$2" ip="$3"
    # `ip netns exec` execs the command: BG_PID is the gateway's own pid.
    start_bg "$tag" ip netns exec "$ns" "${GW_WRAP[@]}" "$BIN/shimgate-gateway" --data-dir "$GW_DIR" serve "${GW_SERVE_ARGS[@]}"
    GW_PID=$BG_PID
    ip netns exec "$ns" "$SGBENCH" wait-port "$ip:$GW_PORT" --pid "$GW_PID" --timeout-secs 120 ||
        { fail "shimgate-gateway serve did not start in $ns" "$tag"; return 1; }
}

# tun2proxy (a tun2socks program: TUN interface -> SOCKS5), from
# $T2P_ROOT/bin (default ~/.cache/shimgate-bench/tun2proxy, outside the
# clone, kept between runs), installed there with cargo install when missing
# and INSTALL_OK=1, given at most T2P_INSTALL_SECS (default 480) seconds.
# Sets T2P_BIN (the binary), T2P_VERSION, and T2P_SKIP: why it cannot be
# used (empty: it can). Uses WORK.
find_tun2proxy() {
    T2P_ROOT="${T2P_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/shimgate-bench/tun2proxy}"
    T2P_BIN="$T2P_ROOT/bin/tun2proxy-bin"
    T2P_SKIP=""
    T2P_VERSION=""
    local secs="${T2P_INSTALL_SECS:-480}"
    if [[ ! -x "$T2P_BIN" ]]; then
        if [[ "${INSTALL_OK:-1}" != 1 ]]; then
            T2P_SKIP="it is not in $T2P_ROOT/bin and installing was not allowed (--skip-install)"
        elif ! command -v cargo >/dev/null; then
            T2P_SKIP="it is not in $T2P_ROOT/bin and cargo is not installed"
        else
            log "tun2proxy is not in $T2P_ROOT/bin: cargo install tun2proxy --locked --root $T2P_ROOT" \
                "(at most $secs s; about 5 min on 2 cores)"
            if ! fg_run timeout "$secs" cargo install tun2proxy --locked --root "$T2P_ROOT" >"$WORK/t2p-install.log" 2>&1; then
                show_log t2p-install
                T2P_SKIP="cargo install tun2proxy failed or took over $secs s"
            elif [[ ! -x "$T2P_BIN" ]]; then
                T2P_SKIP="cargo install tun2proxy did not put tun2proxy-bin in $T2P_ROOT/bin"
            fi
        fi
    fi
    if [[ -z "$T2P_SKIP" ]]; then
        T2P_VERSION="$("$T2P_BIN" --version 2>/dev/null | head -n 1)" || T2P_VERSION="tun2proxy (version unknown)"
    fi
}
