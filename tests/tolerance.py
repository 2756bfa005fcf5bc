"""flash-attention's habit: a kernel's error against float64 stays within twice
the plain PyTorch reference's error in the same dtype, plus a small floor."""
import torch

# The float32 floor sits above fp32's own noise on these ops: sharpen's backward at T = 0.3
# cancels (y * (g - <g, y>) with one y near 1), and the reference itself errs by up to 2e-6
# there (worst of 300 random inputs); a wrong formula errs by 1e-3 or more.
FLOOR = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2, torch.float64: 1e-12}


def rel_error(value: torch.Tensor, exact: torch.Tensor) -> float:
    value, exact = value.detach().double().cpu(), exact.detach().double().cpu()
    if value.shape != exact.shape:
        raise AssertionError(f"shape {tuple(value.shape)} != {tuple(exact.shape)}")
    if not torch.isfinite(value).all():
        return float("inf")
    # relative for values above 1, absolute below: an exact zero (C = 1) has no scale of its own
    scale = exact.abs().max().clamp_min(1.0)
    return float((value - exact).abs().max() / scale)


def assert_as_accurate(kernel_out, reference_out, exact, dtype, what=""):
    err_kernel = rel_error(kernel_out, exact)
    err_ref = rel_error(reference_out, exact)
    bound = 2 * err_ref + FLOOR[dtype]
    assert err_kernel <= bound, f"{what}: kernel error {err_kernel:.3g} > {bound:.3g} (reference {err_ref:.3g})"


def assert_close_to_exact(value, exact, dtype, what=""):
    err = rel_error(value, exact)
    assert err <= FLOOR[dtype], f"{what}: error {err:.3g} > {FLOOR[dtype]:.3g}"
