"""Build the benchmark-only probe extension (emptycm) next to this file, for this Python."""
import os
import sys
import sysconfig

HERE = os.path.dirname(os.path.abspath(__file__))


def load():
    """Import emptycm, building it first if this Python has no build of it, or one older than
    its source (which lacks what the benchmarks now call). The check looks at the file, not at
    an imported module: an extension module once imported stays the one this process sees, even
    after its file is rebuilt."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    built = os.path.join(HERE, "emptycm" + sysconfig.get_config_var("EXT_SUFFIX"))
    source = os.path.join(HERE, "emptycm.c")
    if os.path.exists(built) and os.path.getmtime(built) >= os.path.getmtime(source):
        import emptycm
        return emptycm
    if os.path.exists(built):
        os.remove(built)
    from setuptools import Extension
    from setuptools.dist import Distribution

    dist = Distribution({"ext_modules": [Extension("emptycm", [os.path.join(HERE, "emptycm.c")],
                                                   extra_compile_args=["-O2"])]})
    cmd = dist.get_command_obj("build_ext")
    cmd.inplace = 0
    cmd.build_lib = HERE
    cmd.build_temp = os.path.join(HERE, "build")
    cmd.ensure_finalized()
    cmd.run()
    import importlib

    importlib.invalidate_caches()
    import emptycm
    return emptycm


if __name__ == "__main__":
    print(load())
