"""The class-level and data-level splits of SPEC 8, and the validation carve."""
from dataclasses import replace

import pytest
import torch

from fastmix.harness.data import class_split, data_split, load_dataset, make_split, parse_classes


def test_parse_classes():
    assert parse_classes("5-9") == (5, 6, 7, 8, 9)
    assert parse_classes("1,3,5-6") == (1, 3, 5, 6)
    with pytest.raises(ValueError, match="classes must look like"):
        parse_classes("a-b")


def test_class_split():
    y = torch.tensor([0, 1, 0, 2, 3, 0])
    s = class_split(y, (0,), 4)
    assert s.forget.tolist() == [0, 2, 5] and s.retain.tolist() == [1, 3, 4]
    with pytest.raises(ValueError, match="forget classes"):
        class_split(y, (7,), 4)


def test_data_split_is_seeded_fraction_of_classes():
    y = torch.arange(1000) % 10
    a = data_split(y, 0.4, range(5, 10), 10, seed=3)
    b = data_split(y, 0.4, range(5, 10), 10, seed=3)
    c = data_split(y, 0.4, range(5, 10), 10, seed=4)
    assert torch.equal(a.forget, b.forget) and not torch.equal(a.forget, c.forget)
    assert a.forget.numel() == 200 and (y[a.forget] >= 5).all()
    assert a.forget.numel() + a.retain.numel() == 1000
    assert not set(a.forget.tolist()) & set(a.retain.tolist())
    s = make_split(y, 10, "data", forget_classes="5-9", forget_fraction=0.4, seed=3)
    assert torch.equal(s.forget, a.forget)


def test_validation_carve_keeps_test_set_apart():
    ds = load_dataset("digits")
    with_test, with_val = ds.carve_validation(100, seed=0)
    assert with_val.eval_split == "val" and with_val.x_test.shape[0] == 100
    assert torch.equal(with_test.x_test, ds.x_test)
    assert with_test.x_train.shape[0] == ds.x_train.shape[0] - 100
    assert torch.equal(with_test.x_train, with_val.x_train)


@pytest.mark.parametrize("size", [1, 100, 1346])
def test_carving_in_place_gives_the_same_tensors_in_the_training_tensor_memory(size):
    ds = load_dataset("digits")
    copy_test, copy_val = ds.carve_validation(size, seed=5)
    x = ds.x_train.clone()
    own = replace(ds, x_train=x)
    in_test, in_val = own.carve_validation(size, seed=5, in_place=True)
    for a, b in ((copy_test, in_test), (copy_val, in_val)):
        assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
        assert torch.equal(a.y_train, b.y_train) and torch.equal(a.y_test, b.y_test)
    # the training rows and the validation rows live in the one tensor's storage, nothing else was kept
    ptr = x.untyped_storage().data_ptr()
    assert in_test.x_train.untyped_storage().data_ptr() == ptr == in_val.x_test.untyped_storage().data_ptr()
    assert in_val.x_test.data_ptr() == in_test.x_train.data_ptr() + in_test.x_train.nbytes


def test_forgetting_every_class_is_refused():
    labels = torch.arange(20) % 10
    with pytest.raises(ValueError, match="--forget-class 0-9.*D_r empty"):
        make_split(labels, 10, "class", forget_class="0-9")
