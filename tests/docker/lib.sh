# Helpers of tests/docker/compose.sh (sourced, not run; bash): a private Docker engine in
# a network namespace of its own, and the base images the Dockerfile and docker-compose.yml
# name, made without an image registry.
#
#   sgd_engine_start     ip netns + veth + NAT, then dockerd inside it (own data-root,
#                        exec-root, socket, pidfile, config; documentation ranges only)
#   sgd_engine_stop      stops it and removes everything sgd_engine_start made but the
#                        data-root (the image and build cache, kept by design)
#   sgd_reap_stale       what a killed earlier run left (call with the cache's lock held)
#   sgd_base_images      debian:bookworm-slim, the Rust builder image, a Postgres image
#                        (each made only when the engine does not have its tag yet)
#
# Addresses (documentation ranges; the e2e suite uses these ranges only inside network
# namespaces of its own, never in the host's):
#   host <-> engine's namespace   203.0.113.249/30 <-> 203.0.113.250/30 (NAT on the host)
#   docker0 (image builds)        203.0.113.129/26
#   compose networks              198.51.100.0/24, /28 each

SGD_LINK_HOST=203.0.113.249
SGD_LINK_NS=203.0.113.250
SGD_LINK_NET=203.0.113.248/30
SGD_BIP=203.0.113.129/26
SGD_POOL=base=198.51.100.0/24,size=28

SGD_NS=""
SGD_VETH=""
SGD_NFT=""
SGD_FORWARD_WAS=""
# where the host's ip_forward before the engine is kept (set by the caller: outside the clone)
SGD_FORWARD_FILE=${SGD_FORWARD_FILE:-/var/tmp/sgdocker.ip_forward}
SGD_EXEC=""
SGD_PID=""

sgd_log() {
	printf '[docker %4ss] %s\n' "$(($(date +%s) - SGD_T0))" "$*" >&2
}

# The Docker client: Debian's (same API version as its engine) if installed.
sgd_docker_bin() {
	if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker; fi
}

# docker, on the private engine only.
sgd_docker() {
	DOCKER_HOST="unix://$SGD_EXEC/docker.sock" "$SGD_DOCKER" "$@"
}

sgd_engine_start() {
	local data_root=$1 log=$2
	SGD_NS="sgdocker$$"
	SGD_VETH="sgdh$$"
	SGD_NFT="sgdocker$$"
	ip netns add "$SGD_NS"
	ip link add "$SGD_VETH" type veth peer name eth0 netns "$SGD_NS"
	ip addr add "$SGD_LINK_HOST/30" dev "$SGD_VETH"
	ip link set "$SGD_VETH" up
	ip -n "$SGD_NS" link set lo up
	ip -n "$SGD_NS" addr add "$SGD_LINK_NS/30" dev eth0
	ip -n "$SGD_NS" link set eth0 up
	ip -n "$SGD_NS" route add default via "$SGD_LINK_HOST"
	# the engine's namespace reaches out (Debian's mirror, DNS) through the host, NATed
	# the value before: kept in a file too, so that the run after a killed one restores it
	if [ -s "$SGD_FORWARD_FILE" ]; then
		SGD_FORWARD_WAS=$(cat "$SGD_FORWARD_FILE")
	else
		SGD_FORWARD_WAS=$(cat /proc/sys/net/ipv4/ip_forward)
		echo "$SGD_FORWARD_WAS" >"$SGD_FORWARD_FILE"
	fi
	echo 1 >/proc/sys/net/ipv4/ip_forward
	nft -f - <<-EOF
		table ip $SGD_NFT {
			chain postrouting {
				type nat hook postrouting priority srcnat; policy accept;
				ip saddr $SGD_LINK_NET oifname != "$SGD_VETH" masquerade
			}
		}
	EOF
	SGD_EXEC=$(mktemp -d /run/sgdocker.XXXXXX)
	echo '{}' >"$SGD_EXEC/daemon.json"
	mkdir -p "$data_root"
	# Its own network namespace (its bridges, iptables rules and published ports stay
	# there) and its own mount namespace (its mounts vanish with it; a system containerd's
	# socket is hidden, so that it starts its own).
	# (fd 9: the caller's lock, which the engine must not keep should the caller be killed)
	nsenter --net="/run/netns/$SGD_NS" -- unshare --mount --propagation private -- sh -c '
		if [ -d /run/containerd ]; then mount -t tmpfs tmpfs /run/containerd; fi
		exec "$@"' sh \
		dockerd --config-file "$SGD_EXEC/daemon.json" \
		--data-root "$data_root" --exec-root "$SGD_EXEC" \
		--host "unix://$SGD_EXEC/docker.sock" --pidfile "$SGD_EXEC/docker.pid" \
		--storage-driver overlay2 --bip "$SGD_BIP" --default-address-pool "$SGD_POOL" \
		--cgroup-parent /shimgate-docker-test \
		>"$log" 2>&1 9>&- &
	SGD_PID=$!
	for _ in $(seq 1 120); do
		if sgd_docker version >/dev/null 2>&1; then
			sgd_log "engine up (pid $SGD_PID, namespace $SGD_NS, data-root $data_root)"
			return 0
		fi
		kill -0 "$SGD_PID" 2>/dev/null || break
		sleep 0.5
	done
	tail -n 30 "$log" >&2
	sgd_log "ERROR: dockerd did not start"
	return 1
}

# Everything sgd_engine_start made goes, the data-root excepted. Safe to call twice, and
# after a partial start.
sgd_engine_stop() {
	local p
	if [ -n "$SGD_PID" ] && kill -0 "$SGD_PID" 2>/dev/null; then
		kill -TERM "$SGD_PID"
		for _ in $(seq 1 60); do
			kill -0 "$SGD_PID" 2>/dev/null || break
			sleep 0.5
		done
		if kill -0 "$SGD_PID" 2>/dev/null; then
			sgd_log "dockerd (pid $SGD_PID) did not stop: killing it"
			kill -KILL "$SGD_PID" 2>/dev/null || true
		fi
		wait "$SGD_PID" 2>/dev/null || true
	fi
	SGD_PID=""
	if [ -n "$SGD_NS" ] && [ -e "/run/netns/$SGD_NS" ]; then
		# whatever the engine started and left (containerd, shims, proxies) lives in its namespace
		for p in $(ip netns pids "$SGD_NS" 2>/dev/null); do
			sgd_log "killing leftover process $p ($(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-80))"
			kill -KILL "$p" 2>/dev/null || true
		done
		sleep 0.2
		ip netns del "$SGD_NS" 2>/dev/null || true
	fi
	if [ -n "$SGD_VETH" ] && ip link show "$SGD_VETH" >/dev/null 2>&1; then
		ip link del "$SGD_VETH" 2>/dev/null || true
	fi
	if [ -n "$SGD_NFT" ]; then
		nft delete table ip "$SGD_NFT" 2>/dev/null || true
	fi
	if [ "$SGD_FORWARD_WAS" = 0 ]; then
		echo 0 >/proc/sys/net/ipv4/ip_forward
	fi
	if [ -n "$SGD_FORWARD_WAS" ]; then
		rm -f "$SGD_FORWARD_FILE"
	fi
	SGD_FORWARD_WAS=""
	if [ -n "$SGD_EXEC" ]; then
		rm -rf "$SGD_EXEC"
	fi
	# the cgroups the engine made for its containers (empty once they are gone)
	for p in /sys/fs/cgroup/*/shimgate-docker-test /sys/fs/cgroup/shimgate-docker-test; do
		[ -d "$p" ] && find "$p" -depth -type d -exec rmdir {} \; 2>/dev/null
	done
	return 0
}

# What a run killed before its cleanup left: its engine (found by its exec-root's pidfile and
# data-root), namespace, interface and NAT table. Only runs of this test make those names,
# and they take turns (the caller holds the cache's lock), so none of them is in use.
sgd_reap_stale() {
	local dir pid ns
	for dir in /run/sgdocker.*; do
		[ -d "$dir" ] || continue
		pid=$(cat "$dir/docker.pid" 2>/dev/null || true)
		if [ -n "$pid" ] && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -F -- "--exec-root $dir " >/dev/null; then
			sgd_log "stopping the engine an earlier run left (pid $pid, $dir)"
			kill -TERM "$pid" 2>/dev/null || true
			for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
			kill -KILL "$pid" 2>/dev/null || true
		fi
		rm -rf "$dir"
	done
	for ns in $(ip netns list 2>/dev/null | awk '/^sgdocker[0-9]+/ { print $1 }'); do
		sgd_log "removing the namespace $ns an earlier run left"
		for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
		ip netns del "$ns" 2>/dev/null || true
	done
	for ns in $(ip -o link show type veth 2>/dev/null | sed -n 's/^[0-9]*: \(sgdh[0-9]*\)@.*/\1/p'); do
		ip link del "$ns" 2>/dev/null || true
	done
	for ns in $(nft list tables 2>/dev/null | awk '$3 ~ /^sgdocker[0-9]+$/ { print $3 }'); do
		nft delete table ip "$ns" 2>/dev/null || true
	done
}

# What of the engine is left on the host; nothing printed if nothing.
sgd_leftovers() {
	[ -n "$SGD_NS" ] && [ -e "/run/netns/$SGD_NS" ] && echo "network namespace $SGD_NS"
	[ -n "$SGD_VETH" ] && ip link show "$SGD_VETH" >/dev/null 2>&1 && echo "interface $SGD_VETH"
	[ -n "$SGD_NFT" ] && nft list table ip "$SGD_NFT" >/dev/null 2>&1 && echo "nft table $SGD_NFT"
	[ -n "$SGD_EXEC" ] && [ -e "$SGD_EXEC" ] && echo "exec-root $SGD_EXEC"
	[ -n "$SGD_PID" ] && kill -0 "$SGD_PID" 2>/dev/null && echo "dockerd pid $SGD_PID"
	[ -n "$SGD_EXEC" ] && grep -F " $SGD_EXEC" /proc/mounts | sed 's/^/mount /'
	return 0
}

# The image a FROM line of Dockerfile names (the Nth one).
sgd_from() {
	sed -n 's/^FROM[[:space:]]\{1,\}\([^[:space:]]\{1,\}\).*/\1/p' "$1" | sed -n "${2}p"
}

sgd_have_image() {
	sgd_docker image inspect "$1" >/dev/null 2>&1
}

# debootstrap's Debian bookworm (minbase) as the image $1.
sgd_debian_image() {
	local tag=$1 dir
	dir=$(mktemp -d /var/tmp/sgd-rootfs.XXXXXX)
	sgd_log "$tag: debootstrap --variant=minbase bookworm ($SGD_MIRROR)"
	if ! debootstrap --variant=minbase bookworm "$dir" "$SGD_MIRROR" >"$dir.log" 2>&1; then
		tail -n 20 "$dir.log" >&2
		rm -rf "$dir" "$dir.log"
		return 1
	fi
	rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
	tar -C "$dir" -c . | sgd_docker import \
		--change 'CMD ["bash"]' \
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		- "$tag" >/dev/null
	rm -rf "$dir" "$dir.log"
}

# The Rust builder image $2, from $1 plus gcc and this machine's toolchain, laid out as the
# official rust image is (CARGO_HOME /usr/local/cargo, its bin on PATH).
sgd_rust_image() {
	local base=$1 tag=$2 ctx sysroot
	sysroot=$(rustc --print sysroot)
	sgd_log "$tag: $base + gcc + $(rustc --version) from $sysroot"
	ctx=$(mktemp -d /var/tmp/sgd-rust.XXXXXX)
	# hard links where the file system allows it: the toolchain is 600 MB without its docs
	if ! cp -al "$sysroot" "$ctx/toolchain" 2>/dev/null; then
		rm -rf "$ctx/toolchain"
		cp -a "$sysroot" "$ctx/toolchain"
	fi
	rm -rf "$ctx/toolchain/share/doc"
	sed "s|@BASE@|$base|" "$SGD_HERE/images/rust.Dockerfile" >"$ctx/Dockerfile"
	sgd_docker build -q -t "$tag" "$ctx" >/dev/null || {
		rm -rf "$ctx"
		return 1
	}
	rm -rf "$ctx"
}

# A Postgres image $2 from $1 and Debian's postgresql-15 that runs as the official image
# does for docker-compose.yml (POSTGRES_HOST_AUTH_METHOD=trust, PGDATA, pg_isready).
sgd_postgres_image() {
	local base=$1 tag=$2 ctx
	sgd_log "$tag: $base + Debian's postgresql-15"
	ctx=$(mktemp -d /var/tmp/sgd-pg.XXXXXX)
	sed "s|@BASE@|$base|" "$SGD_HERE/images/postgres.Dockerfile" >"$ctx/Dockerfile"
	cp "$SGD_HERE/images/postgres-entrypoint.sh" "$ctx/"
	sgd_docker build -q -t "$tag" "$ctx" >/dev/null || {
		rm -rf "$ctx"
		return 1
	}
	rm -rf "$ctx"
}

# The base images the Dockerfile's FROM lines name, and the Postgres image $SGD_PG_IMAGE.
sgd_base_images() {
	local dockerfile=$1 rust debian
	rust=$(sgd_from "$dockerfile" 1)
	debian=$(sgd_from "$dockerfile" 2)
	case "$debian" in
	debian:bookworm*) ;;
	*) sgd_log "ERROR: the Dockerfile's runtime base is $debian; this test makes debian:bookworm* only" && return 1 ;;
	esac
	sgd_have_image "$debian" || sgd_debian_image "$debian"
	sgd_have_image "$rust" || sgd_rust_image "$debian" "$rust"
	sgd_have_image "$SGD_PG_IMAGE" || sgd_postgres_image "$debian" "$SGD_PG_IMAGE"
	sgd_log "base images: $debian, $rust, $SGD_PG_IMAGE"
}
