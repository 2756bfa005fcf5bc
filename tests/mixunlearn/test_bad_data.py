"""MixUnlearn.unlearn refuses data its model cannot take, before any step: integer or
float64 images, the wrong channel count, NaN or infinite pixels (with the MixBlock and
the Beta ablation alike), labels outside the model's classes. The model is untouched."""
import pytest
import torch

from fastmix import MixUnlearn
from fastmix.harness.models import build_model


def data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def with_nan(x, value=float("nan")):
    x = x.clone()
    x[3, 0, 2, 5] = value
    return x


CASES = {
    "uint8": (lambda x: (x * 255).to(torch.uint8), TypeError, r"forget_data must hold floating-point.*uint8.*255"),
    "float64": (lambda x: x.double(), TypeError, r"forget_data holds torch.float64 images.*float32"),
    "channels": (lambda x: x.repeat(1, 3, 1, 1), ValueError, r"forget_data has 3 channels.*takes 1"),
    "nan": (with_nan, ValueError, r"forget_data holds NaN or infinite pixels"),
    "inf": (lambda x: with_nan(x, float("inf")), ValueError, r"forget_data holds NaN or infinite pixels"),
}


@pytest.mark.parametrize("mask", ["mixblock", "beta"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_forget_images_are_refused_before_any_step(case, mask):
    convert, error, message = CASES[case]
    model = build_model("digits-cnn", 10, 1, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    (x_f, y_f), (x_r, y_r) = data(), data(20, seed=1)
    mu = MixUnlearn(model, mask=mask, epochs=1, batch_size=4)
    with pytest.raises(error, match=message):
        mu.unlearn((convert(x_f), y_f), (convert(x_r), y_r))
    assert mu.history == {"unlearner": [], "generator": []}
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_nan_retain_pixels_are_refused_too():
    model = build_model("digits-cnn", 10, 1, seed=0)
    (x_f, y_f), (x_r, y_r) = data(), data(20, seed=1)
    with pytest.raises(ValueError, match="retain_data holds NaN"):
        MixUnlearn(model, mask="beta", epochs=1).unlearn((x_f, y_f), (with_nan(x_r), y_r))


@pytest.mark.parametrize("label", [10, -1])
def test_labels_outside_the_models_classes_are_refused(label):
    model = build_model("digits-cnn", 10, 1, seed=0)
    (x_f, y_f), (x_r, y_r) = data(), data(20, seed=1)
    y_f = y_f.clone()
    y_f[0] = label
    with pytest.raises(ValueError, match=r"forget_data: labels must lie in \[0, 10\)"):
        MixUnlearn(model, epochs=1).unlearn((x_f, y_f), (x_r, y_r))
