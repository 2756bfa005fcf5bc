"""The harness every benchmark in bench/ goes through.

One place decides how a case is timed, so every group is timed the same way:

* warm-up (and, for ``torch.compile``, compilation) runs before the timed rounds;
* every timed call ends with a device synchronisation (``pytest-benchmark`` reads a
  host clock, so the figure is the wall time a caller waits for the result);
* inputs rotate over several independent sets, enough that they do not all fit in
  the last-level cache, so cache-resident repeats do not flatter a result;
* each result carries in ``extra_info`` the device, the versions, the peak memory,
  NVML's readings on an NVIDIA GPU (or that it was the CPU), the bytes the case must
  move, the floor ``bytes / copy bandwidth`` (bandwidth measured in the same run)
  and the result's fraction of that floor.
"""
from __future__ import annotations

import functools
import math
import os
import platform
import time

import pytest
import torch

DEVICE = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
ON_GPU = DEVICE.type == "cuda"

# Implementations compared in every group. "eager" is the straightforward PyTorch
# code a user of the paper would write (bench_eager.py, autograd through plain ops),
# "compile" is torch.compile of that same code, the rest are fastmix backends
# ("fastmix-cpu": the C++ CPU kernels, the default on CPU tensors; CPU runs only).
IMPLS = ("eager", "compile", "fastmix-torch", "fastmix-cpu", "fastmix-triton", "fastmix-cuda")
# The op benchmarks add "fastmix": the default backend, what a call without backend= gets
# (fastmix-cpu on CPU tensors, a GPU backend on GPU tensors).
OP_IMPLS = (*IMPLS[:2], "fastmix", *IMPLS[2:])

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LAYOUTS = ("contiguous", "channels_last")

# Rotation: enough input sets to spill the last-level cache (50 MB L2 on an H100,
# a few MB of L3 share on the CPU), bounded so the largest cases fit in memory.
ROTATE_BYTES = 512 * 2**20 if ON_GPU else 64 * 2**20
MAX_SETS = 8 if ON_GPU else 4
MAX_ROTATION_BYTES = 8 * 2**30 if ON_GPU else 1536 * 2**20

# Time spent per case in the timed rounds, and the bounds on the number of rounds.
TARGET_SECONDS = float(os.environ.get("FASTMIX_BENCH_SECONDS", "0.3" if ON_GPU else "0.4"))
MIN_ROUNDS = 10 if ON_GPU else 5
MAX_ROUNDS = 200 if ON_GPU else 30


class Settings:
    """Set by conftest from the command line: ``smoke`` when ``--benchmark-disable``."""

    smoke = False


def set_cpu_threads() -> None:
    """One torch thread on the CPU unless FASTMIX_BENCH_THREADS says otherwise (see conftest)."""
    if not ON_GPU:
        torch.set_num_threads(int(os.environ.get("FASTMIX_BENCH_THREADS", "1")))


def sync() -> None:
    if ON_GPU:
        torch.cuda.synchronize()


def dtype_skip(dtype_name: str) -> None:
    if dtype_name != "fp32" and not ON_GPU:
        pytest.skip("bf16 is timed on a GPU only; the CPU runs fp32")


def impl_skip(impl: str) -> str | None:
    """Skip ``impl`` here with the reason, or return the fastmix backend name (None for eager,
    compile and fastmix's default backend)."""
    if impl in ("eager", "compile", "fastmix"):
        return None
    backend = impl.split("-", 1)[1]
    if backend == "torch" and ON_GPU:
        pytest.skip("fastmix's torch backend is the PyTorch reference; on a GPU the suite times the fast backends")
    if backend == "cpu" and ON_GPU:
        pytest.skip("fastmix's cpu backend runs on CPU tensors; on a GPU the suite times the GPU backends")
    if backend == "triton" and not ON_GPU:
        pytest.skip(
            "Triton needs a CUDA device; under TRITON_INTERPRET the kernels run in the "
            "interpreter, whose timings mean nothing"
        )
    import fastmix

    status = fastmix.backends(DEVICE)[backend]
    if not status.usable:
        pytest.skip(f"fastmix backend {backend!r} is not usable here: {status.reason}")
    return backend


def compile_fn(fn):
    """``torch.compile`` of ``fn`` as a user would try first, specialised to this case's shapes.

    The dynamo caches are cleared first so that earlier cases' shapes neither count
    against the recompile limit nor make this case's graph dynamic.
    """
    torch._dynamo.reset()
    return torch.compile(fn, dynamic=False)


# --- the machine -----------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.cache
def environment() -> dict:
    """What ran the suite: device, versions; the same for every result of a run."""
    import fastmix

    try:
        import triton

        triton_version = triton.__version__
    except Exception as exc:  # noqa: BLE001 (a broken or missing install)
        triton_version = f"not available ({exc.__class__.__name__})"
    info = {
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda or "none",
        "fastmix": fastmix.__version__,
        "python": platform.python_version(),
        "backends": {name: s.usable for name, s in fastmix.backends(DEVICE).items()},
    }
    if ON_GPU:
        props = torch.cuda.get_device_properties(DEVICE)
        info.update(
            device="cuda",
            device_name=props.name,
            device_memory_gib=round(props.total_memory / 2**30, 1),
            sm_count=props.multi_processor_count,
            capability=f"{props.major}.{props.minor}",
        )
    else:
        info.update(
            device="cpu",
            device_name=f"CPU: {_cpu_name()}, {os.cpu_count()} logical cores, torch threads: {torch.get_num_threads()}",
            nvml="CPU run: no NVIDIA GPU, so no NVML readings",
        )
    return info


def nvml_reading() -> dict:
    """NVML's driver, memory used, SM clock and power for the GPU in use, read now."""
    if not ON_GPU:
        return {}
    try:
        import pynvml
    except ImportError:
        return {"nvml": "nvidia-ml-py is not installed"}
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 (NVML raises its own error types)
        return {"nvml": f"NVML unavailable: {exc}"}
    try:
        index = torch.cuda.current_device()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            first = visible.split(",")[index].strip()
            if first.isdigit():
                index = int(first)
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        out = {
            "nvml_driver": pynvml.nvmlSystemGetDriverVersion(),
            "nvml_name": pynvml.nvmlDeviceGetName(handle),
            "nvml_memory_used_mib": round(mem.used / 2**20),
            "nvml_sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "nvml_sm_clock_max_mhz": pynvml.nvmlDeviceGetMaxClockInfo(handle, pynvml.NVML_CLOCK_SM),
            "nvml_power_w": round(pynvml.nvmlDeviceGetPowerUsage(handle) / 1000, 1),
        }
        try:
            out["nvml_temperature_c"] = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
        except Exception:  # noqa: BLE001, S110 (not every card reports a temperature)
            pass
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in out.items()}
    except Exception as exc:  # noqa: BLE001 (NVML raises its own error types)
        return {"nvml": f"NVML read failed: {exc}"}
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001, S110 (shutting down: nothing to do about a failure)
            pass


@functools.cache
def copy_bandwidth() -> float:
    """Bytes per second of a large device-to-device copy (bytes read plus bytes written),
    the fastest of several copies (a ceiling: on a shared CPU the slower ones measure
    the neighbours), measured once per run on the device the suite uses."""
    n = (1 << 30 if ON_GPU else 256 << 20) // 4
    src = torch.randn(n, device=DEVICE)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    sync()
    times = []
    for _ in range(20 if ON_GPU else 7):
        t0 = time.perf_counter()
        dst.copy_(src)
        sync()
        times.append(time.perf_counter() - t0)
    del src, dst
    return 2 * n * 4 / min(times)


# --- one case --------------------------------------------------------------------------------


def tensor_bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def _n_sets(set_bytes: int) -> int:
    if Settings.smoke:
        return 1
    n = max(2, math.ceil(ROTATE_BYTES / max(set_bytes, 1)))
    n = min(n, MAX_SETS, max(1, MAX_ROTATION_BYTES // max(set_bytes, 1)))
    return max(n, 1)


def deadline_skip() -> None:
    """Skip once FASTMIX_BENCH_DEADLINE (seconds since the epoch) has passed, so that a run
    with a time limit (bench/gpu_run.sh) ends cleanly and still writes its JSON."""
    deadline = os.environ.get("FASTMIX_BENCH_DEADLINE")
    if deadline and time.time() > float(deadline):
        pytest.skip("out of time: FASTMIX_BENCH_DEADLINE has passed")


def run_case(benchmark, *, impl: str, make_inputs, fn, bytes_moved: int | None, large: bool = False,
             warmup: int = 3, min_rounds: int | None = None, **extra):
    """Time ``fn(*inputs)`` over rotating input sets; record what the case is in ``extra_info``.

    ``make_inputs()`` returns one tuple of arguments (fresh random data each call);
    ``fn`` must return with its work enqueued; the harness synchronises after it.
    ``bytes_moved`` is the fewest bytes the operation must move (each input read
    once, each output written once), or None where that is not the bound. For a
    ``large`` case (the largest size of a group) the floor ``bytes_moved / copy
    bandwidth`` and the result's fraction of it are recorded too; the small cases
    fit in cache and are bound by launches and latency, not by the copy bandwidth.
    """
    deadline_skip()
    first = make_inputs()
    n_sets = _n_sets(tensor_bytes(*first))
    sets = [first] + [make_inputs() for _ in range(n_sets - 1)]
    turn = [0]

    def next_set():
        args = sets[turn[0] % len(sets)]
        turn[0] += 1
        return args, {}

    def timed(*args):
        out = fn(*args)
        sync()
        return out

    info = benchmark.extra_info
    info.update(environment())
    info.update(impl=impl, input_sets=n_sets, **extra)

    if Settings.smoke:  # --benchmark-disable: one call, to prove the case still runs
        benchmark.pedantic(timed, setup=next_set, rounds=1)
        return

    # Warm-up, compilation included, outside the figures; the last warm-up call calibrates.
    compile_start = time.perf_counter()
    timed(*next_set()[0])
    info["first_call_s"] = round(time.perf_counter() - compile_start, 4)
    # At least one warm-up call per input set (each set's first touch), fewer repeats
    # for the slow cases; the last call's time sets the number of timed rounds.
    for i in range(max(warmup, len(sets))):
        t0 = time.perf_counter()
        timed(*next_set()[0])
        one = time.perf_counter() - t0
        if i + 1 >= len(sets) and one > 0.2:
            break
    low = MIN_ROUNDS if min_rounds is None else min_rounds
    rounds = int(min(MAX_ROUNDS, max(low, TARGET_SECONDS / max(one, 1e-7))))

    if ON_GPU:
        torch.cuda.reset_peak_memory_stats(DEVICE)
    benchmark.pedantic(timed, setup=next_set, rounds=rounds, iterations=1)
    if ON_GPU:
        info["peak_memory_bytes"] = torch.cuda.max_memory_allocated(DEVICE)
    else:
        import resource

        info["peak_memory_bytes"] = None
        info["process_max_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    info.update(nvml_reading())

    if bytes_moved is not None:
        info["bytes_moved"] = int(bytes_moved)
    if bytes_moved is not None and large:
        bw = copy_bandwidth()
        floor = bytes_moved / bw
        info.update(copy_bandwidth_gbs=round(bw / 1e9, 2), floor_s=floor)
        stats = getattr(getattr(benchmark, "stats", None), "stats", None)
        if stats is not None and stats.median > 0:
            info["fraction_of_floor"] = floor / stats.median
