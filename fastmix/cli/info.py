"""`fastmix info`: versions, backends and the GPUs NVML can see."""
from __future__ import annotations

import platform

import torch

from fastmix.backends import backends


def _version(module_name: str) -> str:
    try:
        module = __import__(module_name)
    except Exception as exc:
        return f"not available ({exc.__class__.__name__})"
    return getattr(module, "__version__", "unknown")


def gpu_lines() -> list[str]:
    """One line per GPU as NVML reports it, or a single line saying why there is none."""
    try:
        import pynvml
    except ImportError:
        return ["no GPU information: nvidia-ml-py is not installed"]
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return [f"no GPU (NVML: {exc})"]
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        count = pynvml.nvmlDeviceGetCount()
        if count == 0:
            return ["no GPU"]
        lines = []
        for i in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            lines.append(f"GPU {i}: {name}, {mem.total / 2**30:.1f} GiB, driver {driver}")
        return lines
    finally:
        pynvml.nvmlShutdown()


def info_text() -> str:
    from fastmix import __version__

    lines = [
        f"fastmix {__version__}",
        f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda or 'none'}), "
        f"triton {_version('triton')}, numpy {_version('numpy')}",
        "backends:",
    ]
    for status in backends().values():
        mark = "usable" if status.usable else "not usable"
        lines.append(f"  {status.name:<7} {mark}: {status.reason}")
    lines.append("GPUs:")
    lines.extend(f"  {line}" for line in gpu_lines())
    return "\n".join(lines)
