#!/usr/bin/env bash
# ensure-packages.sh MODE: install the system packages MODE needs, and only the missing ones.
#
# Every mode also needs a C and C++ compiler: Tideline links DuckDB through cgo.
#
#   demo   PostgreSQL server binaries (make demo starts a throwaway server from them);
#          demo-postgres is the same
#   demo-mysql
#          MariaDB server binaries (make demo SOURCE=mysql)
#   bench  PostgreSQL server binaries (pg_recvlogical comes with them) and mariadb-server (make bench)
#   test   PostgreSQL and MariaDB server binaries, kcat, a C compiler for go test -race (and the
#          DuckDB sink), and Chromium for the dashboard's browser test
#
# Idempotent: when everything is present it installs nothing and does not touch apt. Packages come
# from apt-get, run as root, or through sudo when not root; without either it prints the command to
# run and exits 1. Installing postgresql or mariadb-server may start their system services; that is
# harmless (tests and the demo run their own servers on free ports) and a policy-rc.d that forbids
# it is fine too.
set -euo pipefail

usage() {
	echo "usage: $0 demo|demo-postgres|demo-mysql|bench|test" >&2
	exit 2
}

[[ $# -eq 1 ]] || usage
mode=$1
case "$mode" in
demo | demo-postgres | demo-mysql | bench | test) ;;
demo-*)
	# make demo SOURCE=x passes demo-x: name the make variable, not this script's modes.
	echo "make demo: unknown SOURCE=${mode#demo-}: want postgres (the default) or mysql" >&2
	exit 2
	;;
*) usage ;;
esac

say() { echo "ensure-packages: $*"; }

# Go is not an apt package here: the Debian one is usually older than go.mod asks for.
if ! command -v go >/dev/null 2>&1 && [[ ! -x /usr/local/go/bin/go ]]; then
	say "go is not installed (or not in PATH)."
	say "install Go $(sed -n 's/^go //p' "$(dirname "$0")/../go.mod" 2>/dev/null || echo 1.26) or newer from https://go.dev/dl/ and add /usr/local/go/bin to PATH"
	exit 1
fi

have_postgres() {
	local p
	for p in /usr/lib/postgresql/*/bin/postgres; do
		[[ -x "$p" && -x "$(dirname "$p")/initdb" ]] && return 0
	done
	return 1
}

# find_bin NAME...: succeeds if one of NAME is in PATH or in the sbin directories Debian uses
# (internal/testenv looks in the same places).
find_bin() {
	local n d
	for n in "$@"; do
		command -v "$n" >/dev/null 2>&1 && return 0
		for d in /usr/sbin /usr/bin /usr/local/sbin /usr/local/bin; do
			[[ -x "$d/$n" ]] && return 0
		done
	done
	return 1
}

have_mariadb() {
	find_bin mariadbd mysqld && find_bin mariadb-install-db mysql_install_db && find_bin mariadb-admin mysqladmin
}

have_kcat() { command -v kcat >/dev/null 2>&1; }

# The dashboard test drives Debian's chromium headless (pkg/daemon TestDashboardInBrowser).
have_chromium() { [[ -x /usr/bin/chromium ]]; }

# go test -race needs cgo: a C compiler and the C library headers.
have_cc() { command -v gcc >/dev/null 2>&1 && command -v g++ >/dev/null 2>&1 && [[ -e /usr/include/stdlib.h ]]; }

# check: fill missing with the packages this mode lacks.
check() {
	missing=()
	# The MariaDB demo needs no PostgreSQL.
	[[ $mode == demo-mysql ]] || have_postgres || missing+=(postgresql)
	if [[ $mode == test || $mode == demo-mysql || $mode == bench ]]; then
		have_mariadb || missing+=(mariadb-server)
	fi
	# Tideline links DuckDB (a C++ library, cgo): every mode builds it.
	have_cc || missing+=(gcc g++ libc6-dev)
	if [[ $mode == test ]]; then
		have_kcat || missing+=(kcat)
		have_chromium || missing+=(chromium)
	fi
}

check

if [[ ${#missing[@]} -eq 0 ]]; then
	say "$mode: all system packages present"
	exit 0
fi

say "$mode: missing ${missing[*]}"
if [[ $(id -u) -eq 0 ]]; then
	as_root=()
elif command -v sudo >/dev/null 2>&1; then
	as_root=(sudo)
else
	say "not root and no sudo: run this as root, then try again:"
	echo "  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
	exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
	say "apt-get not found (this script knows Debian and Ubuntu): install ${missing[*]} with your package manager"
	exit 1
fi

say "running: ${as_root[*]:+${as_root[*]} }apt-get update"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
say "running: ${as_root[*]:+${as_root[*]} }apt-get install -y --no-install-recommends ${missing[*]}"
# A policy-rc.d that forbids starting services makes the postinst scripts print a warning, not
# fail; the packages are installed either way, and only their binaries are needed.
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"

# Check again: a package whose name resolved to something unexpected should fail here, not later
# with a less clear message from a test.
wanted=("${missing[@]}")
check
if [[ ${#missing[@]} -gt 0 ]]; then
	say "still missing after install: ${missing[*]}"
	exit 1
fi
say "$mode: installed ${wanted[*]}"
