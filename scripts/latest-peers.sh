#!/usr/bin/env bash
# The oracle tests against the newest release of each peer (cachetools, async-lru, aiolimiter,
# circuitbreaker) instead of the pinned one: a watch for behaviour changes upstream, not part of
# CI's verdict. Installs into its own venv (.venv-peers-VERSION: every other dependency at its
# pin), prints the pinned and newest versions, runs the peers' test files, and lists the tests
# that differ. Exits 0 when the newest releases agree with aiofast, 1 when some test differs.
#   bash scripts/test.sh --latest-peers            # on Python 3.13
#   PY=3.11 bash scripts/test.sh --latest-peers -k ttl
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_pythons.sh
PEERS="cachetools async-lru aiolimiter circuitbreaker"
FILES="test_cache.py test_memo.py test_tokenbucket.py test_breaker.py"
v=${PY:-3.13}
base=$(find_python "$v")
venv=".venv-peers-$v"
[ -x "$venv/bin/python" ] || "$base" -m venv "$venv"
unpinned=$(mktemp)
trap 'rm -f "$unpinned"' EXIT
grep -viE "^($(echo "$PEERS" | tr ' ' '|'))==" constraints.txt >"$unpinned"
pip_quiet "$venv/bin/python" -c "$unpinned" -U pip setuptools wheel
pip_quiet "$venv/bin/python" -c "$unpinned" ".[test]"
pip_quiet "$venv/bin/python" -c "$unpinned" -U $PEERS
echo "=== peers: pinned (constraints.txt, Python $v) -> newest release"
for p in $PEERS; do
    pinned=$("$venv/bin/python" - "$p" "$v" <<'PY'
import sys
from packaging.markers import Marker
from packaging.requirements import Requirement
name, ver = sys.argv[1], sys.argv[2]
env = {"python_version": ver, "python_full_version": ver + ".0"}
for line in open("constraints.txt"):
    line = line.split("#")[0].strip()
    if not line:
        continue
    r = Requirement(line)
    if r.name.lower() == name and (r.marker is None or r.marker.evaluate(env)):
        print(str(r.specifier).lstrip("="))
PY
)
    newest=$("$venv/bin/python" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p")
    printf '  %-16s %-10s -> %-10s %s\n' "$p" "$pinned" "$newest" \
        "$([ "$pinned" = "$newest" ] && echo same || echo NEWER)"
done
log=$(mktemp)
set +e
(cd tests && "../$venv/bin/python" -m pytest -c ../pyproject.toml --rootdir .. -q -p no:randomly \
    -n "${TEST_JOBS:-auto}" -rf $FILES "$@") 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
echo
echo "=== differences from the newest peers (tests that fail against them):"
if grep -a '^FAILED ' "$log"; then
    echo "=== see docs/peers.md for which behaviour aiofast follows, and why"
    rm -f "$log"
    exit 1
fi
rm -f "$log"
[ "$rc" = 0 ] && echo "  none: aiofast agrees with the newest releases" || echo "  pytest exited $rc"
exit "$rc"
