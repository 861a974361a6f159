#!/usr/bin/env bash
# `make test`'s pytest run: every test, in two lanes at once.
#
#   the chaos lane   tests/chaos: its own throwaway control planes (fixed ports, pod IPs 127.N.x.y of
#                    their own), mostly waiting on Kubernetes' controllers (the pod GC's 40 s
#                    quarantine, a 40 s throttled-API window, restarts converging)
#   the main lane    everything else, on the dev cluster and without one
#
# The lanes share no cluster, port or folder, so they run side by side and `make test` takes about
# the main lane's time. The chaos lane's output follows the main lane's; the exit code is the first
# failing lane's. With arguments (`make test PYTEST_ARGS=...`) it is one plain pytest run with them.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

if (($#)); then
  exec "$PY" -m pytest --durations=40 "$@"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/tts-chaos-lane.XXXXXX")"
chaos_log="$work/chaos.log"
# its own basetemp and no shared cache: the lanes never touch each other's files
"$PY" -m pytest --durations=10 -p no:cacheprovider --basetemp="$work/tmp" tests/chaos >"$chaos_log" 2>&1 &
chaos_pid=$!
stop_chaos() { kill "$chaos_pid" 2>/dev/null && wait "$chaos_pid" 2>/dev/null; }
trap stop_chaos INT TERM
echo "[test] the chaos lane (tests/chaos) runs beside this one as PID $chaos_pid; its output follows"

"$PY" -m pytest --durations=40 --ignore=tests/chaos
main_rc=$?
wait "$chaos_pid"
chaos_rc=$?
trap - INT TERM

echo
echo "================================ the chaos lane (tests/chaos) ================================"
cat "$chaos_log"
rm -rf "$work"
echo "[test] main lane exit $main_rc, chaos lane exit $chaos_rc"
if ((main_rc != 0)); then exit "$main_rc"; fi
exit "$chaos_rc"
