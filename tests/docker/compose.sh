#!/usr/bin/env bash
# The docker-compose demo in a real Docker engine, as the README's "Run it in Docker" says
# (tests/run.sh runs this as its phase `compose-docker`; root only):
#
#   bash tests/docker/compose.sh
#
# 1. a private Docker engine (Debian's docker.io): its own network namespace, data-root,
#    exec-root, socket, pidfile and config; documentation address ranges only
#    (tests/docker/lib.sh); never the system's engine or socket
# 2. the base images the Dockerfile and docker-compose.yml name, made without a registry
#    (debootstrap; this machine's Rust toolchain; Debian's Postgres through
#    SHIMGATE_POSTGRES_IMAGE), each only if the engine lacks its tag
# 3. a copy of the checkout plus `cargo vendor` output and its .cargo/config.toml (containers
#    reach Debian's mirror but not crates.io): the build context; never committed
# 4. `docker compose build` (BuildKit; the in-container release build), then
#    `docker compose up --build -d` with the repository's docker-compose.yml and Dockerfile
# 5. the checks: alice's curl through her SOCKS port to the intranet and to bob's page (and
#    not to the intranet without it), the gateway healthy, the console's sign-in page on
#    127.0.0.1:8080 and a sign-in with the one-time password from the gateway's log (then
#    the forced password change), `restart gateway` and both devices reconnect by themselves
#    (and the new password still signs in), revoking bob in the console cuts alice's access
#    to bob but not to the intranet
# 6. `docker compose down -v`, and nothing of the project is left (containers, networks,
#    volumes); then the engine stops and its namespace, NAT table, exec-root, socket and
#    pidfile go, and the host's ip_forward is as before: also when a check fails (EXIT trap);
#    what a run killed before its trap left, the next run removes first (sgd_reap_stale)
#
# Kept between runs, by design (the engine's data-root, under $SHIMGATE_DOCKER_CACHE,
# default /var/cache/shimgate-docker, outside the clone): the base images, the image
# shimgate:dev and BuildKit's cache (trimmed to $SHIMGATE_DOCKER_KEEP_STORAGE, default
# 8GB), and the vendored crates of the last Cargo.lock. A fresh machine pays the whole
# build once; later runs rebuild the project's crates only (the dependencies are a layer of
# their own). Delete that directory to start cold. Runs on one machine take turns (flock).
#
# Prints each phase's time at the end. Exits non-zero if anything fails.
set -euo pipefail

SGD_T0=$(date +%s)
SGD_HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SGD_HERE/../.." && pwd)"
# shellcheck source=tests/docker/lib.sh
source "$SGD_HERE/lib.sh"

CACHE=${SHIMGATE_DOCKER_CACHE:-/var/cache/shimgate-docker}
KEEP_STORAGE=${SHIMGATE_DOCKER_KEEP_STORAGE:-8GB}
SGD_MIRROR=${SHIMGATE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SGD_PG_IMAGE=shimgate-test/postgres:15-bookworm
PROJECT=shimgate
ALICE_SOCKS=(--socks5-hostname 127.0.0.1:1080)

die() {
	sgd_log "FAILED: $*"
	exit 1
}

[ "$(id -u)" = 0 ] || die "run as root (a private dockerd, network namespaces)"
for tool in dockerd debootstrap nft ip nsenter unshare flock curl cargo rustc tar; do
	command -v "$tool" >/dev/null || die "$tool is missing (tests/lib/setup.sh installs what the suite needs)"
done
SGD_DOCKER=$(sgd_docker_bin) || die "no docker client"
if "$SGD_DOCKER" compose version >/dev/null 2>&1; then
	COMPOSE=("$SGD_DOCKER" compose)
elif command -v docker-compose >/dev/null; then
	COMPOSE=(docker-compose)
else
	die "neither \`docker compose\` nor docker-compose is installed"
fi

WORK=$(mktemp -d /var/tmp/sgd-run.XXXXXX)
CTX="$WORK/shimgate"
JAR="$WORK/cookies"
times=()
phase_t=$SGD_T0
phase_name=""
phase() {
	local now
	now=$(date +%s)
	if [ -n "$phase_name" ]; then
		times+=("$phase_name $((now - phase_t))s")
	fi
	phase_name=$1
	phase_t=$now
	[ -n "$phase_name" ] && sgd_log "== $phase_name"
	return 0
}

# docker compose (or docker-compose) on the private engine, in the build context's copy of
# the repository; BuildKit, as `docker compose` has by default.
compose() {
	(cd "$CTX" && exec env DOCKER_HOST="unix://$SGD_EXEC/docker.sock" \
		PATH="$(dirname "$SGD_DOCKER"):$PATH" \
		COMPOSE_PROJECT_NAME=$PROJECT SHIMGATE_POSTGRES_IMAGE="$SGD_PG_IMAGE" \
		DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1 BUILDKIT_PROGRESS=plain \
		${SGD_TIMEOUT:+timeout "$SGD_TIMEOUT"} "${COMPOSE[@]}" "$@" 9>&-)
}

# What is left of the project in the engine, one line per thing; nothing if nothing.
project_leftovers() {
	local label="label=com.docker.compose.project=$PROJECT"
	sgd_docker ps -a -q --filter "$label" | sed 's/^/container /'
	sgd_docker network ls -q --filter "$label" | sed 's/^/network /'
	sgd_docker volume ls -q --filter "$label" | sed 's/^/volume /'
	# the engine is the test's own: nothing else runs there either
	sgd_docker ps -a -q | sed 's/^/container (any) /'
}

down_done=""
cleanup() {
	local rc=$? left
	set +e
	trap - EXIT
	trap '' INT TERM
	if [ -n "$SGD_PID" ] && [ -z "$down_done" ]; then
		if [ "$rc" != 0 ]; then
			sgd_log "the services, on failure:"
			compose ps >&2
			compose logs --no-color --tail=40 >&2
		fi
		compose down -v --remove-orphans --timeout 10 >"$WORK/down.log" 2>&1 || cat "$WORK/down.log" >&2
		left=$(project_leftovers)
		[ -z "$left" ] || sgd_log "left after down -v: $left"
	fi
	if [ "$rc" != 0 ] && [ -s "$WORK/dockerd.log" ]; then
		sgd_log "dockerd's log (last lines):"
		tail -n 15 "$WORK/dockerd.log" >&2
	fi
	sgd_engine_stop
	left=$(sgd_leftovers)
	if [ -n "$left" ]; then
		sgd_log "FAILED: the engine left: $left"
		rc=1
	fi
	rm -rf "$WORK"
	phase ""
	sgd_log "phase times: $(IFS=,; echo "${times[*]}" | sed 's/,/, /g'); total $(($(date +%s) - SGD_T0))s"
	if [ "$rc" = 0 ]; then sgd_log "ok"; else sgd_log "FAILED (exit $rc)"; fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$CACHE"
SGD_FORWARD_FILE="$CACHE/ip_forward.before"
exec 9>"$CACHE/lock"
flock -w 3600 9 || die "another run holds $CACHE/lock"

# --- 1. the engine, 2. the base images --------------------------------------------------
phase "base images"
sgd_reap_stale
for dir in /var/tmp/sgd-run.* /var/tmp/sgd-rootfs.* /var/tmp/sgd-rust.* /var/tmp/sgd-pg.*; do
	[ ! -e "$dir" ] || [ "$dir" = "$WORK" ] || rm -rf "$dir"
done
sgd_engine_start "$CACHE/data-root" "$WORK/dockerd.log" || die "the engine did not start"
sgd_base_images "$ROOT/Dockerfile" || die "the base images"

# --- 3. the build context: the checkout, and its dependencies vendored --------------------
phase "context"
mkdir -p "$CTX"
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
	# what git would check out, uncommitted changes included, ignored files excluded
	(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard |
		tar --null -T - --ignore-failed-read -c 2>/dev/null) | tar -x -C "$CTX"
else
	tar -C "$ROOT" --exclude=./target --exclude=./.git -c . | tar -x -C "$CTX"
fi
[ -s "$CTX/Dockerfile" ] && [ -s "$CTX/docker-compose.yml" ] || die "the context copy has no Dockerfile or docker-compose.yml"
[ ! -e "$CTX/vendor" ] && [ ! -e "$CTX/.cargo" ] || die "the checkout has its own vendor/ or .cargo/: this test adds those"
lock_hash=$(sha256sum "$CTX/Cargo.lock" | cut -c1-16)
vendored="$CACHE/vendor/$lock_hash"
if [ ! -d "$vendored" ]; then
	sgd_log "cargo vendor (Cargo.lock $lock_hash)"
	rm -rf "$CACHE/vendor"
	mkdir -p "$CACHE/vendor"
	(cd "$CTX" && cargo vendor --locked --quiet "$vendored.tmp" >/dev/null) || die "cargo vendor"
	mv "$vendored.tmp" "$vendored"
fi
cp -al "$vendored" "$CTX/vendor" 2>/dev/null || cp -a "$vendored" "$CTX/vendor"
mkdir "$CTX/.cargo"
cat >"$CTX/.cargo/config.toml" <<'EOF'
[source.crates-io]
replace-with = "vendored-sources"

[source.vendored-sources]
directory = "vendor"
EOF
# a run killed earlier may have left its project behind
compose down -v --remove-orphans --timeout 5 >/dev/null 2>&1 || true
[ -z "$(project_leftovers)" ] || die "the engine has containers of an earlier run: $(project_leftovers)"

# --- 4. build, up ----------------------------------------------------------------------
phase "build"
if ! SGD_TIMEOUT=3000 compose build >"$WORK/build.log" 2>&1; then
	tail -n 60 "$WORK/build.log" >&2
	die "docker compose build"
fi
grep -E 'Finished .release. profile' "$WORK/build.log" | sed 's/^/    /' >&2 || true
image_size=$(sgd_docker image inspect -f '{{.Size}}' shimgate:dev)
sgd_log "image shimgate:dev: $((image_size / 1000000)) MB; its layers:"
sgd_docker history --format '{{.Size}}	{{.CreatedBy}}' shimgate:dev | cut -c1-110 | sed 's/^/    /' >&2

phase "up"
compose up --build -d >"$WORK/up.log" 2>&1 || {
	cat "$WORK/up.log" >&2
	die "docker compose up --build -d"
}

alice_curl() {
	compose exec -T alice curl -sS --max-time 10 "$@" 2>&1
}
# poll SECONDS WHAT CMD...: until CMD succeeds.
poll() {
	local secs=$1 what=$2 end
	shift 2
	end=$(($(date +%s) + secs))
	until "$@"; do
		[ "$(date +%s)" -lt "$end" ] || die "$what (waited ${secs}s)"
		sleep 1
	done
}
alice_reaches() { # URL TEXT
	local out
	out=$(alice_curl "${ALICE_SOCKS[@]}" "$1") && [[ "$out" == *"$2"* ]]
}
alice_cannot_reach() { # URL TEXT (what alice got: $refused)
	! refused=$(alice_curl "${ALICE_SOCKS[@]}" "$1") || [[ "$refused" != *"$2"* ]]
}
health() {
	sgd_docker inspect -f '{{.State.Health.Status}}' "$(compose ps -q gateway)"
}
gateway_healthy() { [ "$(health)" = healthy ]; }

poll 120 "the gateway's health check (/readyz) to pass" gateway_healthy
# the console admin's one-time password, as the README says to find it
otp=$(compose logs --no-color gateway | sed 's/^[^|]*| \{0,1\}//' |
	awk '/one-time password/ { found = 1; next } found && NF && !done { print $1; done = 1 }')
[ -n "$otp" ] || die "no one-time password in \`docker compose logs gateway\`"
poll 180 "alice to reach the intranet through the gateway" \
	alice_reaches http://intranet/ "Welcome to the intranet"
poll 60 "alice to reach bob's page, peer to peer" \
	alice_reaches http://bob.vpn.internal:8000/ "Hello from bob"

# --- 5. the checks ---------------------------------------------------------------------
phase "checks"
out=$(alice_curl "${ALICE_SOCKS[@]}" http://intranet/) || die "alice -> intranet: $out"
[[ "$out" == *"Welcome to the intranet"* ]] || die "alice -> intranet: $out"
sgd_log "ok: alice -> gateway -> intranet: $(grep -o '<h1>[^<]*' <<<"$out")"
out=$(alice_curl "${ALICE_SOCKS[@]}" http://bob.vpn.internal:8000/) || die "alice -> bob: $out"
[[ "$out" == *"Hello from bob"* ]] || die "alice -> bob: $out"
sgd_log "ok: alice -> bob.vpn.internal:8000: $(grep -o '<h1>[^<]*' <<<"$out")"
if out=$(alice_curl --max-time 3 http://intranet/); then
	die "alice reached the intranet without the VPN: $out"
fi
sgd_log "ok: alice without her SOCKS port does not reach the intranet ($out)"
sgd_log "ok: the gateway's health: $(health)"
[ "$(compose exec -T gateway id -un | tr -d '\r')" = shimgate ] || die "the gateway does not run as shimgate"
[ "$(compose exec -T alice id -un | tr -d '\r')" = shimgate ] || die "alice does not run as shimgate"
sgd_log "ok: the services run as the user shimgate"

# The console, as a browser uses it, on the engine's 127.0.0.1:8080 (the published port).
console() { # PATH [curl args]: prints the body, then the status and the redirect's target
	local path=$1
	shift
	nsenter --net="/run/netns/$SGD_NS" curl -sS --max-time 10 -b "$JAR" -c "$JAR" \
		-w '\n%{http_code} %{redirect_url}\n' "$@" "http://127.0.0.1:8080$path"
}
hidden() { # NAME: the value of the page's first hidden input NAME (stdin)
	sed -n "/name=\"$1\" value=/{s/.*name=\"$1\" value=\"\\([^\"]*\\)\".*/\\1/p;q}"
}
sign_in() { # PASSWORD: prints the status line
	local page token
	page=$(console /login) || die "GET /login: $page"
	[[ "$page" == *"Sign in"* ]] || die "the console's sign-in page: $page"
	token=$(hidden form <<<"$page")
	[ -n "$token" ] || die "no form token on the sign-in page: $page"
	console /login --data-urlencode name=admin --data-urlencode "password=$1" \
		--data-urlencode "form=$token" | tail -n 1
}
page=$(console /login) || die "GET http://127.0.0.1:8080/login: $page"
[[ "$page" == *"Sign in"* && "$page" == *'name="password"'* ]] || die "the console's sign-in page: $page"
sgd_log "ok: the console's sign-in page on 127.0.0.1:8080"
res=$(sign_in "$otp")
[[ "$res" == "303 "*/password ]] || die "sign-in with the one-time password: $res"
page=$(console /password)
[[ "$page" == *"choose your own"* ]] || die "the forced password change: $page"
csrf=$(hidden csrf <<<"$page")
newpw="compose-test-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
res=$(console /password --data-urlencode "csrf=$csrf" --data-urlencode "current=$otp" \
	--data-urlencode "new=$newpw" --data-urlencode "repeat=$newpw" | tail -n 1)
[[ "$res" == "303 "* ]] || die "changing the one-time password: $res"
page=$(console /devices)
[[ "$page" == *alice* && "$page" == *bob* && "$page" != *"choose your own"* ]] || die "the devices page: $page"
sgd_log "ok: signed in with the one-time password from the gateway's log, chose a password, devices listed"

started=$(sgd_docker inspect -f '{{.State.StartedAt}}' "$(compose ps -q gateway)")
compose restart gateway >"$WORK/restart.log" 2>&1 || {
	cat "$WORK/restart.log" >&2
	die "docker compose restart gateway"
}
[ "$(sgd_docker inspect -f '{{.State.StartedAt}}' "$(compose ps -q gateway)")" != "$started" ] ||
	die "the gateway did not restart"
t=$(date +%s)
poll 120 "alice to reach the intranet again after the gateway's restart" \
	alice_reaches http://intranet/ "Welcome to the intranet"
poll 120 "alice to reach bob again after the gateway's restart" \
	alice_reaches http://bob.vpn.internal:8000/ "Hello from bob"
sgd_log "ok: restart gateway: alice and bob reconnected by themselves ($(($(date +%s) - t))s)"
rm -f "$JAR"
console_answers() { console /login -o /dev/null >/dev/null 2>&1; }
poll 60 "the gateway's console to answer after its restart" console_answers
res=$(sign_in "$newpw")
[[ "$res" == "303 "*/devices ]] || die "sign-in with the chosen password after the restart: $res"
page=$(console /devices)
csrf=$(hidden csrf <<<"$page")
[ -n "$csrf" ] || die "no CSRF token on the devices page: $page"
res=$(console /devices/bob/revoke --data-urlencode "csrf=$csrf" | tail -n 1)
[[ "$res" == "303 "*/devices ]] || die "revoking bob in the console: $res"
page=$(console /devices)
[[ "$page" == *"Device bob revoked"* ]] || die "the console does not say bob was revoked: $page"
t=$(date +%s)
poll 60 "alice to lose bob once bob is revoked" \
	alice_cannot_reach http://bob.vpn.internal:8000/ "Hello from bob"
alice_reaches http://intranet/ "Welcome to the intranet" || die "alice lost the intranet when bob was revoked"
sgd_log "ok: bob revoked in the console: alice no longer reaches bob ($(($(date +%s) - t))s: $refused), still the intranet"

# --- 6. down -v, and nothing left ------------------------------------------------------
phase "down"
compose down -v --remove-orphans --timeout 10 >"$WORK/down.log" 2>&1 || {
	cat "$WORK/down.log" >&2
	die "docker compose down -v"
}
down_done=1
left=$(project_leftovers)
[ -z "$left" ] || die "left after down -v: $left"
sgd_log "ok: down -v left no container, network or volume of the project"
# the cache kept for the next run: the newest build's layers, old images out
sgd_docker image prune -f >/dev/null
sgd_docker builder prune -f --keep-storage "$KEEP_STORAGE" >/dev/null
sgd_docker system df | sed 's/^/    /' >&2
sgd_log "cache kept in $CACHE: $(du -sh "$CACHE" | cut -f1)"
