# Sourced by the scripts. Every supported Python, oldest first (the default of every script):
ALL_PYTHONS="3.10 3.11 3.12 3.13 3.14 3.15"

# find_python VERSION prints the interpreter for "3.11" etc., or fails.
find_python() {
    local v="$1" p root
    if command -v pyenv >/dev/null 2>&1; then
        root=$(pyenv root)
    else
        root="${PYENV_ROOT:-$HOME/.pyenv}"
    fi
    for p in "$root"/versions/"$v".*/bin/python"$v" "$root"/versions/"$v"/bin/python"$v"; do
        if [ -x "$p" ]; then echo "$p"; return 0; fi
    done
    if command -v "python$v" >/dev/null 2>&1; then command -v "python$v"; return 0; fi
    echo "error: Python $v not found (pyenv root: $root)" >&2
    return 1
}

# pip_quiet PY ARGS...: PY -m pip install -q ARGS, without the notes about configured package
# locations that do not exist on this machine (they are not the project's)
pip_quiet() {
    local py="$1"
    shift
    "$py" -m pip install -q --disable-pip-version-check "$@" \
        2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
}

# chroot_only VERSION: true when this host has no Python VERSION but scripts/newpython.sh's chroot
# provides it (and we are not already inside that chroot): the script then runs itself there,
# for that version, through run_in_chroot.
chroot_only() {
    [ -z "${AIOFAST_IN_CHROOT:-}" ] || return 1
    find_python "$1" >/dev/null 2>&1 && return 1
    case " $(bash scripts/newpython.sh versions) " in *" $1 "*) return 0 ;; esac
    return 1
}

# run_in_chroot "PACKAGES" COMMAND...: COMMAND in the chroot, in a copy of this work tree, with
# these extra Debian packages installed there (e.g. "clang valgrind"; "" for none).
run_in_chroot() {
    local pkgs="$1"
    shift
    NEWPYTHON_PACKAGES="$pkgs" bash scripts/newpython.sh run "$@"
}

# run_chroot_part "PACKAGES" SCRIPT: for the scripts that take versions (split_args): the versions
# of VERSIONS that only the chroot has run SCRIPT there, all in one chroot run, with PYTEST_ARGS
# (and PACKAGES installed there); VERSIONS keeps the others, for the caller to run here.
# Returns the chroot run's status (0 when there was nothing to run there).
run_chroot_part() {
    local pkgs="$1" script="$2" v host=() away=()
    for v in "${VERSIONS[@]}"; do
        if chroot_only "$v"; then away+=("$v"); else host+=("$v"); fi
    done
    VERSIONS=("${host[@]}")
    [ ${#away[@]} -gt 0 ] || return 0
    echo "=== Python ${away[*]}: not on this host, $script in the chroot (scripts/newpython.sh)"
    run_in_chroot "$pkgs" bash "$script" "${away[@]}" -- "${PYTEST_ARGS[@]}"
}

# make_venv VERSION EXTRAS: a venv in .venv-VERSION with aiofast[EXTRAS] installed from this tree
make_venv() {
    local v="$1" extras="$2" py venv
    py=$(find_python "$v") || return 1
    venv=".venv-$v"
    if [ ! -x "$venv/bin/python" ]; then
        "$py" -m venv "$venv" || return 1
    fi
    # every dependency at the exact version constraints.txt names (the oracles included)
    pip_quiet "$venv/bin/python" -c constraints.txt -U pip setuptools wheel || return 1
    pip_quiet "$venv/bin/python" -c constraints.txt ".[$extras]" || return 1
    echo "$venv/bin/python"
}

# make_flavour_build VERSION NAME: aiofast built with the flags in the environment
# (AIOFAST_DEBUG=1, AIOFAST_SANITIZE=..., CC=...) into .build-NAME-VERSION/ (the package's Python
# files and the flavoured extension, always rebuilt from scratch), to run with the test venv
# .venv-VERSION (made by make_venv if it is missing or incomplete): PYTHONPATH=that directory puts
# it ahead of the venv's release install. One venv per Python serves every flavour, so the
# reliability steps install nothing more. Sets FLAVOUR_PY (the interpreter) and FLAVOUR_PATH.
make_flavour_build() {
    local v="$1" name="$2" venv=".venv-$1" dir=".build-$2-$1"
    if ! "$venv/bin/python" -c "import pytest, xdist, hypothesis, uvloop, aiofast" 2>/dev/null; then
        make_venv "$v" test >/dev/null || return 1
    fi
    rm -rf "$dir"
    mkdir -p "$dir"
    cp -r python/aiofast "$dir/aiofast"
    rm -f "$dir"/aiofast/*.so
    "$venv/bin/python" setup.py -q build_ext --build-lib "$dir" --build-temp "$dir/tmp" \
        2>&1 | grep -v "^WARNING: Location" || true
    if ! compgen -G "$dir/aiofast/_core*.so" >/dev/null; then
        echo "error: the $name build for Python $v failed" >&2
        return 1
    fi
    FLAVOUR_PY="$PWD/$venv/bin/python"
    FLAVOUR_PATH="$PWD/$dir"
    local where
    # (found, not imported: a sanitized build imports only with its runtime preloaded)
    where=$(cd tests && PYTHONPATH="$FLAVOUR_PATH" "$FLAVOUR_PY" -c \
        'import importlib.util as u; print(u.find_spec("aiofast").origin)')
    if [[ "$where" != "$FLAVOUR_PATH"/* ]]; then
        echo "error: tests would import $where, not the $name build" >&2
        return 1
    fi
}

# make_build_venv VERSION: an interpreter with the build tools (setuptools, wheel), for build-only
# checks (scripts/werror.sh): the test venv .venv-VERSION if it is there, else a venv in
# .venv-build-VERSION with just those. Prints the interpreter.
make_build_venv() {
    local v="$1" py venv
    if .venv-"$v"/bin/python -c "import setuptools" 2>/dev/null; then
        echo ".venv-$v/bin/python"
        return 0
    fi
    py=$(find_python "$v") || return 1
    venv=".venv-build-$v"
    if [ ! -x "$venv/bin/python" ]; then
        "$py" -m venv "$venv" || return 1
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt \
            -U pip setuptools wheel || return 1
    fi
    echo "$venv/bin/python"
}

# split_args ARGS...: the Python versions before an optional "--" go to VERSIONS (ALL_PYTHONS
# when none is given), everything after it to PYTEST_ARGS (extra pytest arguments).
split_args() {
    VERSIONS=()
    PYTEST_ARGS=()
    while [ $# -gt 0 ]; do
        if [ "$1" = "--" ]; then
            shift
            PYTEST_ARGS=("$@")
            break
        fi
        VERSIONS+=("$1")
        shift
    done
    if [ ${#VERSIONS[@]} -eq 0 ]; then
        read -r -a VERSIONS <<< "$ALL_PYTHONS"
    fi
}

# run_suite PY PYTEST_ARGS...: the test suite from tests/, as scripts/test.sh runs it (so that
# `import aiofast` finds the venv's build, or PYTHONPATH's, not the source tree), on
# TEST_JOBS pytest-xdist workers (default: one per core; TEST_JOBS=0: in one process).
# --capture=sys leaves the process's own stderr alone: a sanitizer report or a failed invariant
# check (both written straight to fd 2 just before the process dies) would otherwise vanish with
# pytest's capture.
run_suite() {
    local py="$1"
    shift
    # (an absolute path: from 3.14 a venv's interpreter started as ../.venv-X/bin/python warns
    # that sys.prefix is not what it expected, and every subprocess of the tests inherits it)
    [[ "$py" = /* ]] || py="$PWD/$py"
    (cd tests && "$py" -m pytest -c ../pyproject.toml --rootdir .. -q -p no:randomly \
        --capture=sys -n "${TEST_JOBS:-auto}" "$@")
}
