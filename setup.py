"""Build aiofast._core: every file in src/ links into one extension module.

Build flavours, chosen by environment variables (scripts/ use them; see the README, "Reliability"):
  AIOFAST_DEBUG=1                        -O0 -g3 -UNDEBUG: asserts and the FA_ASSERT_CONSISTENT
                                         invariant checks after every mutation
  AIOFAST_SANITIZE=address,undefined     -O1 -g -fsanitize=... (asserts off unless
                                         AIOFAST_DEBUG=1 too); run under
                                         LD_PRELOAD=libasan.so PYTHONMALLOC=malloc
  AIOFAST_WERROR=1                       -Werror
The flavour (and CC/CFLAGS) is remembered per output file: switching flavours always rebuilds,
so a sanitized build can never be mistaken for an up-to-date release build, or the reverse.
"""
import glob
import hashlib
import json
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

debug = os.environ.get("AIOFAST_DEBUG") == "1"
sanitize = os.environ.get("AIOFAST_SANITIZE")  # e.g. "address,undefined"
werror = os.environ.get("AIOFAST_WERROR") == "1"

extra_compile_args = ["-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                      "-std=c11"]
extra_link_args = []
undef_macros = []
if debug:
    extra_compile_args += ["-O0", "-g3", "-fno-omit-frame-pointer"]
    undef_macros.append("NDEBUG")
elif sanitize:
    # the sanitizers check memory and UB on (nearly) the release code; the invariant walks of
    # the debug build are a separate run (scripts/debug.sh), or add AIOFAST_DEBUG=1 for both
    extra_compile_args += ["-O1", "-g", "-fno-omit-frame-pointer"]
else:
    extra_compile_args += ["-O2"]
if sanitize:
    extra_compile_args.append(f"-fsanitize={sanitize}")
    extra_compile_args.append("-fno-sanitize-recover=all")
    extra_link_args.append(f"-fsanitize={sanitize}")
if werror:
    extra_compile_args.append("-Werror")

FLAVOUR = json.dumps({"args": extra_compile_args, "link": extra_link_args,
                      "undef": undef_macros, "cc": os.environ.get("CC"),
                      "cflags": os.environ.get("CFLAGS"), "ldflags": os.environ.get("LDFLAGS")})


class FlavouredBuildExt(build_ext):
    """build_ext that rebuilds whenever the flags differ from the ones that made the output
    (setuptools only compares timestamps, so an in-place sanitized .so would otherwise survive
    a later plain build)."""

    def build_extension(self, ext):
        out = os.path.abspath(self.get_ext_fullpath(ext.name))
        key = hashlib.sha1(out.encode()).hexdigest()[:16]
        stamp = os.path.join(os.path.abspath(self.build_temp), f"flavour-{key}.json")
        try:
            with open(stamp) as f:
                same = f.read() == FLAVOUR and os.path.exists(out)
        except OSError:
            same = False
        if not same:
            self.force = True
        super().build_extension(ext)
        os.makedirs(os.path.dirname(stamp), exist_ok=True)
        with open(stamp, "w") as f:
            f.write(FLAVOUR)


setup(
    cmdclass={"build_ext": FlavouredBuildExt},
    ext_modules=[
        Extension(
            "aiofast._core",
            sources=sorted(glob.glob("src/*.c")),
            depends=sorted(glob.glob("src/*.h")),
            include_dirs=["src"],
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
            undef_macros=undef_macros,
        )
    ],
)
