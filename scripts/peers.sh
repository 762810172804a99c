#!/usr/bin/env bash
# The peers' own test suites, from each peer's sdist at the version constraints.txt pins, run
# against aiofast's drop-in (aiolimiter vs AsyncLimiter, circuitbreaker vs circuit, async-lru vs
# alru_cache, cachetools' LRU/TTL tests vs LRUCache/TTLCache) and against the peer itself (to show
# the suite is healthy), with a per-test timeout. scripts/peers/aiofast_peer_shim.py makes
# `import aiolimiter` (etc.) inside the suite resolve to aiofast's drop-in; the only tests left
# out are listed, each with its reason, in scripts/peers/deselected.txt.
#   bash scripts/peers.sh .venv-3.13/bin/python [more venv pythons...]
#   PEERS_ONLY=aiolimiter PEERS_TARGETS=aiofast bash scripts/peers.sh PY   # one suite, one target
#   bash scripts/peers.sh --list                                         # the suites' names
#   PEERS_PYTEST_ARGS="-x --tb=short" bash scripts/peers.sh PY                # more pytest options
# The sdists are cached in $AIOFAST_PEERS_CACHE (default ~/.cache/aiofast-peers), outside the
# checkout. One "peers: ..." line per suite and target; exit status 1 if any run against aiofast
# fails, or any run against the peer itself does.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CACHE=${AIOFAST_PEERS_CACHE:-$HOME/.cache/aiofast-peers}
TIMEOUT=${PEERS_TIMEOUT:-30}

# peer name (pip), import name, test paths
SUITES=(
    "aiolimiter aiolimiter tests"
    "circuitbreaker circuitbreaker tests"
    "async-lru async_lru tests"
    "cachetools cachetools tests/test_lru.py tests/test_ttl.py"
)

# the sdist of NAME==VERSION, unpacked; prints its directory
peer_sdist() {
    local py="$1" name="$2" version="$3" dir
    dir="$CACHE/${name//-/_}-$version"
    if [ ! -d "$dir/tests" ]; then
        mkdir -p "$CACHE"
        local tmp
        tmp=$(mktemp -d "$CACHE/dl.XXXXXX") || return 1
        "$py" -m pip download -q --disable-pip-version-check --no-binary :all: --no-deps \
            -d "$tmp" "$name==$version" 2>&1 | grep -v "^WARNING: Location" >&2
        local tgz
        tgz=$(ls "$tmp"/*.tar.gz 2>/dev/null | head -1)
        if [ -z "$tgz" ]; then
            echo "error: no sdist of $name==$version" >&2
            rm -rf "$tmp"
            return 1
        fi
        tar xzf "$tgz" -C "$tmp" && rm -rf "$dir" && mv "$tmp"/*/ "$dir"
        rm -rf "$tmp"
    fi
    echo "$dir"
}

# run_peer_suite PY PEER IMPORT TARGET(aiofast|peer) PATHS...: prints the summary line
run_peer_suite() {
    local py="$1" peer="$2" mod="$3" target="$4"
    shift 4
    local version dir log
    version=$("$py" -c "import importlib.metadata as m; print(m.version('$peer'))") || return 1
    dir=$(peer_sdist "$py" "$peer" "$version") || return 1
    log=$(mktemp)
    local deselect=()
    while read -r p node _; do
        if [ "$p" = "$mod" ]; then
            # a whole file is ignored (not even imported), a test deselected
            case "$node" in
                *::*) deselect+=(--deselect "$node") ;;
                *) deselect+=(--ignore "$node") ;;
            esac
        fi
    done < <(grep -v '^#' scripts/peers/deselected.txt)
    local shim=""
    [ "$target" = aiofast ] && shim="$mod"
    local pyabs
    pyabs=$(cd "$(dirname "$py")" && pwd)/$(basename "$py")
    (cd "$dir" && AIOFAST_PEER_SHIM="$shim" PYTHONPATH="$ROOT/scripts/peers" \
        "$pyabs" -m pytest -c "$ROOT/scripts/peers/pytest.ini" --rootdir . -p aiofast_peer_shim --timeout "$TIMEOUT" \
        -q ${PEERS_PYTEST_ARGS:-} "${deselect[@]}" "$@") >"$log" 2>&1
    local rc=$?
    local summary
    summary=$(grep -v "^$" "$log" | tail -1)
    summary=${summary//=/}
    echo "${summary# }"  # pytest's closing line, for scripts/_summary.sh
    echo "peers: $("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])') $peer $version vs $target: $([ $rc = 0 ] && echo PASS || echo FAIL) (${summary# })"
    if [ $rc != 0 ] && [ -n "${PEERS_VERBOSE:-1}" ]; then
        grep -E "^(FAILED|ERROR)" "$log" | sed 's/^/    /'
        grep -E "^E " "$log" | head -20 | sed 's/^/    /'  # what the first failures said
    fi
    rm -f "$log"
    return $rc
}

if [ "${1:-}" = "--list" ]; then
    for s in "${SUITES[@]}"; do echo "${s%% *}"; done
    exit 0
fi
status=0
for py in "$@"; do
    for s in "${SUITES[@]}"; do
        read -r peer mod paths <<<"$s"
        if [ -n "${PEERS_ONLY:-}" ] && [ "$peer" != "$PEERS_ONLY" ]; then
            continue
        fi
        for target in ${PEERS_TARGETS:-peer aiofast}; do
            # shellcheck disable=SC2086
            run_peer_suite "$py" "$peer" "$mod" "$target" $paths || status=1
        done
    done
done
exit $status
