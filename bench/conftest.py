"""pytest set-up for the benchmark suite (``pytest bench --benchmark-only``).

``--benchmark-disable`` (CI's smoke run) calls every case once on one input set, with
no warm-up and no timing, and compiles with ``torch.compile`` at the smallest size
of each group only, so the whole suite is exercised in a short time.

On the CPU the suite runs torch on one thread unless ``FASTMIX_BENCH_THREADS`` says
otherwise: on a shared machine every OpenMP parallel region of a multi-threaded run
waits for a descheduled thread, which swamps the small cases (BENCHMARKS.md,
"Suite results on the CPU").
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_common  # noqa: E402


def pytest_configure(config):
    bench_common.Settings.smoke = bool(config.getoption("benchmark_disable", False))
    bench_common.set_cpu_threads()


# The ops first and the steps last: a run with a deadline (FASTMIX_BENCH_DEADLINE, set by
# gpu_run.sh) then drops the slowest cases, the ResNet-18 step compiles, first.
_ORDER = (
    "test_baselines_agree", "test_loss", "test_sharpen", "test_mixup", "test_step", "test_trainer_speed",
    "test_step_generator",
)


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        name = item.path.stem if hasattr(item, "path") else ""
        return _ORDER.index(name) if name in _ORDER else _ORDER.index("test_step")

    items.sort(key=rank)  # stable: the order inside a file stays


def pytest_runtest_setup(item):
    bench_common.deadline_skip()  # every case, whether or not it goes through run_case


def pytest_report_header(config):
    env = bench_common.environment()
    mode = "smoke (--benchmark-disable: one call per case, untimed)" if bench_common.Settings.smoke else "timed"
    return [
        f"fastmix bench: {env['device_name']}; torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}",
        f"fastmix bench: mode {mode}; usable backends {sorted(k for k, v in env['backends'].items() if v)}",
    ]
