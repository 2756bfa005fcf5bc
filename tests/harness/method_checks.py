"""Helpers of the methods' tests (a module of its own: ``import conftest`` is ambiguous
between the conftest files of tests/ and tests/harness/)."""
import torch


def same_weights(a, b) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def run_on_digits(case, name: str, options: dict):
    """Run method ``name`` on the digits case; check what every method must do (the
    original was good, the run took time, the original's weights are untouched) and
    return ``(result, (f0, r0), (f1, r1))``: Train_f and Train_r before and after."""
    from fastmix.harness.methods import get_method

    original = case.ctx.original
    before = {k: v.clone() for k, v in original.state_dict().items()}
    f0, r0 = case.accuracies(original)
    result = get_method(name)(case.context(options=options))
    f1, r1 = case.accuracies(result.model)
    print(f"{name}: Train_f {f0:.1f} -> {f1:.1f}, Train_r {r0:.1f} -> {r1:.1f}")
    assert f0 > 95 and r0 > 95
    assert result.seconds > 0
    for k, v in original.state_dict().items():
        assert v.equal(before[k]), f"{k} of the original changed"
    return result, (f0, r0), (f1, r1)
