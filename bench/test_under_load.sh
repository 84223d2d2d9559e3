#!/usr/bin/env bash
# The fast test suite on a busy machine: two CPU-bound busy loops run beside it the whole time.
#
#   bash bench/test_under_load.sh                  # runs `make test`
#   bash bench/test_under_load.sh <command ...>    # runs that instead, e.g. .venv/bin/python -m pytest -q
#   make test-busy                                 # the same as the first line, through the venv
#
# Prints the suite's own output (with its --durations table), then one line: PASS or FAIL, the wall
# time, and the load average at the end. Tests must wait on conditions, never on fixed sleeps, so a
# busy machine only makes the suite slower; a failure here is a bug in a test or in the code.
set -u
busy=()
stop_busy() { for pid in "${busy[@]}"; do kill "$pid" 2>/dev/null; done; }
trap stop_busy EXIT INT TERM
for _ in 1 2; do
    ( while :; do :; done ) &
    busy+=("$!")
done
echo "== two busy loops running (pids ${busy[*]}); $(uptime)"
[ $# -eq 0 ] && set -- make test
start=$(date +%s)
"$@"
rc=$?
seconds=$(( $(date +%s) - start ))
stop_busy
verdict=PASS; [ "$rc" -eq 0 ] || verdict=FAIL
printf '== %s: `%s` beside two busy loops, exit %d, %d min %02d s; %s\n' \
    "$verdict" "$*" "$rc" $((seconds / 60)) $((seconds % 60)) "$(uptime | sed 's/.*load/load/')"
exit "$rc"
