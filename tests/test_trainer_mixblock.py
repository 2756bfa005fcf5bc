"""The MixBlock (SPEC 5) and reading features from any named layer."""
import pytest
import torch
from torch import nn

from fastmix import MixBlock
from fastmix.features import FrozenTeacher, as_feature_map


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
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in g.parameters())


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
        FrozenTeacher(nn.Sequential(nn.Linear(2, 2)), "nope")
