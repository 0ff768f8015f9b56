# Shell helpers for tests/run.sh (sourced, not run). Bash only.
#
#   sg_log MSG...            timestamped progress line on stderr
#   sg_ensure_tools          installs what the suite runs and is missing
#   sg_ensure_postgres       exports DATABASE_URL (given, local, or a throwaway cluster)

SG_T0=${SG_T0:-$(date +%s)}
SG_APT_UPDATED=${SG_APT_UPDATED:-}

sg_log() {
	printf '[run.sh %4ss] %s\n' "$(($(date +%s) - SG_T0))" "$*" >&2
}

sg_die() {
	sg_log "ERROR: $*"
	exit 1
}

# apt-get install, with one `apt-get update` first; root only.
sg_apt_install() {
	if [ "$(id -u)" != 0 ]; then
		sg_die "missing packages: $* (not root, so not installing them; install them and re-run)"
	fi
	command -v apt-get >/dev/null || sg_die "missing packages: $* and no apt-get here"
	if [ -z "$SG_APT_UPDATED" ]; then
		sg_log "apt-get update"
		apt-get update -qq >&2 || sg_die "apt-get update failed"
		SG_APT_UPDATED=1
	fi
	sg_log "apt-get install $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
		sg_die "apt-get install $* failed"
}

# Tools the test binaries run: curl (the SOCKS client people use), ip and
# sysctl (network namespaces), runuser (throwaway Postgres as non-root);
# for tests/e2e/clients.rs, the other SOCKS clients: nc -X 5 (the OpenBSD
# netcat, not the traditional one, which has no -X), ssh, git, and sshd and
# python3 (http.server) as their servers; chromium and chromedriver for the
# console's browser test.
sg_ensure_tools() {
	local missing=()
	command -v cargo >/dev/null || sg_die "cargo is not installed (the Rust toolchain comes with the machine)"
	command -v curl >/dev/null || missing+=(curl ca-certificates)
	if ! command -v nc.openbsd >/dev/null && ! { command -v nc >/dev/null && nc -h 2>&1 | grep -q -- '-X proxy_protocol'; }; then
		missing+=(netcat-openbsd)
	fi
	{ command -v sshd >/dev/null || [ -x /usr/sbin/sshd ]; } || missing+=(openssh-server)
	{ command -v ssh >/dev/null && command -v ssh-keygen >/dev/null; } || missing+=(openssh-client)
	command -v git >/dev/null || missing+=(git)
	command -v python3 >/dev/null || missing+=(python3)
	command -v ip >/dev/null || missing+=(iproute2)
	command -v sysctl >/dev/null || missing+=(procps)
	command -v runuser >/dev/null || missing+=(util-linux)
	# docker-compose.yml: validated by docker-compose (no engine needed), its
	# services run by tests/e2e/compose.rs with busybox and Debian's Postgres
	command -v docker-compose >/dev/null || missing+=(docker-compose)
	# tests/docker/compose.sh: a private Docker engine (Debian's, 20.10, and its client),
	# debootstrap for the base images it makes, nft for its namespace's NAT
	{ command -v dockerd >/dev/null && [ -x /usr/bin/docker ]; } || missing+=(docker.io)
	command -v debootstrap >/dev/null || missing+=(debootstrap)
	# busybox-static: also the statically linked program `shimgate run` must
	# refuse (tests/e2e/shim.rs); age: a Go program it must refuse
	dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
	command -v age >/dev/null || missing+=(age)
	# dig: a real DNS client under `shimgate run`; nft: counting what leaves
	# by the default route (tests/e2e/shim.rs)
	command -v dig >/dev/null || missing+=(bind9-dnsutils)
	command -v nft >/dev/null || missing+=(nftables)
	# ping: a peer's VPN address pinged in TUN mode (tests/e2e/tun.rs)
	command -v ping >/dev/null || missing+=(iputils-ping)
	compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
	# the console's browser test (tests/e2e/console.rs) drives Debian's Chromium
	command -v chromium >/dev/null || missing+=(chromium)
	command -v chromedriver >/dev/null || missing+=(chromium-driver)
	if [ ${#missing[@]} -gt 0 ]; then
		sg_apt_install "${missing[@]}"
	fi
	cargo fmt --version >/dev/null 2>&1 || sg_die "rustfmt is missing: rustup component add rustfmt"
	cargo clippy --version >/dev/null 2>&1 || sg_die "clippy is missing: rustup component add clippy"
}

# The directory holding initdb/pg_ctl, or nothing.
sg_pg_bindir() {
	local d
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
		if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
			echo "$d"
			return 0
		fi
	done
	if command -v initdb >/dev/null && command -v pg_ctl >/dev/null; then
		dirname "$(command -v initdb)"
		return 0
	fi
	return 1
}

# A TCP port on 127.0.0.1 nobody listens on.
sg_free_port() {
	local p
	for p in $(seq 55432 55632); do
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

SG_PG_TMP=""
SG_PG_BIN=""

sg_as_postgres() {
	if [ "$(id -u)" = 0 ]; then
		runuser -u postgres -- "$@"
	else
		"$@"
	fi
}

sg_stop_postgres() {
	if [ -n "$SG_PG_TMP" ] && [ -d "$SG_PG_TMP" ]; then
		sg_as_postgres "$SG_PG_BIN/pg_ctl" -D "$SG_PG_TMP/data" -m immediate -w stop >/dev/null 2>&1 || true
		rm -rf "$SG_PG_TMP"
		SG_PG_TMP=""
	fi
}

# DATABASE_URL if set; else the server on 127.0.0.1:5432 if it answers
# (unless SHIMGATE_THROWAWAY_PG=1); else a throwaway cluster in a temp dir on a free port, stopped and deleted
# at exit (the caller's EXIT trap must call sg_stop_postgres).
sg_ensure_postgres() {
	if [ -n "${DATABASE_URL:-}" ]; then
		sg_log "Postgres: using the given DATABASE_URL"
		export DATABASE_URL
		return 0
	fi
	if [ "${SHIMGATE_THROWAWAY_PG:-}" != 1 ]; then
		command -v pg_isready >/dev/null || sg_apt_install postgresql-client
		if pg_isready -q -h 127.0.0.1 -p 5432 -t 3; then
			export DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres"
			sg_log "Postgres: using the server on 127.0.0.1:5432"
			return 0
		fi
	fi
	sg_start_throwaway_postgres
}

# initdb + pg_ctl start in a temp dir, as the postgres OS user when root
# (initdb refuses to run as root); installs postgresql if needed.
sg_start_throwaway_postgres() {
	SG_PG_BIN=$(sg_pg_bindir) || {
		sg_apt_install postgresql
		SG_PG_BIN=$(sg_pg_bindir) || sg_die "postgresql installed but initdb/pg_ctl not found"
	}
	if [ "$(id -u)" = 0 ] && ! id postgres >/dev/null 2>&1; then
		useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin postgres ||
			sg_die "cannot create the postgres user"
	fi
	local port
	port=$(sg_free_port) || sg_die "no free port for a throwaway Postgres"
	SG_PG_TMP=$(mktemp -d /tmp/shimgate-pg.XXXXXX)
	chmod 755 "$SG_PG_TMP"
	if [ "$(id -u)" = 0 ]; then chown postgres: "$SG_PG_TMP"; fi
	sg_log "Postgres: starting a throwaway cluster in $SG_PG_TMP on port $port"
	sg_as_postgres "$SG_PG_BIN/initdb" -D "$SG_PG_TMP/data" -A trust -U postgres --no-sync \
		>"$SG_PG_TMP/initdb.log" 2>&1 || {
		cat "$SG_PG_TMP/initdb.log" >&2
		sg_die "initdb failed"
	}
	sg_as_postgres "$SG_PG_BIN/pg_ctl" -D "$SG_PG_TMP/data" -l "$SG_PG_TMP/server.log" -w -t 60 \
		-o "-p $port -k $SG_PG_TMP -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" \
		start >/dev/null || {
		cat "$SG_PG_TMP/server.log" >&2
		sg_die "pg_ctl start failed"
	}
	export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}
