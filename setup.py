"""Build script for gradchain's compiled extensions.

Environment switches:
  GRADCHAIN_DEBUG=1      bounds/wraparound/initialisation checks on, -O0 -g
  GRADCHAIN_NO_OPENMP=1  build without OpenMP (kernels then run single-threaded)
  GRADCHAIN_SANITIZE=1   AddressSanitizer + UndefinedBehaviorSanitizer build:
                         -fsanitize=address,undefined,float-cast-overflow
                         -fno-sanitize-recover=... -fno-omit-frame-pointer
                         -fno-wrapv -O1 -g (compile and link; -O0 with
                         GRADCHAIN_DEBUG).  The extensions then need the
                         ASan runtime loaded first: see .ci/sanitize, which
                         builds them in a scratch copy and runs the tests.

Without any, the build uses -O3 and OpenMP when the compiler supports it,
and no -march=native or -ffast-math: csrc/ dispatches SIMD at run time.

Optimisation level, in order of precedence (GCC and Clang obey the last -O
on the command line, and setup.py's arguments come after the CFLAGS, which
are Python's own, e.g. "-g -fwrapv -O3", extended or, with newer setuptools,
replaced by the CFLAGS environment variable):
  1. GRADCHAIN_SANITIZE / GRADCHAIN_DEBUG: their -O1/-O0 always wins, even
     over CFLAGS.
  2. A -O flag in the CFLAGS environment variable (e.g. CFLAGS=-O1): used
     as given; setup.py adds no -O of its own.
  3. Otherwise -O3.
"""
import os
import re
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
SANITIZE = os.environ.get("GRADCHAIN_SANITIZE", "") not in ("", "0")


def _user_sets_opt_level():
    """Whether the CFLAGS environment variable has its own -O flag (-O0..-O3,
    -Os, -Og, -Ofast, -O)."""
    return any(re.fullmatch(r"-O\w*", f)
               for f in os.environ.get("CFLAGS", "").split())


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
# -fno-trapping-math: gradchain never reads the FP exception flags nor traps
# on them, so the compiler may evaluate both sides of a select (the values
# are unchanged): without it GCC would not if-convert, and so not vectorise,
# the branch-free tanh of csrc/gc_maps_impl.h below AVX-512 (measured: 17
# ns -> 11 ns per element, gc.Tanh() of a 256 x 64 float64 block).
compile_args = ["-std=c99", "-ffp-contract=fast", "-fno-trapping-math"]
link_args = []
if use_openmp:
    compile_args.append("-fopenmp")
    link_args.append("-fopenmp")
# The optimisation flag goes last, so that it is the one in force (see the
# precedence in the module docstring): setuptools puts the CFLAGS (Python's,
# -O3 for most builds of CPython, and/or the user's) before these.
if SANITIZE:
    # -fno-sanitize-recover: a UBSan finding aborts the process (a test run
    # fails), instead of printing and carrying on.  float-cast-overflow (a
    # double too big for the integer it is cast to) is not in GCC's
    # "undefined" group.  -fno-wrapv undoes Python's -fwrapv (in its CFLAGS),
    # which defines signed overflow as wrap-around and so hides overflowing
    # size arithmetic from UBSan.
    san = ["-fsanitize=address,undefined,float-cast-overflow",
           "-fno-sanitize-recover=undefined,float-cast-overflow",
           "-fno-omit-frame-pointer"]
    compile_args += san + ["-fno-wrapv"] + (["-O0", "-g"] if DEBUG else ["-O1", "-g"])
    link_args += san
elif DEBUG:
    compile_args += ["-O0", "-g"]
if not (SANITIZE or DEBUG) and sys.platform.startswith("linux"):
    # release builds: no symbol tables or debug info in the extensions
    # (Python's own CFLAGS carry -g; the unstripped .so were 14 MB)
    link_args.append("-s")
elif not _user_sets_opt_level():
    compile_args += ["-O3"]

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
                 "csrc/gc_sparse.h", "csrc/gc_sparse_impl.h",
                 "csrc/gc_maps.h", "csrc/gc_maps_impl.h", "csrc/gc_checked.h",
                 "gradchain/_sizes.pxd", "gradchain/_link.pxd",
                 "gradchain/_kernels.pxd", "gradchain/_blas.pxd",
                 "gradchain/_bracket.pxd", "gradchain/_accumulate.pxd",
                 "gradchain/_propagate.pxd", "gradchain/_bind.pxd"],
        include_dirs=include_dirs,
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        libraries=list(libraries),
    )


# The layers, bottom up (each module's one job: README, "Design"):
libm = [] if sys.platform == "win32" else ["m"]
extensions = [
    # kernels: dense vector products (C), the link model and the kernels of
    # the other link kinds (C), the one BLAS door
    ext("gradchain._kernels", ["gradchain/_kernels.pyx", "csrc/gc_dense.c"]),
    ext("gradchain._link", ["gradchain/_link.pyx", "csrc/gc_struct.c", "csrc/gc_sparse.c",
                            "csrc/gc_maps.c"], libraries=libm),
    ext("gradchain._blas", ["gradchain/_blas.pyx"]),
    # engine: what runs (strategy), propagation, accumulation
    ext("gradchain._bracket", ["gradchain/_bracket.pyx"]),
    ext("gradchain._propagate", ["gradchain/_propagate.pyx"]),
    ext("gradchain._accumulate", ["gradchain/_accumulate.pyx"]),
    # binding and the two front doors: chains and map programmes
    ext("gradchain._bind", ["gradchain/_bind.pyx"]),
    ext("gradchain._chain", ["gradchain/_chain.pyx"]),
    ext("gradchain._program", ["gradchain/_program.pyx", "csrc/gc_maps.c"],
        libraries=libm),
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

    def build_extensions(self):
        # A shared-library CPython's LDSHARED carries -Wl,-rpath,<its lib
        # folder>: a RUNPATH into the build machine's Python in every
        # extension (and so in a wheel), where they need nothing.
        self.compiler.linker_so = [a for a in self.compiler.linker_so
                                   if not a.startswith("-Wl,-rpath")]
        super().build_extensions()

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
