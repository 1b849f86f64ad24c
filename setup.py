"""Build script for gradchain's compiled extensions.

Environment switches:
  GRADCHAIN_DEBUG=1      bounds/wraparound/initialisation checks on, -O0 -g
  GRADCHAIN_NO_OPENMP=1  build without OpenMP (kernels then run single-threaded)

Without either, the build uses -O3 and OpenMP when the compiler supports it,
and no -march=native or -ffast-math: csrc/ dispatches SIMD at run time.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

DEBUG = os.environ.get("GRADCHAIN_DEBUG", "") not in ("", "0")
NO_OPENMP = os.environ.get("GRADCHAIN_NO_OPENMP", "") not in ("", "0")


def _compiler_accepts(flag):
    """Whether the C compiler builds and links a tiny OpenMP program with flag."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "t.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
        cmd = cc.split() + [flag, src, "-o", os.path.join(tmp, "t")]
        return subprocess.run(cmd, capture_output=True).returncode == 0
    except OSError:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


use_openmp = (not NO_OPENMP and sys.platform != "win32"
              and _compiler_accepts("-fopenmp"))

# -ffp-contract=fast lets GCC fuse a*b+c into FMA (it is off under -std=c99);
# it is not -ffast-math: no reassociation, NaN/Inf semantics kept.
compile_args = ["-std=c99", "-ffp-contract=fast"]
compile_args += ["-O0", "-g"] if DEBUG else ["-O3"]
link_args = []
if use_openmp:
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")

macros = [
    ("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION"),
    ("NPY_TARGET_VERSION", "NPY_2_0_API_VERSION"),
]
include_dirs = ["csrc", np.get_include()]


def ext(name, sources, libraries=()):
    return Extension(
        name,
        sources=sources,
        depends=["csrc/gc_simd.h", "csrc/gc_instantiate.h", "csrc/gc_dense.h", "csrc/gc_dense_impl.h",
                 "csrc/gc_struct.h", "csrc/gc_struct_impl.h",
                 "csrc/gc_maps.h", "csrc/gc_maps_impl.h",
                 "gradchain/_kernels.pxd", "gradchain/_structured.pxd",
                 "gradchain/_accumulate.pxd"],
        include_dirs=include_dirs,
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        libraries=list(libraries),
    )


extensions = [
    ext("gradchain._kernels", ["gradchain/_kernels.pyx", "csrc/gc_dense.c"]),
    ext("gradchain._structured", ["gradchain/_structured.pyx", "csrc/gc_struct.c"]),
    ext("gradchain._accumulate", ["gradchain/_accumulate.pyx"]),
    ext("gradchain._plan", ["gradchain/_plan.pyx", "csrc/gc_maps.c"],
        libraries=[] if sys.platform == "win32" else ["m"]),
    ext("gradchain._chain", ["gradchain/_chain.pyx"]),
]

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
}

class build_ext_and_copy(build_ext):
    """Also copy the built extensions into the source tree (as an in-place
    build would), so that ``pip install . && python -m gradchain`` works when
    run from a checkout, where ``python -m`` finds ./gradchain before the
    installed copy.  The copies are ignored by git."""

    def run(self):
        super().run()
        if not self.inplace:
            try:
                self.copy_extensions_to_source()
            except OSError as exc:      # a read-only checkout: skip
                print(f"note: extensions not copied into the source tree: {exc}")


setup(
    cmdclass={"build_ext": build_ext_and_copy},
    ext_modules=cythonize(extensions, compiler_directives=directives),
    package_data={"gradchain": ["py.typed", "*.pyi", "*.pxd"]},
)
