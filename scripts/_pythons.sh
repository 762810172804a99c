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
