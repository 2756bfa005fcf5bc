"""Build script: the package metadata lives in pyproject.toml.

The CUDA kernels in csrc/ become ``fastmix/backends/libfastmix_cuda.so``, a torch-free shared
library of C launchers that fastmix loads with ctypes (see csrc/README.md). They are
built when nvcc is found; a machine without nvcc gets the package without them
(the Triton and PyTorch backends still work, and ``fastmix info`` says why ``cuda`` is
not usable).

The C++ CPU kernels in csrc/cpu/ become ``fastmix/backends/libfastmix_cpu.so`` (the ``cpu``
backend, the default on CPU tensors, loaded with ctypes too), built when a C++ compiler is
found; without one, or when the build fails, the package installs without them (and the
``torch`` backend is the CPU default).

Environment:
  FASTMIX_CPU=0         never build the C++ CPU kernels
  FASTMIX_CPU=1         build them, and fail the install if that is impossible
  (unset)               build them when a C++ compiler is found; on a failed build warn and go on
  CXX                   the C++ compiler for them (default: c++, g++ or clang++ on PATH)
  FASTMIX_CPU_ARCH      -march for them (default "native": the library is built where it runs;
                        "none" leaves the compiler's default, e.g. for a wheel built elsewhere)
  FASTMIX_CUDA=0        never build the CUDA kernels
  FASTMIX_CUDA=1        build them, and fail the install if that is impossible
  (unset)               build them when nvcc is found; on a failed build warn and go on
  FASTMIX_CUDA_ARCH     e.g. "86;90" or "8.6 9.0+PTX" (default "80;86;89;90+PTX")
  FASTMIX_CUDA_WERROR=1 treat host-compiler and nvcc warnings as errors
  CUDA_HOME, NVCC       where to find nvcc
"""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
CSRC = "csrc"
LIB_NAME = "fastmix.backends.libfastmix_cuda"
LIB_FILE = os.path.join("fastmix", "backends", "libfastmix_cuda.so")
CPU_LIB_NAME = "fastmix.backends.libfastmix_cpu"
CPU_LIB_FILE = os.path.join("fastmix", "backends", "libfastmix_cpu.so")
DEFAULT_ARCH = "80;86;89;90+PTX"


def find_nvcc():
    if os.environ.get("NVCC"):
        return os.environ["NVCC"]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root and os.path.isfile(os.path.join(root, "bin", "nvcc")):
            return os.path.join(root, "bin", "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = os.path.join(os.sep, "usr", "local", "cuda", "bin", "nvcc")
    return default if os.path.isfile(default) else None


def parse_arch(spec):
    """'80;86;90+PTX' or '8.6 9.0' or 'sm_86,sm_90' -> nvcc -gencode flags."""
    flags = []
    for token in re.split(r"[;,\s]+", spec.strip()):
        if not token:
            continue
        ptx = token.upper().endswith("+PTX")
        token = token[:-4] if ptx else token
        digits = token.lower().replace("sm_", "").replace("compute_", "").replace(".", "")
        if not re.fullmatch(r"\d+[a-z]?", digits):
            raise ValueError(f"FASTMIX_CUDA_ARCH: cannot read {token!r} (use e.g. '86;90+PTX')")
        codes = f"sm_{digits},compute_{digits}" if ptx else f"sm_{digits}"
        flags += ["-gencode", f"arch=compute_{digits},code=[{codes}]"]
    if not flags:
        raise ValueError(f"FASTMIX_CUDA_ARCH names no architecture: {spec!r}")
    return flags


def nvcc_command(nvcc, sources, output, arch=None, werror=None, jobs=None):
    """The one nvcc call that compiles and links csrc into the shared library."""
    arch = arch if arch is not None else os.environ.get("FASTMIX_CUDA_ARCH") or DEFAULT_ARCH
    werror = werror if werror is not None else os.environ.get("FASTMIX_CUDA_WERROR") == "1"
    jobs = jobs or max(1, min(4, os.cpu_count() or 1))
    host = "-fPIC,-fvisibility=hidden,-Wall,-Wextra" + (",-Werror" if werror else "")
    cmd = [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", host, f"--threads={jobs}"]
    cmd += ["-cudart", "static", "-Xlinker", "--exclude-libs,ALL"]  # no cudart symbols clash with torch's
    if werror:
        cmd += ["-Werror", "all-warnings"]
    cmd += parse_arch(arch) + ["-o", str(output)] + [str(s) for s in sources]
    return cmd


class CudaLibrary(Extension):
    """A plain shared library built by nvcc (no Python module inside)."""


class CpuLibrary(Extension):
    """A plain shared library built by the C++ compiler (no Python module inside)."""


def cxx_command(cxx, sources, output, openmp=True, arch=None):
    """The one compiler call that builds csrc/cpu into the shared library. -ffp-contract=off:
    no fused multiply-adds, so element-wise ops round as PyTorch's do; -fno-trapping-math
    and -fno-math-errno let the compiler vectorise the loops with comparisons in them
    (the kernels never read floating-point exception flags or errno)."""
    arch = arch if arch is not None else os.environ.get("FASTMIX_CPU_ARCH") or "native"
    cmd = [cxx, "-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-trapping-math",
           "-fno-math-errno", "-Wall", "-Wextra"]
    if arch != "none":
        cmd.append(f"-march={arch}")
    if openmp:
        cmd.append("-fopenmp")
    return cmd + ["-o", str(output)] + [str(s) for s in sources]


def build_cpu_library(ext, output):
    """Build with OpenMP, else without (one thread); warn and go on when neither works."""
    sources = [HERE / s for s in ext.sources]
    for openmp in (True, False):
        cmd = cxx_command(ext.cxx, sources, output, openmp)
        print("fastmix: building the C++ CPU kernels:", " ".join(cmd), flush=True)
        try:
            subprocess.run(cmd, check=True, cwd=HERE)
            return
        except (OSError, subprocess.CalledProcessError) as exc:
            failure = exc
    if os.environ.get("FASTMIX_CPU", "").strip() == "1":
        raise RuntimeError(f"fastmix: FASTMIX_CPU=1 but building the C++ CPU kernels failed: {failure}") from failure
    print(f"fastmix: WARNING: building the C++ CPU kernels failed ({failure}); installing without them",
          file=sys.stderr)
    if output.exists():
        output.unlink()


class BuildExt(build_ext):
    def get_ext_filename(self, fullname):
        # a plain library name, no Python ABI suffix; setuptools asks with the full
        # dotted name and distutils with the last component alone
        if fullname == LIB_NAME:
            return LIB_FILE
        if fullname == LIB_NAME.rsplit(".", 1)[1]:
            return os.path.basename(LIB_FILE)
        if fullname == CPU_LIB_NAME:
            return CPU_LIB_FILE
        if fullname == CPU_LIB_NAME.rsplit(".", 1)[1]:
            return os.path.basename(CPU_LIB_FILE)
        return super().get_ext_filename(fullname)

    def build_extension(self, ext):
        if isinstance(ext, CpuLibrary):
            output = Path(self.get_ext_fullpath(ext.name))
            output.parent.mkdir(parents=True, exist_ok=True)
            return build_cpu_library(ext, output)
        if not isinstance(ext, CudaLibrary):
            return super().build_extension(ext)
        output = Path(self.get_ext_fullpath(ext.name))
        output.parent.mkdir(parents=True, exist_ok=True)
        sources = [HERE / s for s in ext.sources]
        cmd = nvcc_command(ext.nvcc, sources, output)
        print("fastmix: building the CUDA kernels:", " ".join(cmd), flush=True)
        start = time.time()
        try:
            subprocess.run(cmd, check=True, cwd=HERE)
        except (OSError, subprocess.CalledProcessError) as exc:
            if ext.required:
                raise RuntimeError(f"fastmix: FASTMIX_CUDA=1 but building csrc failed: {exc}") from exc
            print(
                f"fastmix: WARNING: building the CUDA kernels failed ({exc}); installing without them "
                "(set FASTMIX_CUDA=1 to make this an error)",
                file=sys.stderr,
            )
            if output.exists():
                output.unlink()
            return
        print(f"fastmix: CUDA kernels built in {time.time() - start:.0f} s", flush=True)


def cuda_extensions():
    mode = os.environ.get("FASTMIX_CUDA", "").strip()
    if mode not in ("", "0", "1"):
        raise RuntimeError(f"FASTMIX_CUDA must be 0, 1 or unset, got {mode!r}")
    if mode == "0":
        return []
    nvcc = find_nvcc()
    if nvcc is None:
        if mode == "1":
            raise RuntimeError("FASTMIX_CUDA=1 but nvcc was not found (set CUDA_HOME or NVCC, or put nvcc on PATH)")
        print("fastmix: nvcc not found; installing without the CUDA kernels", file=sys.stderr)
        return []
    parse_arch(os.environ.get("FASTMIX_CUDA_ARCH") or DEFAULT_ARCH)  # a bad value fails here, before any build
    sources = sorted(str(p.relative_to(HERE)) for p in (HERE / CSRC).glob("*.cu"))
    ext = CudaLibrary(LIB_NAME, sources=sources)
    ext.nvcc = nvcc
    ext.required = mode == "1"
    return [ext]


def cpu_extensions():
    mode = os.environ.get("FASTMIX_CPU", "").strip()
    if mode not in ("", "0", "1"):
        raise RuntimeError(f"FASTMIX_CPU must be 0, 1 or unset, got {mode!r}")
    if mode == "0":
        return []
    cxx = os.environ.get("CXX") or next((c for c in ("c++", "g++", "clang++") if shutil.which(c)), None)
    if cxx is None:
        if mode == "1":
            raise RuntimeError("FASTMIX_CPU=1 but no C++ compiler was found (set CXX, or put c++, g++ or clang++ "
                               "on PATH)")
        print("fastmix: no C++ compiler found; installing without the C++ CPU kernels", file=sys.stderr)
        return []
    ext = CpuLibrary(CPU_LIB_NAME,
                     sources=sorted(str(p.relative_to(HERE)) for p in (HERE / CSRC / "cpu").glob("*.cpp")))
    ext.cxx = cxx
    return [ext]


if __name__ == "__main__":
    setup(ext_modules=cpu_extensions() + cuda_extensions(), cmdclass={"build_ext": BuildExt})
