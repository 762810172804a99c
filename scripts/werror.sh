#!/usr/bin/env bash
# Warnings as errors: compile aiofast with -Wall -Wextra -Werror (AIOFAST_WERROR=1) with gcc and
# with clang, as the release build and as the debug build (whose invariant checkers exist only
# there), for each Python. Build only, into a temporary directory: nothing is installed and the
# in-place build is untouched. The builds run WERROR_JOBS at a time (default: one per core).
#
#   bash scripts/werror.sh                 # 3.10 to 3.15 (3.14, 3.15: in scripts/newpython.sh's chroot)
#   bash scripts/werror.sh 3.13            # some versions
#   COMPILERS="clang" bash scripts/werror.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_pythons.sh
split_args "$@"
read -r -a compilers <<< "${COMPILERS:-gcc clang}"
status=0
pkgs=""
[[ " ${compilers[*]} " != *" clang "* ]] || pkgs="clang"
run_chroot_part "$pkgs" scripts/werror.sh || status=1
if [ ${#VERSIONS[@]} -gt 0 ]; then
    for cc in "${compilers[@]}"; do
        if ! command -v "$cc" >/dev/null; then
            echo "error: $cc not found (apt-get install -y $cc)" >&2
            exit 1
        fi
    done
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/aiofast-werror.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
jobs=${WERROR_JOBS:-$(nproc)}

build_one() {  # PY VERSION CC FLAVOUR: one -Werror build; its verdict goes to a .rc file
    local py="$1" v="$2" cc="$3" flavour="$4" dbg=0 out="$tmp/$2-$3-$4"
    [ "$flavour" = debug ] && dbg=1
    if CC="$cc" AIOFAST_WERROR=1 AIOFAST_DEBUG=$dbg "$py" setup.py -q build_ext \
            --build-lib "$out/lib" --build-temp "$out/tmp" >"$out.log" 2>&1; then
        echo 0 >"$out.rc"
    else
        echo 1 >"$out.rc"
    fi
}

builds=()
for v in "${VERSIONS[@]}"; do
    py=$(make_build_venv "$v") || { echo "=== -Werror, Python $v: NO PYTHON"; status=1; continue; }
    for cc in "${compilers[@]}"; do
        for flavour in release debug; do
            while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
                wait -n || true
            done
            build_one "$py" "$v" "$cc" "$flavour" &
            builds+=("$v $cc $flavour")
        done
    done
done
wait
for b in "${builds[@]}"; do
    read -r v cc flavour <<< "$b"
    out="$tmp/$v-$cc-$flavour"
    if [ "$(cat "$out.rc" 2>/dev/null)" = 0 ]; then
        echo "=== -Werror, Python $v, $cc, $flavour: ok"
    else
        echo "=== -Werror, Python $v, $cc, $flavour: FAILED"
        grep -v "^WARNING: Location" "$out.log" | tail -40
        status=1
    fi
done
exit $status
