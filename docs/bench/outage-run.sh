#!/usr/bin/env bash
# A Postgres outage beside the tester, as the issues' harness runs it: a throwaway
# cluster at PGPORT (cmd/devpg), the service, and the tester sending and verifying;
# Postgres is stopped (immediate: a crash) OUTAGE_AT seconds in, for OUTAGE_LEN seconds.
# The service's lookup limit, lookups in flight and backlog are sampled every 5 s.
#
#   docs/bench/outage-run.sh NAME PGPORT OUTAGE_AT OUTAGE_LEN DURATION [tester flags...]
#
# Output in bin/outage/NAME: tester.log (ends with the verification), metrics.log,
# service.log, pgctl.log. Run `make build` first. Uses ports 19090 and 19010.
# docs/benchmarks.md has the runs of 2026-12-06 and their commands.
set -u
name=$1 port=$2 at=$3 len=$4 dur=$5
shift 5
cd "$(dirname "$0")/../.."
root=$(pwd)
dir=$root/bin/outage/$name
rm -rf "$dir"
mkdir -p "$dir/spool"
export DATABASE_URL="postgres://postgres@127.0.0.1:$port/callback?sslmode=disable"
DEVPG_FAST=1 go run ./cmd/devpg ensure >"$dir/devpg.log" 2>&1 || { cat "$dir/devpg.log"; exit 1; }
pgdata=$root/.devpg/$port
bindir=$(pg_config --bindir 2>/dev/null || ls -d /usr/lib/postgresql/*/bin | tail -1)
# The options devpg started the server with (its port among them), to start it again.
opts=$(cut -d' ' -f2- "$pgdata/postmaster.opts" | sed 's/"-D" "[^"]*"//')
ctl() { # one string of pg_ctl arguments; pg_ctl refuses root: as postgres then, as devpg does
	if [ "$(id -u)" = 0 ]; then su postgres -c "$bindir/pg_ctl -D $pgdata $1"; else eval "$bindir/pg_ctl -D $pgdata $1"; fi
}

LISTEN_ADDR=127.0.0.1:19090 OBJECTS_URL=http://127.0.0.1:19010 SPOOL_DIR=$dir/spool LOG_FORMAT=json \
	./bin/callback >"$dir/service.log" 2>&1 &
svc=$!
sleep 3
./bin/tester -objects-addr 127.0.0.1:19010 -target http://127.0.0.1:19090/callback -duration "$dur" \
	-verify -verify-expiry=false -catch-up "${CATCHUP:-30s}" -progress 5s "$@" >"$dir/tester.log" 2>&1 &
tst=$!
start=$(date +%s)
(
	while kill -0 $tst 2>/dev/null; do
		m=$(curl -s -m 2 http://127.0.0.1:19090/metrics |
			grep -E '^callback_(lookups_in_flight|lookup_limit|pending_waiting_rows|objects_online|inbox_callbacks|spool_segments|database_up) ' |
			awk '{printf "%s=%s ", substr($1, 10), $2}')
		echo "t=$(($(date +%s) - start)) $m"
		sleep 5
	done
) >"$dir/metrics.log" &
sleep "$at"
ctl "stop -m immediate" >"$dir/pgctl.log" 2>&1
echo "stopped at $(($(date +%s) - start)) s" >>"$dir/pgctl.log"
sleep "$len"
ctl "-l $pgdata/restart.log -o '$opts' -w start" >>"$dir/pgctl.log" 2>&1
echo "started at $(($(date +%s) - start)) s" >>"$dir/pgctl.log"
wait $tst
rc=$?
echo "tester exit $rc" >>"$dir/pgctl.log"
kill -TERM $svc
wait $svc
ctl "stop -m fast" >>"$dir/pgctl.log" 2>&1
tail -3 "$dir/tester.log"
exit $rc
