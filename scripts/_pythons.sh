# Sourced by the scripts: find_python VERSION prints the interpreter for "3.11" etc., or fails.
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

# make_venv VERSION EXTRAS: a venv in .venv-VERSION with aiofast[EXTRAS] installed from this tree
make_venv() {
    local v="$1" extras="$2" py venv
    py=$(find_python "$v") || return 1
    venv=".venv-$v"
    if [ ! -x "$venv/bin/python" ]; then
        "$py" -m venv "$venv" || return 1
    fi
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -U pip setuptools wheel || return 1
    "$venv/bin/python" -m pip install -q --disable-pip-version-check ".[$extras]" || return 1
    echo "$venv/bin/python"
}

# make_flavour_venv VERSION NAME: a venv in .venv-NAME-VERSION (e.g. .venv-asan-3.11) with
# aiofast[test] installed from this tree, built with the flags in the environment
# (AIOFAST_DEBUG=1, AIOFAST_SANITIZE=..., CC=...). aiofast itself is always rebuilt and
# reinstalled, so the venv never runs a stale or differently flavoured build.
make_flavour_venv() {
    local v="$1" name="$2" py venv pipq
    py=$(find_python "$v") || return 1
    venv=".venv-$name-$v"
    pipq=(-m pip install -q --disable-pip-version-check)
    if [ ! -x "$venv/bin/python" ]; then
        "$py" -m venv "$venv" || return 1
        "$venv/bin/python" "${pipq[@]}" -U pip setuptools wheel || return 1
    fi
    "$venv/bin/python" "${pipq[@]}" ".[test]" || return 1
    "$venv/bin/python" "${pipq[@]}" --no-deps --force-reinstall --no-build-isolation . || return 1
    echo "$venv/bin/python"
}

# make_build_venv VERSION: a venv in .venv-build-VERSION with just the build tools (setuptools,
# wheel), for build-only checks (scripts/werror.sh). Prints the interpreter.
make_build_venv() {
    local v="$1" py venv
    py=$(find_python "$v") || return 1
    venv=".venv-build-$v"
    if [ ! -x "$venv/bin/python" ]; then
        "$py" -m venv "$venv" || return 1
        "$venv/bin/python" -m pip install -q --disable-pip-version-check -U pip setuptools wheel \
            || return 1
    fi
    echo "$venv/bin/python"
}

# split_args ARGS...: the Python versions before an optional "--" go to VERSIONS (all four when
# none is given), everything after it to PYTEST_ARGS (extra pytest arguments).
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
        VERSIONS=(3.10 3.11 3.12 3.13)
    fi
}

# run_suite PY PYTEST_ARGS...: the test suite from tests/, as scripts/test.sh runs it (so that
# `import aiofast` finds the venv's build, not the source tree). --capture=sys leaves the
# process's own stderr alone: a sanitizer report or a failed invariant check (both written
# straight to fd 2 just before the process dies) would otherwise vanish with pytest's capture.
run_suite() {
    local py="$1"
    shift
    (cd tests && "../$py" -m pytest -c ../pyproject.toml --rootdir .. -q -p no:randomly \
        --capture=sys "$@")
}
