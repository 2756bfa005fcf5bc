"""Rows: a set's images read by batch from the one tensor that holds them (issue 14)."""
import pytest
import torch
from image_copies import ImageCopies

from fastmix import MixUnlearn
from fastmix.harness.models import build_model
from fastmix.mixunlearn.rows import Rows, all_finite, cat_rows, take_rows

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_rows_read_as_the_copy_they_replace():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(20, 3, 4, 4, generator=gen)
    index = torch.randperm(20, generator=gen)[:12]
    rows, copy = Rows(base, index), base[index]
    assert rows.shape == copy.shape and len(rows) == 12 and rows.dim() == 4 and rows.dtype == copy.dtype
    idx = torch.tensor([5, 0, 11, 5])
    assert torch.equal(rows[idx], copy[idx]) and torch.equal(rows.index_select(0, idx), copy.index_select(0, idx))
    assert torch.equal(rows[2:7], copy[2:7]) and torch.equal(rows[3], copy[3]) and torch.equal(rows[:], copy)
    mask = torch.arange(12) % 3 == 0
    assert torch.equal(rows[mask], copy[mask])
    assert torch.equal(take_rows(rows, idx)[:], copy[idx]) and take_rows(rows, idx).base is base
    both = cat_rows([rows, Rows(base, index[:3])])
    assert isinstance(both, Rows) and both.base is base and torch.equal(both[:], torch.cat([copy, copy[:3]]))
    # tensors (another base) are joined by a copy, as torch.cat would
    assert torch.equal(cat_rows([rows, copy[:3]]), torch.cat([copy, copy[:3]]))
    assert torch.equal(torch.cat(list(rows.chunks(5))), copy)


def test_rows_give_batches_in_the_layout_asked_for():
    base = torch.randn(10, 3, 4, 4)
    cl = Rows(base, torch.arange(10).flip(0), torch.channels_last)
    batch = cl[torch.tensor([1, 2])]
    assert batch.is_contiguous(memory_format=torch.channels_last) and not batch.is_contiguous()
    assert cl.index_select(0, torch.tensor([1, 2])).is_contiguous()  # as a tensor's index_select
    assert cl.channels_last and not Rows(base[:, :1], None, torch.channels_last).channels_last
    assert Rows.of(base.contiguous(memory_format=torch.channels_last)).memory_format == torch.channels_last


def test_bad_rows_are_refused_and_non_finite_rows_found():
    with pytest.raises(TypeError, match="1-d long tensor"):
        Rows(torch.zeros(3, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(IndexError, match=r"bool index of Rows needs shape \(2,\)"):
        Rows(torch.zeros(3, 2), torch.tensor([0, 1]))[torch.tensor([True, False, True])]
    x = torch.zeros(3000, 2)
    x[2500, 1] = float("nan")
    assert all_finite(Rows(x, torch.arange(2000))) and not all_finite(Rows(x, torch.tensor([2500])))
    assert not all_finite(x)


def make_run(x_f, x_r, y_f, y_r, **settings):
    model = build_model("digits-cnn", 10, 3, seed=0)
    mu = MixUnlearn(model, epochs=1, batch_size=16, seed=1, **settings)
    return mu, mu.unlearn((x_f, y_f), (x_r, y_r))


@pytest.mark.parametrize("step", ["fast", "paper"])
def test_mixunlearn_copies_no_images_whatever_their_layout(step):
    """A channels_last run on NCHW colour images (once copied into channels_last) and on
    Rows of a larger tensor: the same losses, bit for bit, and no copy of D_r."""
    torch.manual_seed(0)
    x, y = torch.randn(1540, 3, 8, 8), torch.randint(0, 10, (1540,))
    settings = dict(step="paper") if step == "paper" else {}
    with ImageCopies((3, 8, 8), 1024) as found:
        mu, _ = make_run(x[:40], x[40:], y[:40], y[40:], **settings)
    assert found.copies == []
    if step == "fast":
        assert mu.engine.use_channels_last(mu.model, 4)
    cl = x.contiguous(memory_format=torch.channels_last)
    mu_cl, _ = make_run(cl[:40], cl[40:], y[:40], y[40:], **settings)
    f_idx, r_idx = torch.arange(40).flip(0), torch.arange(40, 1540)
    mu_rows, _ = make_run(Rows(x, f_idx), Rows(x, r_idx), y[f_idx], y[r_idx], **settings)
    mu_copy, _ = make_run(x[f_idx], x[r_idx], y[f_idx], y[r_idx], **settings)
    assert mu.history == mu_cl.history and mu_rows.history == mu_copy.history
    assert len(mu.history["unlearner"]) == 3
