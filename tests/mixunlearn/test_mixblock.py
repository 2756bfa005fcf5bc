"""The MixBlock (SPEC 5) and reading features from any named layer."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from fastmix import MixBlock
from fastmix.mixunlearn.features import FrozenOriginal, as_feature_map


def spec5_masks(g: MixBlock, h_f, h_r, lam, size):
    """SPEC 5 step by step, one sample at a time: append the ratio channel, the three
    1x1 convolutions, both attentions, stack, upsample, softmax over the 2 channels."""
    out = []
    for i in range(h_f.shape[0]):
        a_f = torch.cat([h_f[i : i + 1], torch.full_like(h_f[i : i + 1, :1], float(lam[i]))], 1)
        a_r = torch.cat([h_r[i : i + 1], torch.full_like(h_r[i : i + 1, :1], 1 - float(lam[i]))], 1)
        q_f, k_f, v_f = (F.conv2d(a_f, m.weight, m.bias).flatten(2)[0] for m in (g.q, g.k, g.v))  # (d, hw)
        q_r, k_r, v_r = (F.conv2d(a_r, m.weight, m.bias).flatten(2)[0] for m in (g.q, g.k, g.v))
        A = torch.softmax(q_f.T @ k_r / g.dim**0.5, dim=1)
        A2 = torch.softmax(q_r.T @ k_f / g.dim**0.5, dim=1)
        m = torch.stack([A @ v_f[0], A2 @ v_r[0]]).view(1, 2, *h_f.shape[2:])
        out.append(torch.softmax(F.interpolate(m, size=size, mode="bilinear", align_corners=False), dim=1))
    return torch.cat(out)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("C, hw, size", [(32, (7, 7), (28, 28)), (7, (3, 5), (9, 16))])
def test_masks_and_gradients_match_spec5_in_float64(C, hw, size, channels_last):
    torch.manual_seed(C)
    g = MixBlock(C).double()
    with torch.no_grad():  # larger weights than the initialisation's, for attention that is not uniform
        for p in g.parameters():
            p.mul_(3)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    h_f = torch.randn(5, C, *hw, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    h_r = torch.randn(5, C, *hw, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_()
    lam = torch.rand(5, dtype=torch.float64)
    weight = torch.randn(5, 2, *size, dtype=torch.float64)

    def grads(fn):
        out = fn(g, h_f, h_r, lam, size)
        return (out, *torch.autograd.grad((out * weight).sum(), [h_f, h_r, *g.parameters()]))

    got, want = grads(MixBlock.forward), grads(spec5_masks)
    assert want[0].std() > 1e-3  # the masks vary
    for i, (x, y) in enumerate(zip(got, want)):
        if i == len(got) - 1:  # v's bias: its gradient is zero but for rounding
            assert x.abs().max() < 1e-12 and y.abs().max() < 1e-12
            continue
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)


def test_masks_sum_to_one_and_have_image_size():
    torch.manual_seed(0)
    g = MixBlock(32)
    h_f, h_r = torch.randn(4, 32, 7, 7), torch.randn(4, 32, 7, 7)
    out = g(h_f, h_r, torch.rand(4), (28, 28))
    assert out.shape == (4, 2, 28, 28)
    assert torch.allclose(out.sum(1), torch.ones(4, 28, 28), atol=1e-6)
    assert (out > 0).all() and (out < 1).all()
    assert g.mask(h_f, h_r, torch.rand(4), (28, 28)).shape == (4, 1, 28, 28)


def test_mask_responds_to_lambda():
    torch.manual_seed(0)
    g = MixBlock(16)
    h_f, h_r = torch.randn(3, 16, 4, 4), torch.randn(3, 16, 4, 4)
    low = g.mask(h_f, h_r, torch.full((3,), 0.1), (8, 8))
    high = g.mask(h_f, h_r, torch.full((3,), 0.9), (8, 8))
    assert (low - high).abs().max() > 1e-3
    # a 0-d lambda is one ratio for the whole batch
    assert torch.allclose(g.mask(h_f, h_r, torch.tensor(0.9), (8, 8)), high)


def test_mask_gradient_reaches_every_parameter():
    g = MixBlock(8)
    m = g.mask(torch.randn(2, 8, 3, 3), torch.randn(2, 8, 3, 3), torch.rand(2), (6, 6))
    (m * torch.randn_like(m)).sum().backward()
    # all but v's bias, which the two-channel softmax cancels (see MixBlock)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in list(g.parameters())[:-1])
    assert g.v.bias.grad.abs().max() < 1e-6


def test_parameter_count_matches_paper():
    n = sum(p.numel() for p in MixBlock(256).parameters())
    assert 65_000 < n < 67_000


def test_bad_feature_shapes():
    g = MixBlock(8)
    with pytest.raises(ValueError, match="h_f and h_r"):
        g(torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.rand(2), (6, 6))


def test_token_features_reshape_to_grid():
    tokens = torch.arange(2 * 17 * 5, dtype=torch.float32).view(2, 17, 5)  # class token + 4x4 patches
    grid = as_feature_map(tokens)
    assert grid.shape == (2, 5, 4, 4)
    assert torch.equal(grid[1, :, 0, 1], tokens[1, 2])
    assert as_feature_map(torch.randn(2, 9, 3)).shape == (2, 3, 3, 3)
    with pytest.raises(ValueError, match="square grid"):
        as_feature_map(torch.randn(2, 7, 3))


def test_teacher_names_unknown_layer():
    with pytest.raises(ValueError, match="feature_layer 'nope'"):
        FrozenOriginal(nn.Sequential(nn.Linear(2, 2)), "nope")


def test_float32_masks_err_no_more_than_spec5_in_float32():
    """flash-attention's habit: against float64, the fused float32 masks may err at most
    2x as much as SPEC 5's plain float32 computation (plus a floor)."""
    torch.manual_seed(1)
    g64 = MixBlock(32).double()
    g32 = MixBlock(32)
    g32.load_state_dict({k: v.float() for k, v in g64.state_dict().items()})
    h_f, h_r = torch.randn(8, 32, 7, 7, dtype=torch.float64), torch.randn(8, 32, 7, 7, dtype=torch.float64)
    lam = torch.rand(8, dtype=torch.float64)
    exact = spec5_masks(g64, h_f, h_r, lam, (28, 28))
    with torch.no_grad():
        fused = g32(h_f.float(), h_r.float(), lam.float(), (28, 28)).double()
        plain = spec5_masks(g32, h_f.float(), h_r.float(), lam.float(), (28, 28)).double()
    assert (fused - exact).abs().max() <= 2 * (plain - exact).abs().max() + 1e-6
