"""Build aiofast._core: every file in src/ links into one extension module."""
import glob
import os
import sys

from setuptools import Extension, setup

debug = os.environ.get("AIOFAST_DEBUG") == "1"
sanitize = os.environ.get("AIOFAST_SANITIZE")  # e.g. "address,undefined"
werror = os.environ.get("AIOFAST_WERROR") == "1"

extra_compile_args = ["-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-missing-field-initializers",
                      "-std=c11"]
extra_link_args = []
undef_macros = []
if debug or sanitize:
    extra_compile_args += ["-O0", "-g3", "-fno-omit-frame-pointer"]
    undef_macros.append("NDEBUG")
else:
    extra_compile_args += ["-O2"]
if sanitize:
    extra_compile_args.append(f"-fsanitize={sanitize}")
    extra_compile_args.append("-fno-sanitize-recover=all")
    extra_link_args.append(f"-fsanitize={sanitize}")
if werror:
    extra_compile_args.append("-Werror")

setup(
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
