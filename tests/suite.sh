#!/usr/bin/env bash
# The whole suite, as `make pytest` and `make flake-hunt` run it. The unit tests need no
# services and only CPU, so they run beside the service tests (which run one at a time
# against the shared local stack); their report is printed after the service tests'.
# Exits non-zero if either part failed. Extra arguments go to both pytest runs.
set -uo pipefail
bin=${BIN:-.venv/bin}

# Every test folder is run by one of the two: a new one must be added here.
for dir in tests/*/; do
    case "$dir" in
    tests/unit/ | tests/integration/ | tests/e2e/ | tests/chaos/ | tests/__pycache__/) ;;
    *) echo "tests/suite.sh: $dir is run by neither pytest process; add it" >&2; exit 2 ;;
    esac
done

unit_log=$(mktemp)
unit_tmp=$(mktemp -d)
trap 'rm -rf "$unit_log" "$unit_tmp"' EXIT

# Its own temporary directory and no cache: two pytest sessions must not share them.
"$bin/pytest" -q -p no:cacheprovider --basetemp="$unit_tmp" tests/unit "$@" >"$unit_log" 2>&1 &
unit_pid=$!
# The chaos run goes last: by then the unit tests have ended, and it does not share the
# CPU with them (that stretched it from about 250 s to 530 s).
"$bin/pytest" tests/integration tests/e2e tests/chaos --durations=15 "$@"
services=$?
wait "$unit_pid"
units=$?
echo "== the unit tests (run beside the service tests):"
cat "$unit_log"
echo "== service tests: exit $services; unit tests: exit $units"
[ "$services" -eq 0 ] && [ "$units" -eq 0 ]
