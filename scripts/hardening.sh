#!/usr/bin/env bash
# Every reliability check, on every supported Python (see the README, "Reliability"; a Python the
# host lacks, 3.14 or 3.15, runs in scripts/newpython.sh's chroot):
#   1. -Werror builds with gcc and clang, release and debug      scripts/werror.sh
#   2. the whole suite on the debug build (invariant checks)      scripts/debug.sh
#   3. the whole suite under ASan + UBSan                          scripts/asan.sh
#   4. valgrind memcheck over a smoke subset                       scripts/valgrind.sh
# (the fuzzers, leak checks and cross-thread tests are part of the suite itself, so they run in
# scripts/test.sh and again in 2 and 3). Each step runs even if an earlier one failed; the exit
# status is non-zero if any failed. Needs gcc, clang and valgrind (apt-get install -y valgrind
# clang). Prints the time each step took.
#
#   bash scripts/hardening.sh              # 3.10 to 3.15
#   bash scripts/hardening.sh 3.12         # some versions
#   STEPS="asan debug" bash scripts/hardening.sh
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/_pythons.sh
read -r -a steps <<< "${STEPS:-werror debug asan valgrind}"
status=0
summary=()
t_all=$SECONDS
for step in "${steps[@]}"; do
    echo "##### hardening: $step"
    t0=$SECONDS
    if bash "scripts/$step.sh" "$@"; then
        result=ok
    else
        result=FAILED
        status=1
    fi
    summary+=("$(printf '%-9s %-7s %4ds' "$step" "$result" $((SECONDS - t0)))")
done
echo "##### hardening summary (Pythons: ${*:-$ALL_PYTHONS})"
printf '%s\n' "${summary[@]}"
echo "total $((SECONDS - t_all))s"
exit $status
