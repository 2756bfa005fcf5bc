"""mixup: ``M * x_f + (1 - M) * x_r[perm]`` with a MixBlock-style ``(B, 1, H, W)`` mask
(SPEC 2), forward alone and forward plus the mask's backward (the generator step)."""
import bench_eager as eager
import pytest
import torch
from bench_common import DEVICE, DTYPES, LAYOUTS, OP_IMPLS, compile_fn, dtype_skip, impl_skip, run_case, tensor_bytes
from cases import IMAGE_SIZES, size_id, smoke_skip


def _inputs(size, dt, layout, with_grad):
    B, C, H, W = size
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def make_inputs():
        x_f = torch.randn(B, C, H, W, device=DEVICE, dtype=dt).contiguous(memory_format=fmt)
        x_r = torch.randn(B, C, H, W, device=DEVICE, dtype=dt).contiguous(memory_format=fmt)
        mask = torch.rand(B, 1, H, W, device=DEVICE, dtype=dt).requires_grad_(with_grad)
        perm = torch.randperm(B, device=DEVICE)
        if not with_grad:
            return x_f, x_r, mask, perm
        grad = torch.randn(B, C, H, W, device=DEVICE, dtype=dt).contiguous(memory_format=fmt)
        return x_f, x_r, mask, perm, grad

    return make_inputs


def _forward(impl, backend):
    if impl == "eager":
        return eager.mixup
    if impl == "compile":
        return compile_fn(eager.mixup)
    import fastmix

    return lambda x_f, x_r, mask, perm: fastmix.mixup(x_f, x_r, mask, perm, backend=backend)


def _case(impl, size, dtype, layout):
    dtype_skip(dtype)
    backend = impl_skip(impl)
    smoke_skip(impl, size, IMAGE_SIZES, layout)
    return backend, DTYPES[dtype]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("size", IMAGE_SIZES, ids=size_id)
@pytest.mark.parametrize("impl", OP_IMPLS)
def test_mixup_forward(benchmark, impl, size, dtype, layout):
    backend, dt = _case(impl, size, dtype, layout)
    make_inputs = _inputs(size, dt, layout, with_grad=False)
    fn = _forward(impl, backend)
    x_f, x_r, mask, _perm = make_inputs()
    benchmark.group = f"mixup-forward {size_id(size)} {dtype} {layout}"
    run_case(
        benchmark, impl=impl, make_inputs=make_inputs, fn=fn,
        bytes_moved=tensor_bytes(x_f, x_r, mask) + tensor_bytes(x_f),  # read x_f, x_r, M; write x_mix
        large=size == IMAGE_SIZES[-1], op="mixup-forward", shape=list(size), dtype=dtype, layout=layout,
    )


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("size", IMAGE_SIZES, ids=size_id)
@pytest.mark.parametrize("impl", OP_IMPLS)
def test_mixup_mask_backward(benchmark, impl, size, dtype, layout):
    backend, dt = _case(impl, size, dtype, layout)
    make_inputs = _inputs(size, dt, layout, with_grad=True)
    forward = _forward(impl, backend)

    def fn(x_f, x_r, mask, perm, grad):
        out = forward(x_f, x_r, mask, perm)
        return torch.autograd.grad(out, mask, grad)[0]

    x_f, x_r, mask, _perm, grad = make_inputs()
    benchmark.group = f"mixup-fwd+mask-bwd {size_id(size)} {dtype} {layout}"
    # forward: read x_f, x_r, M, write x_mix; backward: read g, x_f, x_r, write dM
    moved = tensor_bytes(x_f, x_r, mask, x_f) + tensor_bytes(grad, x_f, x_r, mask)
    run_case(
        benchmark, impl=impl, make_inputs=make_inputs, fn=fn, bytes_moved=moved,
        large=size == IMAGE_SIZES[-1], op="mixup-fwd+mask-bwd", shape=list(size), dtype=dtype, layout=layout,
    )
