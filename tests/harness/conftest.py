"""The digits case the methods' tests share: a small CNN trained once per test module,
class-level D_f = class 0."""
from dataclasses import dataclass, replace

import pytest
import torch

from fastmix.harness.data import load_dataset, make_split
from fastmix.harness.methods import MethodContext
from fastmix.harness.models import build_model
from fastmix.harness.training import Recipe, train_classifier


@dataclass
class DigitsCase:
    ctx: MethodContext

    def context(self, **changes) -> MethodContext:
        return replace(self.ctx, **changes)

    def accuracies(self, model) -> tuple[float, float]:
        """(Train_f, Train_r) in percent."""
        c = self.ctx
        with torch.no_grad():
            model.eval()
            f = (model(c.x_forget).argmax(1) == c.y_forget).double().mean().item()
            r = (model(c.x_retain).argmax(1) == c.y_retain).double().mean().item()
        return 100 * f, 100 * r


@pytest.fixture(scope="module")
def digits_case(one_torch_thread) -> DigitsCase:
    return make_digits_case()


def make_digits_case() -> DigitsCase:
    ds = load_dataset("digits", None)
    split = make_split(ds.y_train, ds.num_classes, "class", forget_class="0")
    model = build_model("digits-cnn", ds.num_classes, 1, seed=0)
    train_classifier(model, ds.x_train, ds.y_train, Recipe(epochs=3, batch_size=32, lr=3e-3, weight_decay=0.0),
                     seed=0, quiet=True)
    ctx = MethodContext(original=model.requires_grad_(False), x_forget=ds.x_train[split.forget],
                        y_forget=ds.y_train[split.forget], x_retain=ds.x_train[split.retain],
                        y_retain=ds.y_train[split.retain], labels="aware", options={}, seed=0, quiet=True)
    return DigitsCase(ctx)
