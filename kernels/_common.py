"""Shared helpers of the Triton kernels: launch guards, block sizes and constants."""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from fastmix.backends.torch_backend import EPS as _EPS

# the clamp of d(p, q) = 1 - <p, q> / max(|p| |q|, EPS): one definition for Python and Triton
EPS = tl.constexpr(_EPS)

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_dtype(name: str, t: torch.Tensor) -> None:
    if t.dtype not in SUPPORTED_DTYPES:
        raise TypeError(
            f"the triton backend takes {name} in float16, bfloat16 or float32, got {t.dtype}; "
            "use backend='torch' for float64"
        )


def row_block(n_cols: int, max_block: int) -> int:
    """Power-of-two tile width for a row of ``n_cols``: the whole row when it fits."""
    return max(16, min(triton.next_power_of_2(max(n_cols, 1)), max_block))


def warps_for(block: int) -> int:
    return 4 if block <= 1024 else 8


def as_rows(t: torch.Tensor) -> torch.Tensor:
    """(..., C) as a 2-d (rows, C) view, copying only when the strides forbid a view."""
    if t.dim() == 2:
        return t
    return t.reshape(-1, t.shape[-1])


# Tests set this to fill every output with NaN before a kernel runs, so that an
# element a kernel forgot to write shows up.
POISON_OUTPUTS = False


def new_output(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    out = torch.empty(shape, dtype=dtype, device=device)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


def new_output_like(t: torch.Tensor, memory_format=torch.preserve_format) -> torch.Tensor:
    out = torch.empty_like(t, memory_format=memory_format)
    if POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out


@functools.cache
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def persistent_programs(device: torch.device, n_items: int) -> int:
    """Grid size of a kernel whose programs loop over ``n_items``: a few waves of the GPU."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return max(1, min(n_items, 4 * _multiprocessors(index)))
    return max(1, min(n_items, 16))
