#!/usr/bin/env bash
# Checks Cargo.lock and tests/fuzz/Cargo.lock (the cargo-fuzz workspace)
# against the RustSec advisory database with cargo audit (installed from
# crates.io if missing). Part of `bash tests/run.sh` (phase `advisories`).
#
#   bash tests/audit.sh
#
# The database, newest first:
#   1. a fresh shallow clone of $ADVISORY_DB_URL (default
#      https://github.com/rustsec/advisory-db), 60 s at most;
#   2. else a snapshot: $ADVISORY_DB_SNAPSHOT if set, else the one beside
#      the clone, ../shared/advisory-db, or beside the repository a local
#      clone was made from (read in place: `cargo audit
#      --no-fetch` reads a plain folder and writes nothing there; its commit
#      and date are in its file SNAPSHOT);
#   3. else this fails: a check that ran against nothing proves nothing.
# It prints which database it used, its commit and date, and how old it is.
#
# Verdict: a known vulnerability fails the run. Warnings (unmaintained,
# unsound, yanked) are listed, each with what the advisory says replaces it
# (or, for a yanked version, what `cargo update` would move it to), and do
# not fail it. Every finding is fixed or justified in docs/SECURITY.md
# "Dependency advisories"; an advisory that is justified as not applying is
# ignored below (IGNORE), nowhere else.
#
# Yanked versions: with --no-fetch cargo audit reads cargo's local copy of
# the crates.io index only, so that copy is refreshed first for both
# workspaces (`cargo update --dry-run`, which writes no lockfile). If
# crates.io cannot be reached, the check uses the copy as it is and says so.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

URL=${ADVISORY_DB_URL:-https://github.com/rustsec/advisory-db}
SNAPSHOT=${ADVISORY_DB_SNAPSHOT:-$ROOT/../shared/advisory-db}
# A local clone (git clone /work/main /tmp/x) finds the snapshot beside the repository it was
# cloned from.
origin=$(git -C "$ROOT" config --get remote.origin.url 2>/dev/null || true)
if [ -z "${ADVISORY_DB_SNAPSHOT:-}" ] && [ ! -d "$SNAPSHOT" ] && [ -d "$origin" ] && [ -d "$origin/../shared/advisory-db" ]; then
	SNAPSHOT="$origin/../shared/advisory-db"
fi
# lockfile and its manifest
LOCKS=(Cargo.lock:Cargo.toml tests/fuzz/Cargo.lock:tests/fuzz/Cargo.toml)
# Advisories that do not apply to shimgate, each justified in docs/SECURITY.md
# "Dependency advisories" (none today). Form: IGNORE=(--ignore RUSTSEC-YYYY-NNNN ...)
IGNORE=()

log() { echo "advisories: $*" >&2; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if ! cargo audit --version >/dev/null 2>&1; then
	log "cargo-audit is not installed: cargo install cargo-audit --locked"
	if ! cargo install cargo-audit --locked; then
		log "FAILED: cargo-audit could not be installed (crates.io unreachable?); nothing was checked"
		exit 1
	fi
fi
log "$(cargo audit --version | awk '{print "cargo-audit", $NF}')"

# 1. fresh fetch, 2. snapshot
if GIT_TERMINAL_PROMPT=0 timeout 60 git clone --quiet --depth 1 "$URL" "$tmp/advisory-db" 2>"$tmp/fetch.err"; then
	db="$tmp/advisory-db"
	rev=$(git -C "$db" rev-parse HEAD)
	day=$(git -C "$db" log -1 --format=%cs)
	what="fresh fetch of $URL"
else
	why=$(tail -n 1 "$tmp/fetch.err")
	log "no fresh database: $URL: ${why:-timed out after 60 s}"
	if [ ! -f "$SNAPSHOT/SNAPSHOT" ] || [ ! -d "$SNAPSHOT/crates" ]; then
		log "FAILED: no advisory database: $URL cannot be fetched and there is no snapshot at $SNAPSHOT (a folder of the RustSec database with a file SNAPSHOT: '<commit> <YYYY-MM-DD>'; name another with ADVISORY_DB_SNAPSHOT=DIR)"
		exit 1
	fi
	db=$(cd "$SNAPSHOT" && pwd)
	read -r rev day _ <"$db/SNAPSHOT"
	what="snapshot $db"
fi
age=$((($(date -u +%s) - $(date -u -d "$day" +%s)) / 86400))
log "database: $what, commit $rev of $day ($age days old)"
if [ "$age" -gt 90 ]; then
	log "note: the database is over 90 days old (cargo audit's own limit for a fetched one): advisories published since $day are not checked; refresh $SNAPSHOT"
fi

# crates.io index, for the yanked check
for pair in "${LOCKS[@]}"; do
	manifest=${pair#*:}
	if ! timeout 180 cargo update --dry-run --manifest-path "$manifest" >"$tmp/index.log" 2>&1; then
		log "note: crates.io index not refreshed for $manifest ($(tail -n 1 "$tmp/index.log")): yanked status is as of cargo's last look"
	fi
done

status=0
for pair in "${LOCKS[@]}"; do
	lock=${pair%%:*}
	manifest=${pair#*:}
	rc=0
	cargo audit --db "$db" --no-fetch --file "$lock" --json "${IGNORE[@]}" >"$tmp/report.json" 2>"$tmp/report.err" || rc=$?
	# cargo audit exits 1 on a vulnerability and on its own errors; the report tells them apart
	python3 - "$tmp/report.json" "$tmp/report.err" "$lock" "$manifest" "$rc" <<'EOF' || status=1
import json, re, subprocess, sys

report, errors, lock, manifest, rc = sys.argv[1:]
err = open(errors).read().strip()
try:
    d = json.load(open(report))
except ValueError:
    print(f"advisories: {lock}: FAILED: cargo audit gave no report (exit {rc}):\n{err}", file=sys.stderr)
    sys.exit(1)

def dependents(p):
    # the crates that pull this one in (direct dependents only)
    r = subprocess.run(["cargo", "tree", "--locked", "--manifest-path", manifest, "--target", "all",
                        "-e", "normal,build,dev", "-i", f"{p['name']}@{p['version']}",
                        "--depth", "1", "--prefix", "none"], capture_output=True, text=True)
    me = f"{p['name']} v{p['version']}"
    names = sorted({l.split(" (")[0] for l in r.stdout.splitlines() if l.strip()} - {me})
    return ", ".join(names) or "?"

def replacement(adv):
    # an advisory's alternatives section if it has one, else its first two paragraphs
    text = adv.get("description") or ""
    m = re.search(r"^#+ .*(alternative|replace|instead|migrat).*$\n(.*?)(?=^#|\Z)", text, re.I | re.M | re.S)
    body = (m.group(2) if m else "\n".join(text.split("\n\n")[:2])).strip()
    return " ".join(body.split())[:400]

def update_to(p):
    r = subprocess.run(["cargo", "update", "--dry-run", "--manifest-path", manifest,
                        "-p", f"{p['name']}@{p['version']}"], capture_output=True, text=True)
    m = re.search(rf"Updating {re.escape(p['name'])} v\S+ -> (v\S+)", r.stderr)
    return f"`cargo update -p {p['name']}@{p['version']}` moves it to {m.group(1)}" if m else \
        "no newer compatible version: needs a dependency change"

vulns = d["vulnerabilities"]["list"]
warns = [w for ws in d["warnings"].values() for w in ws]
for v in vulns:
    a, p = v["advisory"], v["package"]
    patched = " or ".join(v["versions"]["patched"]) or "none yet"
    print(f"VULNERABILITY {a['id']} {p['name']} {p['version']} ({lock}): {a['title']}\n"
          f"    fixed in: {patched}; pulled in by: {dependents(p)}; {a.get('url') or 'https://rustsec.org/advisories/' + a['id']}")
for w in warns:
    a, p = w.get("advisory"), w["package"]
    if a:
        print(f"warning: {w['kind']} {a['id']} {p['name']} {p['version']} ({lock}): {a['title']}\n"
              f"    pulled in by: {dependents(p)}\n    replacement: {replacement(a)}")
    else:
        print(f"warning: {w['kind']} {p['name']} {p['version']} ({lock}): pulled in by: {dependents(p)}\n"
              f"    replacement: {update_to(p)}")
for line in err.splitlines():
    # e.g. "couldn't check if the package is yanked"; not the summary lines
    if line.startswith("error:") and "vulnerabilit" not in line:
        print(f"warning: cargo audit ({lock}): {line[len('error:'):].strip()}")
kinds = {}
for w in warns:
    kinds[w["kind"]] = kinds.get(w["kind"], 0) + 1
counts = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no warnings"
print(f"advisories: {lock}: {d['lockfile']['dependency-count']} crates, "
      f"{len(vulns)} vulnerabilit{'y' if len(vulns) == 1 else 'ies'}, {counts}")
if rc != "0" and not vulns:
    print(f"advisories: {lock}: FAILED: cargo audit exited {rc} without a vulnerability:\n{err}", file=sys.stderr)
    sys.exit(1)
sys.exit(1 if vulns else 0)
EOF
done
if [ "$status" != 0 ]; then
	log "FAILED: known vulnerabilities above (fix, or justify in docs/SECURITY.md and add to IGNORE)"
fi
exit "$status"
