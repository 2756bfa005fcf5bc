"""The CUDA kernels compile, export their launchers and carry the promised GPU code.

Runs on any machine with nvcc (no GPU needed): csrc/ is compiled for sm_86 and
sm_90 with host and nvcc warnings as errors, the library must export every
launcher fastmix/backends/cuda_backend.py binds, and ``cuobjdump --list-elf`` must show both
architectures. Skipped where nvcc is missing unless FASTMIX_REQUIRE_NVCC=1 (CI).
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from repo_files import ROOT, load

from fastmix.backends import cuda_backend

SETUP = load("setup.py", "fastmix_setup")  # setup() runs only under __main__
NVCC = SETUP.find_nvcc()


def _skip_or_fail(reason):
    if os.environ.get("FASTMIX_REQUIRE_NVCC") == "1":
        pytest.fail(f"{reason} (FASTMIX_REQUIRE_NVCC=1)")
    pytest.skip(reason)


def find_cuobjdump():
    """cuobjdump from PATH, CUDA_HOME, nvcc's directory, Triton's wheel or nvidia-cuda-cuobjdump."""
    candidates = [shutil.which("cuobjdump")]
    if NVCC:
        candidates.append(str(Path(NVCC).resolve().parent / "cuobjdump"))
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "cuobjdump"))
    for package, sub in (("triton", "backends/nvidia/bin/cuobjdump"), ("nvidia", "cuda_cuobjdump/bin/cuobjdump")):
        spec = importlib.util.find_spec(package)
        for location in (spec.submodule_search_locations or []) if spec else []:
            candidates.append(os.path.join(location, sub))
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


@pytest.fixture(scope="module")
def built_library(tmp_path_factory):
    if NVCC is None:
        _skip_or_fail("nvcc not found: the CUDA kernels cannot be compiled here")
    out = tmp_path_factory.mktemp("cuda") / "libfastmix_cuda.so"
    sources = sorted((ROOT / "csrc").glob("*.cu"))
    assert sources, "csrc/ holds no .cu files"
    cmd = SETUP.nvcc_command(NVCC, sources, out, arch="86;90", werror=True, jobs=2)
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, f"nvcc failed:\n{' '.join(cmd)}\n{result.stdout}\n{result.stderr}"
    return out


def test_compiles_without_warnings(built_library):
    assert built_library.stat().st_size > 0


def test_exports_every_launcher(built_library):
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm (binutils) is not installed")
    listing = subprocess.run([nm, "-D", "--defined-only", str(built_library)], capture_output=True, text=True,
                             check=True)
    exported = {line.split()[-1] for line in listing.stdout.splitlines() if line.strip()}
    missing = set(cuda_backend.LAUNCHERS) - exported
    assert not missing, f"launchers not exported: {sorted(missing)}"
    # only the C interface: no CUDA runtime symbols that could clash with torch's
    assert not [s for s in exported if s.startswith("cuda")], sorted(s for s in exported if s.startswith("cuda"))


def test_carries_code_for_both_architectures(built_library):
    tool = find_cuobjdump()
    if tool is None:
        _skip_or_fail("no cuobjdump found (install triton or nvidia-cuda-cuobjdump)")
    listing = subprocess.run([tool, "--list-elf", str(built_library)], capture_output=True, text=True, check=True)
    for arch in ("sm_86", "sm_90"):
        assert arch in listing.stdout, f"no {arch} code in the library:\n{listing.stdout}"


def _cuobjdump(built_library, *args):
    tool = find_cuobjdump()
    if tool is None:
        _skip_or_fail("no cuobjdump found (install triton or nvidia-cuda-cuobjdump)")
    return subprocess.run([tool, *args, str(built_library)], capture_output=True, text=True, check=True).stdout


def test_no_float64_math_and_vector_atomics_on_sm90(built_library):
    # float64 runs at 1/64 rate on sm_86: no kernel may do float64 arithmetic per element
    # (float64 atomic adds, one per block, and conversions of float64 inputs are fine)
    for arch in ("sm_86", "sm_90"):
        sass = _cuobjdump(built_library, "-sass", "-arch", arch)
        assert "REDG.E.ADD" in sass or "RED.E.ADD" in sass, f"no {arch} SASS listed"
        doubles = sorted(set(re.findall(r"\b(DFMA|DADD|DMUL)\b", sass)))
        assert not doubles, f"{arch} kernels do float64 arithmetic: {doubles}"
        vector_atomics = re.search(r"RED\w*\.E\.ADD\.F32x4", sass) is not None
        assert vector_atomics == (arch == "sm_90"), f"{arch}: 16-byte atomic adds {vector_atomics}"


def test_no_kernel_spills(built_library):
    # cuobjdump -res-usage: every kernel's registers fit (no local memory, no stack)
    usage = _cuobjdump(built_library, "-res-usage")
    kernels = re.findall(r"Function (\S+):\s*\n?\s*REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage)
    assert kernels, usage[:2000]
    spilling = [(name, reg, stack, local) for name, reg, stack, local in kernels if int(stack) or int(local)]
    assert not spilling, spilling


def test_loss_carries_l2_eviction_hints(tmp_path):
    # the fused loss's grid path asks L2 to keep what the next launch reads again and to
    # drop last reads and gradient stores (sm_80+ PTX; the emulation cannot see this)
    if NVCC is None:
        _skip_or_fail("nvcc not found: the CUDA kernels cannot be compiled here")
    out = tmp_path / "loss.ptx"
    cmd = [NVCC, "-ptx", "-O3", "-std=c++17", "-arch=sm_90", "-o", str(out), str(ROOT / "csrc" / "loss.cu")]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    ptx = out.read_text()
    for kernel in ("loss_mix_terms_kernel", "loss_rows_kernel", "loss_grad_kernel"):
        bodies = [b for b in ptx.split(".entry")[1:] if kernel in b.split("(")[0]]
        assert bodies, f"{kernel} not in the PTX"
        for body in bodies:
            assert "ld.global.L2::cache_hint" in body, kernel
            assert "st.global.L2::cache_hint" in body or kernel == "loss_mix_terms_kernel", kernel
            policies = set(re.findall(r"createpolicy\.fractional\.L2::(evict_\w+)", body))
            assert policies == ({"evict_last"} if kernel == "loss_mix_terms_kernel" else
                                {"evict_first"} if kernel == "loss_grad_kernel" else {"evict_last", "evict_first"}), (
                kernel, policies)
    fused = [b for b in ptx.split(".entry")[1:] if "loss_fused_kernel" in b.split("(")[0]]
    assert fused and not any("cache_hint" in b for b in fused)  # the single block is left as it was


def test_loader_binds_the_library(built_library):
    # a fresh interpreter, since the library is loaded at import
    code = (
        "from fastmix.backends import cuda_backend as c; from fastmix import backends\n"
        "assert c.library_loaded(), c.load_error()\n"
        "print(c.load_error())\n"
        "print(backends()['cuda'].reason)\n"
    )
    env = dict(os.environ, FASTMIX_CUDA_LIB=str(built_library))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                            check=False)
    assert result.returncode == 0, result.stderr
    err, reason = result.stdout.splitlines()[:2]
    if err != "None":  # no driver or no GPU here: the reason is reported, not an exception
        assert reason == err


def test_missing_library_is_explained():
    code = "from fastmix import backends; s = backends()['cuda']; print(s.usable, s.reason)"
    env = dict(os.environ, FASTMIX_CUDA_LIB=str(ROOT / "no-such-library.so"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("False") and "without its CUDA kernels" in result.stdout


@pytest.mark.parametrize(
    "spec,flags",
    [
        ("86;90", ["arch=compute_86,code=[sm_86]", "arch=compute_90,code=[sm_90]"]),
        ("8.0 9.0+PTX", ["arch=compute_80,code=[sm_80]", "arch=compute_90,code=[sm_90,compute_90]"]),
        ("sm_89", ["arch=compute_89,code=[sm_89]"]),
    ],
)
def test_arch_spec(spec, flags):
    assert SETUP.parse_arch(spec)[1::2] == flags


def test_bad_arch_spec_is_rejected():
    with pytest.raises(ValueError, match="FASTMIX_CUDA_ARCH"):
        SETUP.parse_arch("ampere")


def test_build_modes(monkeypatch):
    monkeypatch.setattr(SETUP, "find_nvcc", lambda: None)
    monkeypatch.delenv("FASTMIX_CUDA_ARCH", raising=False)
    monkeypatch.setenv("FASTMIX_CUDA", "")
    assert SETUP.cuda_extensions() == []  # no nvcc: a working package without the kernels
    monkeypatch.setenv("FASTMIX_CUDA", "1")
    with pytest.raises(RuntimeError, match="nvcc was not found"):
        SETUP.cuda_extensions()
    monkeypatch.setenv("FASTMIX_CUDA", "yes")
    with pytest.raises(RuntimeError, match="FASTMIX_CUDA must be"):
        SETUP.cuda_extensions()
    monkeypatch.setattr(SETUP, "find_nvcc", lambda: "nvcc")
    monkeypatch.setenv("FASTMIX_CUDA", "0")
    assert SETUP.cuda_extensions() == []
    monkeypatch.setenv("FASTMIX_CUDA", "1")
    (ext,) = SETUP.cuda_extensions()
    assert ext.required and sorted(ext.sources) == sorted(f"csrc/{p.name}" for p in (ROOT / "csrc").glob("*.cu"))
    monkeypatch.setenv("FASTMIX_CUDA_ARCH", "volta")
    with pytest.raises(ValueError, match="FASTMIX_CUDA_ARCH"):
        SETUP.cuda_extensions()


def test_cpu_build_modes(monkeypatch, tmp_path):
    """FASTMIX_CPU=1 makes a missing compiler or a failed build an error, as FASTMIX_CUDA=1 does."""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("FASTMIX_CPU", "")
    (ext,) = SETUP.cpu_extensions()
    output = tmp_path / "lib.so"
    SETUP.build_cpu_library(ext, output)  # unset: warn and install without the library
    assert not output.exists()
    monkeypatch.setenv("FASTMIX_CPU", "1")
    with pytest.raises(RuntimeError, match="FASTMIX_CPU=1 but building"):
        SETUP.build_cpu_library(ext, output)
    monkeypatch.delenv("CXX")
    monkeypatch.setattr(SETUP.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        SETUP.cpu_extensions()
    monkeypatch.setenv("FASTMIX_CPU", "")
    assert SETUP.cpu_extensions() == []
    monkeypatch.setenv("FASTMIX_CPU", "yes")
    with pytest.raises(RuntimeError, match="FASTMIX_CPU must be"):
        SETUP.cpu_extensions()
