"""Issue 14: a run holds its decoded images once. D_f, D_r, the retrained model's data
and the evaluation's subsets are rows of the one training tensor, read by batch; no
method copies a whole set. Checked by recording every tensor an op makes that holds
more images than the largest batch (1024 rows: evaluation's and the teacher cache's)."""
from dataclasses import replace

import pytest
import torch
from image_copies import ImageCopies

from fastmix.harness import experiment
from fastmix.harness.data import load_dataset
from fastmix.harness.experiment import Experiment, run_experiment

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BATCH_ROWS = 1024
# the methods that once joined D_r and D_f with torch.cat, besides MixUnlearn and fine-tuning
METHODS = ("mixunlearn", "finetune", "ssd", "bad_teacher", "boundary_shrink")


@pytest.fixture(scope="module")
def big_digits():
    """digits, its training set repeated 6 times (8082 images): D_f and D_r both hold
    more images than any batch, so a copy of either is seen."""
    ds = load_dataset("digits", None)
    return replace(ds, x_train=ds.x_train.repeat(6, 1, 1, 1), y_train=ds.y_train.repeat(6))


@pytest.mark.parametrize("labels", ["aware", "agnostic"])
def test_a_run_makes_no_copy_of_the_training_images(big_digits, labels, tmp_path, monkeypatch):
    big_digits = replace(big_digits, x_train=big_digits.x_train.clone())  # a run may reuse its memory (--val-size)
    monkeypatch.setattr(experiment, "load_dataset", lambda *a, **k: big_digits)
    methods = METHODS if labels == "aware" else ("mixunlearn", "finetune")
    exp = Experiment(setting="data", forget_fraction=0.4, labels=labels, methods=methods, train_epochs=1,
                     out=str(tmp_path), quiet=True,
                     options=dict(epochs=1, ft_epochs=1, boundary_epochs=1, bad_teacher_epochs=1))
    with ImageCopies(big_digits.image_shape, BATCH_ROWS) as found:
        result = run_experiment(exp, log=lambda *a: None)
    split = result["split"]
    assert split.forget.numel() > BATCH_ROWS and split.retain.numel() > BATCH_ROWS  # a copy would be seen
    assert set(result["rows"]) == {"original", "retrain", *methods}
    assert found.copies == []


def test_a_validation_split_makes_no_copy_of_the_training_images(big_digits, tmp_path, monkeypatch):
    # before: carve_validation copied the kept rows (x_train[keep]) while the loaded tensor was alive
    big_digits = replace(big_digits, x_train=big_digits.x_train.clone())
    monkeypatch.setattr(experiment, "load_dataset", lambda *a, **k: big_digits)
    exp = Experiment(methods=("finetune",), val_size=500, eval_split="val", train_epochs=1, out=str(tmp_path),
                     quiet=True, options=dict(ft_epochs=1))
    with ImageCopies(big_digits.image_shape, BATCH_ROWS) as found:
        result = run_experiment(exp, log=lambda *a: None)
    assert result["dataset"].x_test.shape[0] == 500
    assert found.copies == []


def test_the_recorder_sees_a_copy_of_a_set(big_digits):
    x = big_digits.x_train
    with ImageCopies(big_digits.image_shape, BATCH_ROWS) as found:
        x[:2000].view(-1)  # a view
        x.index_select(0, torch.arange(BATCH_ROWS))  # a batch
        x[torch.arange(2000)]
        x.contiguous(memory_format=torch.channels_last).add_(0)
    assert [shape for _, shape in found.copies] == [(2000, *big_digits.image_shape)]
