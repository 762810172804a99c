#!/usr/bin/env bash
# Pythons newer than the host's (3.14, 3.15) from Debian's unstable suite, in a chroot kept OUTSIDE
# the checkout (their C library is newer than the host's, so they cannot run on the host itself).
#
#   bash scripts/newpython.sh ensure           # build the chroot (or reuse it), nothing else
#   bash scripts/newpython.sh has 3.14         # exit 0 if the chroot is there with python3.14
#   bash scripts/newpython.sh run CMD ARGS...  # CMD in the chroot, in a copy of this work tree
#   bash scripts/newpython.sh fetch GLOB...     # copy what `run` wrote (e.g. benchmark results) back
#   bash scripts/newpython.sh path             # print the chroot's directory
#
# The chroot (AIOFAST_CHROOT, default /var/tmp/aiofast-sid) is made once with debootstrap (about
# 40 s and 750 MB; debootstrap is installed with apt-get when missing) and reused afterwards. The
# mirror is the host's own Debian mirror, read from its apt sources at run time (AIOFAST_MIRROR
# overrides it). `run` copies the host's resolv.conf and CA bundle in, binds /proc and /dev (and
# unmounts them when it ends, however it ends), copies this work tree (every tracked or
# untracked-but-not-ignored file, uncommitted changes included) to /work/NAME in the chroot (NAME:
# this work tree's directory name)
# and runs CMD there (a mount namespace of its own keeps concurrent runs apart). The venvs (.venv-3.X), the build directories and pip's cache (/root/.cache)
# live in the chroot and survive between runs; the other files of the copy are replaced each time.
# Extra Debian packages for CMD: NEWPYTHON_PACKAGES="clang valgrind" (installed once, if missing).
# scripts/test.sh and the reliability scripts call this for a Python the host does not have.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${AIOFAST_CHROOT:-/var/tmp/aiofast-sid}
NEW_VERSIONS="3.14 3.15"
# the scripts' settings a command run in the chroot sees (the rest of the environment stays out)
PASS_VARS="PYTHONS PY AIOFAST_SUMMARY_ROWS SHOWCASE_ARGS BENCH_ARGS TEST_JOBS HYPOTHESIS_PROFILE STEPS COMPILERS WERROR_JOBS VALGRIND_TESTS
           VALGRIND_JOBS ASAN_OPTIONS_EXTRA AIOFAST_DEBUG AIOFAST_SANITIZE AIOFAST_WERROR CC CFLAGS
           http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL
           PIP_DEFAULT_TIMEOUT"
PACKAGES="gcc,libc6-dev,ca-certificates"
for v in $NEW_VERSIONS; do
    PACKAGES="$PACKAGES,python$v,python$v-dev,python$v-venv,libpython$v-testsuite"
done

host_mirror() {  # the host's Debian mirror (first non-security archive in its apt sources)
    local f line
    if [ -n "${AIOFAST_MIRROR:-}" ]; then echo "$AIOFAST_MIRROR"; return 0; fi
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        while read -r line; do
            case "$line" in
                URIs:*) for u in ${line#URIs:}; do
                            case "$u" in *security*|*debug*|*ports*) ;; */debian|*/debian/) echo "${u%/}"; return 0;; esac
                        done;;
            esac
        done <"$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -e "$f" ] || continue
        while read -r -a w; do
            [ "${w[0]:-}" = deb ] || continue
            for u in "${w[@]:1}"; do
                case "$u" in \[*) continue;; *security*|*debug*|*ports*) break;; */debian|*/debian/) echo "${u%/}"; return 0;; esac
            done
        done <"$f"
    done
    echo "error: no Debian mirror in the host's apt sources (set AIOFAST_MIRROR)" >&2
    return 1
}

chroot_ready() {
    local v
    [ -e "$DIR/.aiofast-ready" ] || return 1
    for v in $NEW_VERSIONS; do
        [ -x "$DIR/usr/bin/python$v" ] || return 1
    done
}

ensure() {
    chroot_ready && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "error: building the chroot needs root" >&2
        return 1
    fi
    if ! command -v debootstrap >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap
    fi
    local mirror t0=$SECONDS
    mirror=$(host_mirror)
    echo "=== newpython: debootstrap sid into $DIR from $mirror"
    rm -rf "$DIR"
    mkdir -p "$DIR"
    # (debootstrap's own log goes to $DIR/debootstrap/debootstrap.log, printed on failure)
    if ! debootstrap --variant=minbase --include="$PACKAGES" sid "$DIR" "$mirror" >"$DIR.log" 2>&1; then
        tail -30 "$DIR.log"
        [ -e "$DIR/debootstrap/debootstrap.log" ] && tail -30 "$DIR/debootstrap/debootstrap.log"
        echo "error: debootstrap failed" >&2
        return 1
    fi
    touch "$DIR/.aiofast-ready"
    echo "=== newpython: chroot ready in $((SECONDS - t0))s, $(du -sh "$DIR" | cut -f1)"
}

MOUNTED=()
unmount_all() {
    local i
    for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do
        umount -l "${MOUNTED[$i]}" 2>/dev/null || true
    done
    MOUNTED=()
}

bind() {  # bind SRC into the chroot, at the same path
    mkdir -p "$DIR$1"
    if ! mountpoint -q "$DIR$1"; then
        mount --bind "$1" "$DIR$1"
        MOUNTED+=("$DIR$1")
    fi
}

copy_dir() {  # where this work tree's copy lives in the chroot (one per work tree)
    echo "/work/$(basename "$PWD")"
}

copy_tree() {  # this work tree to the chroot, keeping the venvs, builds and caches there
    local dst="$DIR$(copy_dir)" f
    mkdir -p "$dst"
    find "$dst" -mindepth 1 -maxdepth 1 ! -name '.venv-*' ! -name '.build-*' \
        ! -name '.hypothesis' -exec rm -rf {} +
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
            [ -e "$f" ] && printf '%s\0' "$f"
        done | tar --null -T - -cf - | tar -xf - -C "$dst"
    else
        tar --exclude='./.venv-*' --exclude='./.build-*' --exclude=./build --exclude=./.git \
            -cf - . | tar -xf - -C "$dst"
    fi
}

prepare() {  # what `run` needs in the chroot before it enters it
    cp -L /etc/resolv.conf "$DIR/etc/resolv.conf"
    if [ -e /etc/ssl/certs/ca-certificates.crt ]; then
        mkdir -p "$DIR/etc/ssl/certs"
        cp -L /etc/ssl/certs/ca-certificates.crt "$DIR/etc/ssl/certs/ca-certificates.crt"
    fi
    local p missing=()
    for p in ${NEWPYTHON_PACKAGES:-}; do
        chroot "$DIR" dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        # (a snapshot mirror serves Release files past their Valid-Until date: accepted, as
        # debootstrap does)
        echo "=== newpython: installing ${missing[*]} in the chroot"
        chroot "$DIR" env DEBIAN_FRONTEND=noninteractive PATH=/usr/sbin:/usr/bin:/sbin:/bin sh -c \
            'apt-get -o Acquire::Check-Valid-Until=false update -qq &&
             apt-get install -y -qq --no-install-recommends "$@" >/dev/null' \
            sh "${missing[@]}"
    fi
}

run() {
    ensure
    # one run at a time per work tree (they share its copy in the chroot); others wait here
    mkdir -p "$DIR/work"
    exec 9>"$DIR/work/.$(basename "$PWD").lock"
    if ! flock -n 9; then
        echo "=== newpython: waiting for another run from this work tree to end"
        flock 9
    fi
    copy_tree
    # In a mount namespace of its own when the host allows it: the binds vanish with the command
    # however it ends, and runs from several work trees at once do not unmount each other's.
    if [ -z "${NEWPYTHON_NS:-}" ] && unshare -m true 2>/dev/null; then
        NEWPYTHON_NS=1 exec unshare -m bash scripts/newpython.sh _enter "$@"
    fi
    enter "$@"
}

enter() {
    trap unmount_all EXIT INT TERM
    bind /proc
    bind /dev
    mountpoint -q /dev/pts && bind /dev/pts
    mountpoint -q /dev/shm && bind /dev/shm
    prepare
    local rc=0 v envs=()
    for v in $PASS_VARS; do
        [ -n "${!v:-}" ] && envs+=("$v=${!v}")
    done
    local commit
    commit=$(git rev-parse --short HEAD 2>/dev/null || true)
    [ -z "$commit" ] || envs+=("AIOFAST_COMMIT=$commit")  # (for the benchmarks' JSON)
    chroot "$DIR" env -i HOME=/root TERM="${TERM:-dumb}" LANG=C.UTF-8 \
        PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        AIOFAST_IN_CHROOT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 "${envs[@]}" \
        sh -c 'cd "$0" && exec "$@"' "$(copy_dir)" "$@" || rc=$?
    unmount_all
    trap - EXIT INT TERM
    return $rc
}

fetch() {  # copy files the last `run` wrote in the chroot's copy (globs, relative) back here
    local src="$DIR$(copy_dir)" pat f n=0
    for pat in "$@"; do
        for f in "$src"/$pat; do
            [ -e "$f" ] || continue
            mkdir -p "$(dirname "${f#"$src"/}")"
            cp -a "$f" "${f#"$src"/}"
            n=$((n + 1))
        done
    done
    echo "=== newpython: $n file(s) copied back from the chroot"
}

case "${1:-}" in
    ensure) ensure ;;
    has) chroot_ready && [ -x "$DIR/usr/bin/python${2:?version}" ] ;;
    path) echo "$DIR" ;;
    versions) echo "$NEW_VERSIONS" ;;
    run) shift; run "$@" ;;
    fetch) shift; fetch "$@" ;;
    _enter) shift; enter "$@" ;;
    *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
