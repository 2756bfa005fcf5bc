"""sharpen: ``softmax(logits / T)``, the label-agnostic targets (SPEC 3), forward."""
import bench_eager as eager
import pytest
import torch
from bench_common import DEVICE, DTYPES, OP_IMPLS, compile_fn, dtype_skip, impl_skip, run_case, tensor_bytes
from cases import LOGIT_SIZES, size_id, smoke_skip

T = 0.3


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("size", LOGIT_SIZES, ids=size_id)
@pytest.mark.parametrize("impl", OP_IMPLS)
def test_sharpen(benchmark, impl, size, dtype):
    dtype_skip(dtype)
    backend = impl_skip(impl)
    smoke_skip(impl, size, LOGIT_SIZES)
    B, C = size
    dt = DTYPES[dtype]

    def make_inputs():
        return (torch.randn(B, C, device=DEVICE).mul_(3).to(dt),)

    if impl == "eager":
        def fn(z):
            return eager.sharpen(z, T)
    elif impl == "compile":
        fn = compile_fn(lambda z: eager.sharpen(z, T))
    else:
        import fastmix

        def fn(z):
            return fastmix.sharpen(z, T, backend=backend)

    z = make_inputs()[0]
    benchmark.group = f"sharpen {size_id(size)} {dtype}"
    run_case(
        benchmark, impl=impl, make_inputs=make_inputs, fn=fn,
        bytes_moved=2 * tensor_bytes(z),  # read the logits, write the targets
        large=size == LOGIT_SIZES[-1], op="sharpen", shape=list(size), dtype=dtype, layout="contiguous",
    )
