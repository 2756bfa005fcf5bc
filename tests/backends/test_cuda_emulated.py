"""The CUDA kernels of csrc/, run on the host by tests/cuda_emulate.h, against the reference.

No GPU here, so csrc/ is also compiled with g++ against a small emulation of the CUDA
features it uses (threads, __syncthreads, warp shuffles, atomics, launch limits):
the same kernel source, its indexing, reductions, NaN handling and index checks run
through fastmix/backends/cuda_backend.py on CPU tensors. It says nothing about speed, and the
float16/bfloat16 arithmetic is the headers' host emulation. Skipped where g++ or the
CUDA headers are missing, or with FASTMIX_SKIP_EMULATION=1.
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import spec64
import torch
from filelock import FileLock
from inputs import noncontiguous, seeded, targets
from tolerance import assert_as_accurate

from fastmix.backends import cuda_backend, torch_backend

ROOT = Path(__file__).resolve().parents[2]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _cuda_include():
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            yield Path(os.environ[var]) / "include"
    nvcc = shutil.which("nvcc")
    if nvcc:
        yield Path(nvcc).resolve().parent.parent / "include"
    yield Path("/usr/local/cuda/include")


# The emulated library's builds: the plain one and sm_90's vector atomics.
BUILDS = {"libfastmix_cuda_emu.so": (), "libfastmix_cuda_emu_v.so": ("-DFASTMIX_EMULATE_VECTOR_ATOMICS",)}


def build_emulated(tmp_path_factory, name: str) -> Path:
    """The emulated library ``name`` (one of :data:`BUILDS`), built once per test run: the
    pytest-xdist workers share the builds (about 30 s of g++ each, run side by side), under
    a file lock, in a folder named by a hash of the commands and of every source and
    header they read."""
    if os.environ.get("FASTMIX_SKIP_EMULATION") == "1":
        pytest.skip("FASTMIX_SKIP_EMULATION=1")
    gxx = shutil.which("g++")
    include = next((p for p in _cuda_include() if (p / "cuda_fp16.h").is_file()), None)
    if gxx is None or include is None:
        pytest.skip("g++ or the CUDA headers (cuda_fp16.h) not found: cannot emulate the kernels")
    sources = sorted(str(p) for p in (ROOT / "csrc").glob("*.cu")) + [str(ROOT / "tests" / "cuda_emulate.cpp")]
    base = [gxx, "-std=c++20", "-O1", "-fPIC", "-shared", "-pthread", "-DFASTMIX_EMULATE", "-Wall", "-Wextra",
            "-Wno-unknown-pragmas", f"-I{include}", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'tests'}"]
    commands = {lib: [*base, *extra, "-x", "c++", "-include", "cuda_emulate.h", *sources]
                for lib, extra in BUILDS.items()}
    digest = hashlib.sha256(repr(sorted(commands.items())).encode())
    read = [*sources, *(ROOT / "csrc").glob("*.cuh"), *(ROOT / "csrc").glob("*.h"), ROOT / "tests" / "cuda_emulate.h"]
    for path in sorted(map(str, read)):
        digest.update(Path(path).read_bytes())
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    folder = root / f"emu-{digest.hexdigest()[:16]}"
    with FileLock(str(folder) + ".lock"):
        if not (folder / name).exists():
            folder.mkdir(parents=True, exist_ok=True)
            running = {lib: subprocess.Popen([*cmd, "-o", str(folder / (lib + ".tmp"))], stderr=subprocess.PIPE,
                                             text=True) for lib, cmd in commands.items()}
            for lib, proc in running.items():
                _, err = proc.communicate()
                assert proc.returncode == 0, f"g++ failed:\n{' '.join(commands[lib])}\n{err[-4000:]}"
                (folder / (lib + ".tmp")).rename(folder / lib)
    return folder / name


@pytest.fixture(scope="module")
def emulated_library(tmp_path_factory):
    prebuilt = os.environ.get("FASTMIX_EMULATED_LIB")  # e.g. an AddressSanitizer build, see csrc/README.md
    if prebuilt:
        return Path(prebuilt)
    return build_emulated(tmp_path_factory, "libfastmix_cuda_emu.so")


@pytest.fixture
def emu(emulated_library, monkeypatch):
    """fastmix.backends.cuda_backend bound to the emulated library, taking CPU tensors."""
    monkeypatch.setenv("FASTMIX_CUDA_LIB", str(emulated_library))
    lib, err = cuda_backend._load()
    assert err is None, err
    monkeypatch.setattr(cuda_backend, "_LIB", lib)
    monkeypatch.setattr(cuda_backend, "_ERROR", None)
    monkeypatch.setattr(cuda_backend, "_EMULATED", True)
    monkeypatch.setattr(cuda_backend, "_flag_addresses", {})
    yield cuda_backend
    cuda_backend.check_index_error()  # a test that left the flag set fails here


def _counters(lib_path):
    """(kernel launches, vector accesses) of the emulated library since the last call."""
    lib = ctypes.CDLL(str(lib_path))
    launches, vectors = ctypes.c_uint64(), ctypes.c_uint64()
    lib.fastmix_emu_counters(ctypes.byref(launches), ctypes.byref(vectors))
    return launches.value, vectors.value


def _poison(t):
    return t.fill_(float("nan")) if t.is_floating_point() else t


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
@pytest.mark.parametrize("C", [1, 2, 10, 100, 1000, 1001])
@pytest.mark.parametrize("B", [1, 3, 32, 257])
def test_contrastive(emu, B, C, kind, dtype):
    if B > 64 and dtype != torch.float32:
        pytest.skip("emulation is slow: float32 covers the large-batch path, small batches the half types")
    gen = seeded("contrastive", B, C, kind)
    pool = B + 5
    logits = (torch.randn(B, C, generator=gen) * 3).to(dtype)
    if (B + C) % 2:
        logits = noncontiguous(logits)
    q_f, q_r = targets(kind, B, C, gen), targets(kind, pool, C, gen)
    perm = torch.randint(0, pool, (B,), generator=gen)
    perm[0] = perm[-1]
    lam = torch.rand(B, generator=gen) if C % 2 else torch.rand((), generator=gen)
    if B > 2 and lam.dim() == 1:
        lam[0], lam[1] = 0.0, 1.0
    reduction = "mean" if B % 2 else "sum"
    loss, grad = emu.contrastive_forward(logits, q_f, q_r, lam, perm, 0.3, reduction, True)
    loss_r, grad_r = torch_backend.contrastive_forward(logits, q_f, q_r, lam, perm, 0.3, reduction, True)
    exact, (exact_grad,) = spec64.with_grads(
        lambda z: spec64.contrastive(z, q_f, q_r, lam, 0.3, perm=perm, reduction=reduction), logits
    )
    assert loss.dtype == torch.float32 and loss.dim() == 0 and grad.dtype == dtype and grad.shape == (B, C)
    assert_as_accurate(loss, loss_r, exact, dtype, "loss")
    assert_as_accurate(grad, grad_r, exact_grad, dtype, "grad")
    loss_n, empty = emu.contrastive_forward(logits, q_f, q_r, lam, perm, 0.3, reduction, False)
    assert empty.numel() == 0 and torch.equal(loss_n, loss)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
@pytest.mark.parametrize("C", [1, 10, 1001])
@pytest.mark.parametrize("B_r,B_f", [(1, 1), (32, 3), (3, 257), (600, 40)])
def test_real(emu, B_r, B_f, C, kind, dtype):
    if B_r + B_f > 64 and dtype != torch.float32:
        pytest.skip("emulation is slow: float32 covers the large-batch path, small batches the half types")
    gen = seeded("real", B_r, B_f, C, kind)
    z_r = (torch.randn(B_r, C, generator=gen) * 3).to(dtype)
    z_f = noncontiguous((torch.randn(B_f, C, generator=gen) * 3).to(dtype))
    q_r, q_f = targets(kind, B_r, C, gen), targets(kind, B_f, C, gen)
    if kind == "probabilities":
        q_f = q_f.t().contiguous().t()  # column-major targets
    reduction = "mean" if C % 2 else "sum"
    loss, g_r, g_f = emu.real_forward(z_r, z_f, q_r, q_f, 5.0, reduction, True)
    ref = torch_backend.real_forward(z_r, z_f, q_r, q_f, 5.0, reduction, True)
    exact, exact_grads = spec64.with_grads(
        lambda a, b: spec64.real(a, b, q_r, q_f, 5.0, reduction=reduction), z_r, z_f
    )
    assert_as_accurate(loss, ref[0], exact, dtype, "loss")
    assert_as_accurate(g_r, ref[1], exact_grads[0], dtype, "grad retain")
    assert_as_accurate(g_f, ref[2], exact_grads[1], dtype, "grad forget")


LOSS_SIZES = [  # (B, B_r, C): one block (<= 4096 logits), the grid (warp or block rows), vector or scalar
    (1, 1, 1), (32, 32, 10), (5, 9, 12), (33, 40, 1000), (40, 50, 101), (3, 4, 1500),
    (520, 3, 8),  # more row pairs than the emulated persistent grid (2 SMs) holds: its blocks loop
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
@pytest.mark.parametrize("omega", [0.0, 2.5])
@pytest.mark.parametrize("B,B_r,C", LOSS_SIZES)
def test_loss_forward(emu, B, B_r, C, omega, kind, dtype):
    if (B + B_r) * C > 8192 and dtype != torch.float32:
        pytest.skip("emulation is slow: float32 covers the grid paths, small batches the half types")
    gen = seeded("loss", B, B_r, C, kind, omega)
    z_mix = (torch.randn(B, C, generator=gen) * 3).to(dtype)
    z_r = (torch.randn(B_r, C, generator=gen) * 3).to(dtype)
    z_f = (torch.randn(B, C, generator=gen) * 3).to(dtype)
    if C % 2:
        z_mix = noncontiguous(z_mix)
    if B % 2:
        z_f = noncontiguous(z_f)
    q_f, q_r = targets(kind, B, C, gen), targets(kind, B_r, C, gen)
    if kind == "probabilities" and C % 3 == 0:
        q_r = q_r.t().contiguous().t()  # column-major targets
    perm = torch.randint(0, B_r, (B,), generator=gen) if B_r != B or C % 2 else None
    lam = torch.rand(B, generator=gen) if C % 5 else torch.rand((), generator=gen).expand(B)
    reduction = "mean" if (B + C) % 2 else "sum"
    real = (z_r, z_f) if omega else (None, None)
    args = (z_mix, real[1], real[0], q_f, q_r, lam, perm, 0.7, 5.0, omega, reduction)
    loss, g_mix, g_f, g_r = emu.loss_forward(*args, True)
    ref = torch_backend.loss_forward(*args, True)

    def exact_fn(a, b, c):
        value = spec64.contrastive(a, q_f, q_r, lam, 0.7, perm=perm, reduction=reduction)
        return value + omega * spec64.real(b, c, q_r, q_f, 5.0, reduction=reduction)

    exact, exact_grads = spec64.with_grads(exact_fn, z_mix, z_r, z_f)
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert g_mix.dtype == dtype and g_mix.shape == (B, C) and g_mix.is_contiguous()
    assert_as_accurate(loss, ref[0], exact, dtype, "loss")
    assert_as_accurate(g_mix, ref[1], exact_grads[0], dtype, "grad mix")
    if omega:
        assert g_r.shape == (B_r, C) and g_f.shape == (B, C) and g_r.dtype == g_f.dtype == dtype
        assert_as_accurate(g_f, ref[2], exact_grads[2], dtype, "grad forget")
        assert_as_accurate(g_r, ref[3], exact_grads[1], dtype, "grad retain")
    else:
        assert g_f.numel() == 0 and g_r.numel() == 0
    no_grad = emu.loss_forward(*args, False)
    assert all(t.numel() == 0 for t in no_grad[1:]) and torch.equal(no_grad[0], loss)


def test_loss_forward_rejects_shapes_the_kernels_would_overrun(emu):
    z = torch.randn(4, 5)
    q = torch.randint(0, 5, (4,))
    lam = torch.rand(4)
    cases = {
        "forget_target": (z, z, z, q[:3], q, lam, None),
        "retain_target": (z, z, z, q, torch.rand(4, 6), lam, None),
        "forget_logits": (z, z[:3], z, q, q, lam, None),
        "retain_logits": (z, z, torch.randn(4, 6), q, q, lam, None),
        "lam": (z, z, z, q, q, torch.rand(3), None),
        "perm": (z, z, z, q, q, lam, torch.tensor([0, 1])),
    }
    for name, args in cases.items():
        with pytest.raises(ValueError, match=name):
            emu.loss_forward(*args, 1.0, 1.0, 2.0, "sum", True)


def test_loss_launches(emu, emulated_library):
    # (32, 10): L_mix + omega * L_real, 96 rows, in one kernel launch; C_tau alone as well
    gen = seeded("launches")
    z = torch.randn(3, 32, 10, generator=gen)
    q = torch.randint(0, 10, (32,), generator=gen)
    lam = torch.rand(32, generator=gen)
    _counters(emulated_library)
    emu.loss_forward(z[0], z[1], z[2], q, q, lam, torch.randperm(32, generator=gen), 10.0, 5.0, 10.0, "sum", True)
    assert _counters(emulated_library)[0] == 1
    emu.contrastive_forward(z[0], q, q, lam, None, 1.0, "sum", True)
    assert _counters(emulated_library)[0] == 1
    # past one block: mixed rows' forget terms, the rows, the forget rows' gradients and the loss
    big = torch.randn(3, 300, 100, generator=gen)
    qb, lb = q.repeat(10)[:300], torch.rand(300, generator=gen)
    for with_grad in (True, False):
        emu.contrastive_forward(big[0], qb, qb, lb, None, 1.0, "sum", with_grad)
        assert _counters(emulated_library)[0] == 3
        emu.loss_forward(big[0], big[1], big[2], qb, qb, lb, None, 1.0, 2.0, 0.5, "sum", with_grad)
        assert _counters(emulated_library)[0] == 3
    emu.real_forward(big[0], big[1], qb, qb, 1.0, "sum", True)  # no mixed rows: no launch for them
    assert _counters(emulated_library)[0] == 2


GRID_LAYOUTS = {  # rows in each layout, and whether the kernels (one block or the grid) read them as 16-byte vectors
    "aligned": True, "row stride": True, "offset": False, "strided": False,
}


def _layout(t, layout):
    """The values of t (rows, C) in `layout`: contiguous; rows 16 bytes further apart than C;
    starting one element into the storage; every other element of a wider tensor."""
    B, C = t.shape
    if layout == "row stride":
        wide = torch.full((B, C + 16 // t.element_size()), float("nan"), dtype=t.dtype)
        wide[:, :C] = t
        return wide[:, :C]
    if layout == "offset":
        flat = torch.full((B * C + 1,), float("nan"), dtype=t.dtype)
        flat[1:] = t.reshape(-1)
        return flat[1:].view(B, C)
    return noncontiguous(t) if layout == "strided" else t.contiguous()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", list(GRID_LAYOUTS))
@pytest.mark.parametrize("kind", ["labels", "probabilities"])
@pytest.mark.parametrize("omega", [0.0, 1.5])
def test_loss_grid_layouts(emu, emulated_library, layout, kind, omega, dtype):
    # the grid path (95 rows of 64) with every logits and soft target tensor in one layout;
    # half logits with float32 targets read the targets 32 bytes (two accesses) at a time
    gen = seeded("grid layout", layout, kind, omega, dtype)
    B, B_r, C = 37, 21, 64
    z_mix, z_r, z_f = (_layout((torch.randn(n, C, generator=gen) * 3).to(dtype), layout) for n in (B, B_r, B))
    q_f, q_r = targets(kind, B, C, gen), targets(kind, B_r, C, gen)
    if kind == "probabilities":
        q_f, q_r = _layout(q_f, layout), _layout(q_r, layout)
    perm = torch.randint(0, B_r, (B,), generator=gen)
    lam = torch.rand(B, generator=gen)
    args = (z_mix, z_f, z_r, q_f, q_r, lam, perm, 0.4, 3.0, omega, "mean")
    _counters(emulated_library)
    loss, g_mix, g_f, g_r = emu.loss_forward(*args, True)
    assert (_counters(emulated_library)[1] > 0) == GRID_LAYOUTS[layout]
    ref = torch_backend.loss_forward(*args, True)

    def exact_fn(a, b, c):
        value = spec64.contrastive(a, q_f, q_r, lam, 0.4, perm=perm, reduction="mean")
        return value + omega * spec64.real(b, c, q_r, q_f, 3.0, reduction="mean")

    exact, exact_grads = spec64.with_grads(exact_fn, z_mix, z_r, z_f)
    assert_as_accurate(loss, ref[0], exact, dtype, "loss")
    assert_as_accurate(g_mix, ref[1], exact_grads[0], dtype, "grad mix")
    if omega:
        assert_as_accurate(g_f, ref[2], exact_grads[2], dtype, "grad forget")
        assert_as_accurate(g_r, ref[3], exact_grads[1], dtype, "grad retain")
    loss_c, g_c = emu.contrastive_forward(z_mix, q_f, q_r, lam, perm, 0.4, "sum", True)  # C_tau: mixed rows only
    ref_c = torch_backend.contrastive_forward(z_mix, q_f, q_r, lam, perm, 0.4, "sum", True)
    exact_c, (exact_gc,) = spec64.with_grads(lambda a: spec64.contrastive(a, q_f, q_r, lam, 0.4, perm=perm), z_mix)
    assert_as_accurate(loss_c, ref_c[0], exact_c, dtype, "C_tau loss")
    assert_as_accurate(g_c, ref_c[1], exact_gc, dtype, "C_tau grad")


def _trace(lib_path):
    """The accesses the emulated kernels made through load_hinted / store_hinted since tracing
    began, as rows of (launch, block, thread, address, bytes, policy, store)."""
    lib = ctypes.CDLL(str(lib_path))
    lib.fastmix_emu_trace_copy.restype = ctypes.c_uint64
    n = lib.fastmix_emu_trace_copy(None)
    out = (ctypes.c_uint64 * (7 * n))()
    lib.fastmix_emu_trace_copy(out)
    return torch.tensor(list(out), dtype=torch.int64).view(n, 7).tolist()


@pytest.mark.parametrize("kind", ["labels", "probabilities"])
def test_large_loss_traffic(emu, emulated_library, kind):
    # issue 11: the bytes of L_mix + omega * L_real on the grid path, from the kernels' own
    # loads and stores, per element of each logits, target and gradient tensor (as the Triton
    # test of the same name; a program here is the group of lanes that owns a row)
    import traffic

    gen = seeded("traffic", kind)
    B, C = 24, 64  # 72 rows of 64: past the single block
    z_mix, z_f, z_r = (torch.randn(B, C, generator=gen) for _ in range(3))
    q_f, q_r = targets(kind, B, C, gen), targets(kind, B, C, gen)
    # mix row i keeps towards q_r[i + 1]: never a row the same lanes read (a random perm sometimes is)
    perm, lam = torch.arange(B).roll(-1), torch.rand(B, generator=gen)
    lib = ctypes.CDLL(str(emulated_library))
    lib.fastmix_emu_trace(1)
    try:
        _, g_mix, g_f, g_r = emu.loss_forward(z_mix, z_f, z_r, q_f, q_r, lam, perm, 0.5, 2.0, 0.3, "sum", True)
    finally:
        lib.fastmix_emu_trace(0)
    lanes = 8  # lanes_for(64, 4) in csrc/common.cuh: a row of 64 floats, 16 bytes a lane at a time
    policies = {0: "", 1: "evict_last", 2: "evict_first"}
    programs, sizes = {}, {}  # launch -> (block, lane group) -> {(op, policy): element addresses}
    for launch, block, thread, address, size, policy, store in _trace(emulated_library):
        program = programs.setdefault(launch, {}).setdefault((block, thread // lanes), {})
        touched = program.setdefault(("store" if store else "load", policies[policy]), set())
        for element in range(address, address + size, 4):  # float32 tensors: 4-byte elements
            touched.add(element)
            sizes[element] = 4
    counter = traffic.recorded(
        [traffic.Launch(f"launch {k}", (), list(programs[k].values())) for k in sorted(programs)], sizes
    )
    named = {"z_mix": z_mix, "z_f": z_f, "z_r": z_r, "q_f": q_f, "q_r": q_r, "g_mix": g_mix, "g_f": g_f, "g_r": g_r}
    counts = counter.count(named)
    assert len(counts) == 3

    traffic.check_fused_loss_traffic(counts, named, kind, B, C)
    # the gradient stores go evict_first
    assert all(policy == 2 for *_, policy, store in _trace(emulated_library) if store)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vector_path_only_where_aligned(emu, emulated_library, dtype):
    # 16-byte accesses for contiguous aligned rows, element accesses otherwise; both agree
    gen = seeded("vector", dtype)
    C = 64
    logits = (torch.randn(8, C, generator=gen) * 3).to(dtype)
    q = targets("probabilities", 8, C, gen)
    lam = torch.rand(8, generator=gen)
    for layout, vector in GRID_LAYOUTS.items():
        z = _layout(logits, layout)
        _counters(emulated_library)
        got = emu.contrastive_forward(z, q, q, lam, None, 0.5, "sum", True)
        ref = torch_backend.contrastive_forward(z, q, q, lam, None, 0.5, "sum", True)
        assert (_counters(emulated_library)[1] > 0) == vector, layout
        torch.testing.assert_close(got, ref, rtol=1e-2, atol=2e-2 if dtype != torch.float32 else 1e-5)


@pytest.mark.parametrize("C", [5000, 32768])
def test_contrastive_long_rows(emu, C):
    gen = seeded("long", C)
    B = 2
    logits = torch.randn(B, C, generator=gen) * 4
    q_f, q_r = targets("probabilities", B, C, gen), targets("labels", B, C, gen)
    lam = torch.rand(B, generator=gen)
    loss, grad = emu.contrastive_forward(logits, q_f, q_r, lam, None, 0.05, "sum", True)
    ref = torch_backend.contrastive_forward(logits, q_f, q_r, lam, None, 0.05, "sum", True)
    exact, (eg,) = spec64.with_grads(lambda z: spec64.contrastive(z, q_f, q_r, lam, 0.05), logits)
    assert_as_accurate(loss, ref[0], exact, torch.float32, "loss")
    assert_as_accurate(grad, ref[1], eg, torch.float32, "grad")


def test_lambda_edges_and_nan(emu):
    gen = seeded("edges")
    z = torch.randn(6, 10, generator=gen)
    q = torch.randint(0, 10, (6,), generator=gen)
    for value in (0.0, 1.0):
        for lam in (torch.full((6,), value), torch.tensor(value), torch.tensor(value, dtype=torch.float64)):
            got = emu.contrastive_forward(z, q, q, lam, None, 0.1, "sum", True)
            ref = torch_backend.contrastive_forward(z, q, q, lam.float(), None, 0.1, "sum", True)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    z[3, 2] = float("nan")
    assert torch.isnan(emu.contrastive_forward(z, q, q, torch.tensor(0.5), None, 1.0, "sum", True)[0])
    assert torch.isnan(emu.real_forward(z, z[:2], q, q[:2], 1.0, "sum", True)[0])
    assert torch.isnan(emu.real_forward(z[:2], z, q[:2], q, 1.0, "sum", True)[0])
    assert torch.isnan(emu.sharpen_forward(z, 0.3)[3]).all()
    assert torch.isfinite(emu.sharpen_forward(z, 0.3)[[0, 1, 2, 4, 5]]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [1, 2, 10, 1000, 1001, 5000])
@pytest.mark.parametrize("B", [1, 3, 33])
def test_sharpen(emu, B, C, dtype):
    gen = seeded("sharpen", B, C)
    z = (torch.randn(B, C, generator=gen) * 3).to(dtype)
    if C % 2:
        z = noncontiguous(z)
    g = torch.randn(B, C, generator=gen).to(dtype)
    out = emu.sharpen_forward(z, 0.3)
    ref = torch_backend.sharpen_forward(z, 0.3)
    exact = spec64.sharpen(z.double(), 0.3)
    assert out.dtype == dtype and out.is_contiguous()
    assert_as_accurate(out, ref, exact, dtype, "sharpen")
    y64 = exact
    exact_g = y64 * (g.double() - (g.double() * y64).sum(-1, keepdim=True)) / 0.3
    assert_as_accurate(emu.sharpen_backward(g, ref, 0.3), torch_backend.sharpen_backward(g, ref, 0.3), exact_g,
                       dtype, "bwd")


def test_float64_goes_to_the_reference(emu):
    z = torch.randn(5, 7, dtype=torch.float64)
    q = torch.randint(0, 7, (5,))
    lam = torch.rand(5, dtype=torch.float64)
    torch.testing.assert_close(emu.sharpen_forward(z, 0.5), torch_backend.sharpen_forward(z, 0.5))
    torch.testing.assert_close(emu.contrastive_forward(z, q, q, lam, None, 0.5, "sum", True),
                               torch_backend.contrastive_forward(z, q, q, lam, None, 0.5, "sum", True))
    got = emu.loss_forward(z, z, z, q, q, lam, None, 0.5, 2.0, 1.5, "sum", True)
    assert got[0].dtype == torch.float64
    torch.testing.assert_close(got, torch_backend.loss_forward(z, z, z, q, q, lam, None, 0.5, 2.0, 1.5, "sum", True))


def test_sharpen_leading_dims(emu):
    x = torch.randn(4, 5, 6, 7).transpose(1, 2)
    torch.testing.assert_close(emu.sharpen_forward(x, 0.5), torch.softmax(x / 0.5, dim=-1))


MIXUP_SHAPES = [(1, 1, 5, 7), (3, 3, 8, 8), (5, 4, 9, 6), (2, 8, 4, 4)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("weight_kind", ["scalar", "per_sample", "mask"])
@pytest.mark.parametrize("shape", MIXUP_SHAPES)
@pytest.mark.parametrize("with_perm", [False, True])
def test_mixup(emu, shape, weight_kind, channels_last, dtype, with_perm):
    gen = seeded("mixup", shape, weight_kind, channels_last, with_perm)
    B, Cc, H, W = shape
    pool = B + 3 if with_perm else B
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x_f = torch.randn(shape, generator=gen).to(dtype).contiguous(memory_format=fmt)
    x_r = torch.randn((pool, Cc, H, W), generator=gen).to(dtype).contiguous(memory_format=fmt)
    wshape = {"scalar": (), "per_sample": (B,), "mask": (B, 1, H, W)}[weight_kind]
    weight = torch.rand(wshape, generator=gen)
    if weight_kind == "per_sample" and B > 1:
        weight[0], weight[-1] = 0.0, 1.0
    perm = None
    if with_perm:
        perm = torch.randint(0, pool, (B,), generator=gen)
        perm[-1] = perm[0]
    g = torch.randn(shape, generator=gen).to(dtype)
    out = emu.mixup_forward(x_f, x_r, weight, perm)
    assert out.is_contiguous(memory_format=fmt) and out.dtype == dtype
    exact = spec64.mixup(x_f, x_r, weight, perm)
    assert_as_accurate(out, torch_backend.mixup_forward(x_f, x_r, weight, perm), exact, dtype, "mixup")
    needs = (True, True, True)
    grads = emu.mixup_backward(g, x_f, x_r, weight, perm, needs)
    ref = torch_backend.mixup_backward(g, x_f, x_r, weight, perm, needs)
    leaves = [t.double().requires_grad_() for t in (x_f, x_r, weight)]
    exact_grads = torch.autograd.grad(spec64.mixup(*leaves, perm), leaves, g.double())
    for name, got, r, e in zip(("x_forget", "x_retain", "weight"), grads, ref, exact_grads):
        assert got.dtype == r.dtype and got.shape == r.shape, name
        assert_as_accurate(got, r, e, dtype, f"grad {name}")
    for i, need in enumerate(needs):  # each gradient alone
        only = tuple(j == i for j in range(3))
        alone = emu.mixup_backward(g, x_f, x_r, weight, perm, only)
        assert all(alone[j].numel() == 0 for j in range(3) if j != i)
        torch.testing.assert_close(alone[i], grads[i], rtol=1e-5, atol=1e-5)
    if weight_kind == "per_sample" and B > 1:
        assert torch.equal(out[-1], x_f[-1])
        assert torch.equal(out[0], x_r[perm[0] if with_perm else 0])


@pytest.fixture(scope="module")
def vector_atomics_library(tmp_path_factory):
    """The emulation built as for sm_90: gradients through perm by 16-byte atomic adds."""
    return build_emulated(tmp_path_factory, "libfastmix_cuda_emu_v.so")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inner", [3 * 8 * 8, 5 * 7])  # vector rows; element rows
def test_mixup_grad_through_perm_with_vector_atomics(emu, vector_atomics_library, monkeypatch, dtype, inner):
    monkeypatch.setenv("FASTMIX_CUDA_LIB", str(vector_atomics_library))
    lib, err = cuda_backend._load()
    assert err is None, err
    monkeypatch.setattr(cuda_backend, "_LIB", lib)
    gen = seeded("vatomic", dtype, inner)
    B, pool = 6, 4
    x_f = torch.randn(B, inner, generator=gen).to(dtype)
    x_r = torch.randn(pool, inner, generator=gen).to(dtype)
    w = torch.rand(B, generator=gen)
    perm = torch.tensor([0, 3, 3, 1, 0, 3])  # repeats: several rows add into one
    g = torch.randn(B, inner, generator=gen).to(dtype)
    _counters(vector_atomics_library)
    got = emu.mixup_backward(g, x_f, x_r, w, perm, (True, True, True))
    assert (_counters(vector_atomics_library)[1] > 0) == (inner % (16 // x_f.element_size()) == 0)
    ref = torch_backend.mixup_backward(g, x_f, x_r, w, perm, (True, True, True))
    leaves = [t.double().requires_grad_() for t in (x_f, x_r, w)]
    exact = torch.autograd.grad(spec64.mixup(*leaves, perm), leaves, g.double())
    for name, a, r, e in zip(("x_forget", "x_retain", "weight"), got, ref, exact):
        assert_as_accurate(a, r, e, dtype, name)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixup_flat_unaligned(emu, dtype):
    gen = seeded("flat", dtype)
    x_f = torch.randn(5, 3001, generator=gen).to(dtype)[1:]  # an offset that breaks 16-byte alignment
    x_r = torch.randn(4, 3001, generator=gen).to(dtype)
    w = torch.rand(4, generator=gen)
    got = emu.mixup_forward(x_f, x_r, w, None)
    torch.testing.assert_close(got, torch_backend.mixup_forward(x_f, x_r, w, None))
    g = torch.randn(4, 3001, generator=gen).to(dtype)
    for a, b in zip(emu.mixup_backward(g, x_f, x_r, w, None, (True, True, True)),
                    torch_backend.mixup_backward(g, x_f, x_r, w, None, (True, True, True))):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("B,B_r,C,row", [(520, 3, 8, 515), (520, 3, 8, 5), (3, 1, 1100, 1)],
                         ids=["row-515", "row-5", "block-rows"])
@pytest.mark.parametrize("where", ["mix", "forget"])
def test_a_nan_logit_on_the_grid_path_reaches_its_groups_loss_and_gradients(emu, where, B, B_r, C, row):
    # the grid path merges per-block partial log-sum-exps: a NaN term must survive the merge.
    # With 2 emulated SMs of 3 blocks (6 blocks of 64 rows of 8, 384 rows a sweep): row 515
    # is in launch 1's second sweep, row 5 in launch 2's (it runs last to first); with
    # C = 1100 a block owns one row, so the NaN row's block has a partial of that NaN alone
    gen = seeded("grid nan", where, B, C)
    z_mix, z_f, z_r = (torch.randn(n, C, generator=gen) for n in (B, B, B_r))
    (z_mix if where == "mix" else z_f)[row, 3] = float("nan")
    q_f, q_r = targets("labels", B, C, gen), targets("labels", B_r, C, gen)
    args = (z_mix, z_f, z_r, q_f, q_r, torch.rand(B, generator=gen), torch.randint(0, B_r, (B,), generator=gen),
            0.5, 2.0, 0.3, "sum", True)
    got, ref = emu.loss_forward(*args), torch_backend.loss_forward(*args)
    assert torch.isnan(got[0]) and torch.isnan(ref[0])
    for g, r in zip(got[1:], ref[1:]):
        assert torch.equal(torch.isnan(g), torch.isnan(r))


def test_bad_indices_are_flagged_never_followed(emu):
    z = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 7])
    lam = torch.tensor(0.5)
    loss, grad = emu.contrastive_forward(z, labels, labels, lam, None, 1.0, "sum", True)
    assert torch.isnan(loss) and torch.isnan(grad).all()
    with pytest.raises(IndexError, match="label"):
        emu.check_index_error()
    emu.check_index_error()  # cleared
    good = torch.tensor([0, 1, 2, 1])
    perm = torch.tensor([0, 1, 9, 2])
    loss, _ = emu.contrastive_forward(z, good, good, lam, perm, 1.0, "sum", True)
    assert torch.isnan(loss)
    with pytest.raises(IndexError, match="perm"):
        emu.check_index_error()
    loss, *_ = emu.real_forward(z, z, labels, labels - 10, 1.0, "sum", True)
    assert torch.isnan(loss)
    with pytest.raises(IndexError, match="label"):
        emu.check_index_error()
    # the fused loss: a bad keep label poisons the loss and its rows (keep terms do not couple)
    lam4 = torch.rand(4)
    loss, g_mix, g_f, g_r = emu.loss_forward(z, z, z, good, labels, lam4, None, 1.0, 1.0, 2.0, "sum", True)
    assert torch.isnan(loss) and torch.isnan(g_r[3]).all() and torch.isnan(g_mix[3]).all()
    assert torch.isfinite(g_r[:3]).all() and torch.isfinite(g_mix[:3]).all() and torch.isfinite(g_f).all()
    with pytest.raises(IndexError, match="label"):
        emu.check_index_error()
    loss, g_mix, g_f, g_r = emu.loss_forward(z, z, z, good, good, lam4, perm, 1.0, 1.0, 2.0, "sum", True)
    assert torch.isnan(loss) and torch.isnan(g_mix[2]).all() and torch.isfinite(g_mix[[0, 1, 3]]).all()
    assert torch.isfinite(g_r).all() and torch.isfinite(g_f).all()
    with pytest.raises(IndexError, match="perm"):
        emu.check_index_error()
    x = torch.randn(4, 2, 3, 3)
    out = emu.mixup_forward(x, x, torch.rand(4), torch.tensor([0, 1, -1, 2]))
    assert torch.isnan(out[2]).all() and torch.isfinite(out[[0, 1, 3]]).all()
    _, gr, gw = emu.mixup_backward(torch.ones_like(x), x, x, torch.rand(4), perm, (True, True, True))
    assert torch.isfinite(gr).all() and torch.isnan(gw[2]) and torch.isfinite(gw[[0, 1, 3]]).all()
    with pytest.raises(IndexError, match="perm"):
        emu.check_index_error()


def test_debug_checks_raise_at_the_op(emu):
    import fastmix

    z = torch.randn(4, 3)
    labels = torch.tensor([0, 1, 2, 3])
    with fastmix.debug_checks(True), pytest.raises(IndexError, match="contrastive_loss"):
        emu.contrastive_forward(z, labels, labels, torch.tensor(0.5), None, 1.0, "sum", True)


def test_outputs_are_fully_written(emu, monkeypatch):
    # every output starts as NaN: an element a kernel forgets to write shows
    real_empty, real_empty_like = torch.empty, torch.empty_like
    monkeypatch.setattr(torch, "empty", lambda *a, **k: _poison(real_empty(*a, **k)))
    monkeypatch.setattr(torch, "empty_like", lambda *a, **k: _poison(real_empty_like(*a, **k)))
    gen = seeded("poison")
    z = torch.randn(257, 1001, generator=gen)
    q = torch.randint(0, 1001, (257,), generator=gen)
    loss, grad = emu.contrastive_forward(z, q, q, torch.rand(257, generator=gen), None, 0.5, "sum", True)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    for B, C in ((32, 10), (40, 1000)):  # one block; the grid
        zs = torch.randn(3, B, C, generator=gen)
        qs = torch.randint(0, C, (B,), generator=gen)
        out = emu.loss_forward(zs[0], zs[1], zs[2], qs, qs, torch.rand(B, generator=gen), None, 0.5, 2.0, 3.0,
                               "mean", True)
        assert all(torch.isfinite(t).all() for t in out)
    assert torch.isfinite(emu.sharpen_forward(z[:5], 0.3)).all()
    x = torch.randn(3, 3, 8, 8, generator=gen).contiguous(memory_format=torch.channels_last)
    m = torch.rand(3, 1, 8, 8, generator=gen)
    assert torch.isfinite(emu.mixup_forward(x, x, m, None)).all()
    assert all(torch.isfinite(t).all() for t in emu.mixup_backward(x, x, x, m, None, (True, True, True)))


@pytest.fixture
def public_cuda(emu, monkeypatch):
    """The public functions with backend="cuda" reach the emulated kernels on CPU tensors."""
    import importlib

    backends = importlib.import_module("fastmix.backends")
    real = backends.backend_status

    def status(name, device=None):
        if name == "cuda":
            return backends.BackendStatus(name, True, "emulated CUDA kernels")
        return real(name, device)

    monkeypatch.setattr(backends, "backend_status", status)


def test_public_ops_through_torch_library(public_cuda):
    # the custom ops' contracts: no output aliases another, autograd, no-grad calls
    import fastmix

    gen = seeded("public")
    z = torch.randn(9, 7, generator=gen)
    labels = torch.randint(0, 7, (9,), generator=gen)
    with torch.no_grad():
        for backend in ("cuda", "torch"):
            fastmix.contrastive_loss(z, labels, labels, 0.4, 0.5, backend=backend)
            fastmix.real_loss(z, z[:4], labels, labels[:4], 2.0, backend=backend)
    leaf = z.clone().requires_grad_()
    loss = fastmix.real_loss(leaf, leaf[:4], labels, labels[:4], 2.0, backend="cuda")
    (g,) = torch.autograd.grad(loss * 3, leaf)
    leaf_r = z.clone().requires_grad_()
    (g_r,) = torch.autograd.grad(fastmix.real_loss(leaf_r, leaf_r[:4], labels, labels[:4], 2.0) * 3, leaf_r)
    torch.testing.assert_close(g, g_r)
    x = torch.randn(4, 3, 5, 5, generator=gen)
    w = torch.rand(4, generator=gen).requires_grad_()
    out = fastmix.mixup(x, x.flip(0), w, backend="cuda")  # only the weight needs a gradient
    (gw,) = torch.autograd.grad(out.sum(), w)
    (gw_r,) = torch.autograd.grad(fastmix.mixup(x, x.flip(0), w, backend="torch").sum(), w)
    torch.testing.assert_close(gw, gw_r)
    s = fastmix.sharpen(z.clone().requires_grad_(), backend="cuda")
    assert s.grad_fn is not None
