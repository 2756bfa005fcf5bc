"""train_classifier (the original, retrained and fine-tuned models): how it runs."""
import pytest
import torch

from fastmix.harness.models import build_model
from fastmix.harness.training import Recipe, train_classifier
from fastmix.mixunlearn.engine import flush_subnormals_

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def images(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_conv_models_train_channels_last_and_come_back_in_the_default_format():
    model = build_model("digits-cnn", 10, 3, seed=0)
    seen = []
    model.block1[0].register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)
                                    and not args[0].is_contiguous()))
    x, y = images()
    train_classifier(model, x, y, Recipe(epochs=1, batch_size=16), seed=0, quiet=True)
    assert seen and all(seen)
    assert all(p.is_contiguous() for p in model.parameters()) and not model.training


def test_subnormal_weights_are_zeroed_before_each_epoch_on_the_cpu():
    model = build_model("digits-cnn", 10, 3, seed=0)
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        model.block1[0].weight[0, 0, 0, 0] = tiny / 4
        model.head[1].weight[:3, 0] = torch.tensor([-tiny / 2, tiny / 1e3, tiny])
    want = {k: v.clone() for k, v in model.state_dict().items()}
    flush_subnormals_(torch.nn.ParameterList([torch.nn.Parameter(v) for v in want.values()]))
    assert (want["head.1.weight"][:3, 0] == torch.tensor([0.0, 0.0, tiny])).all()
    x, y = images()
    train_classifier(model, x, y, Recipe(epochs=1, batch_size=16, lr=0.0), seed=0, quiet=True)  # lr 0: no update
    for k, v in model.state_dict().items():
        assert torch.equal(v, want[k]), k


def test_same_seed_same_model_and_it_learns():
    x, y = images(64)
    a = train_classifier(build_model("digits-cnn", 10, 3, seed=0), x, y, Recipe(epochs=30, lr=1e-2), seed=0, quiet=True)
    b = train_classifier(build_model("digits-cnn", 10, 3, seed=0), x, y, Recipe(epochs=30, lr=1e-2), seed=0, quiet=True)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
    with torch.no_grad():
        assert (a(x).argmax(1) == y).float().mean() > 0.9  # random labels: memorised
