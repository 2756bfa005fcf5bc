"""Every loader on small files written in its real format, and its errors."""
import gzip
import pickle

import numpy as np
import pytest
import torch

from fastmix.harness.data import DataError, load_dataset
from fastmix.harness.data.idx import read_idx


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_idx_set(root, n_train=12, n_test=6, gz=True, labels_max=9):
    rng = np.random.default_rng(0)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(n_train) % (labels_max + 1),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(n_test) % 10,
    }
    for name, arr in files.items():
        data = idx_bytes(np.asarray(arr))
        if gz:
            (root / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (root / name).write_bytes(data)
    return files


@pytest.mark.parametrize("gz", [True, False])
def test_idx_loader_reads_gzipped_and_plain_files(tmp_path, gz):
    files = write_idx_set(tmp_path, gz=gz)
    ds = load_dataset("mnist", str(tmp_path))
    assert ds.x_train.shape == (12, 1, 28, 28) and ds.x_test.shape == (6, 1, 28, 28)
    assert torch.equal(ds.y_train, torch.from_numpy(files["train-labels-idx1-ubyte"]).long())
    # standardised with the training set's statistics
    assert abs(ds.x_train.mean().item()) < 1e-5 and abs(ds.x_train.std().item() - 1) < 1e-2
    # pixel order kept: the rank order of raw pixels survives standardisation
    raw = files["train-images-idx3-ubyte"][3].ravel()
    got = ds.x_train[3, 0].numpy().ravel()
    assert np.array_equal(np.argsort(raw, kind="stable"), np.argsort(got, kind="stable"))


def test_fashion_mnist_reads_data_root_subfolder(tmp_path):
    (tmp_path / "fashion-mnist").mkdir()
    write_idx_set(tmp_path / "fashion-mnist")
    assert load_dataset("fashion-mnist", str(tmp_path)).name == "fashion-mnist"


def test_idx_truncated_file_names_file(tmp_path):
    write_idx_set(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*truncated"):
        load_dataset("mnist", str(tmp_path))


def test_idx_truncated_gzip(tmp_path):
    write_idx_set(tmp_path, gz=True)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz"):
        load_dataset("mnist", str(tmp_path))


def test_idx_wrong_magic(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(idx_bytes(np.zeros((2, 3), np.uint8)))
    with pytest.raises(DataError, match="magic"):
        read_idx(p, 3)


def test_idx_mislabelled(tmp_path):
    write_idx_set(tmp_path, labels_max=11)
    with pytest.raises(DataError, match=r"train-labels.*0\.\.9"):
        load_dataset("mnist", str(tmp_path))


def test_idx_label_count_mismatch(tmp_path):
    write_idx_set(tmp_path, gz=False)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(DataError, match="expected 12 labels"):
        load_dataset("mnist", str(tmp_path))


def test_idx_missing_files(tmp_path):
    with pytest.raises(DataError, match="no IDX files"):
        load_dataset("mnist", str(tmp_path))


def write_cifar(root, n=4, bad_label=False):
    d = root / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [int(v) for v in rng.integers(0, 10, n)]
        if bad_label and name == "data_batch_3":
            labels[0] = 10
        batch = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), b"labels": labels, b"batch_label": b"x"}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)
    return d


def test_cifar_loader(tmp_path):
    d = write_cifar(tmp_path)
    ds = load_dataset("cifar10", str(tmp_path))
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_test.shape == (4, 3, 32, 32)
    with open(d / "test_batch", "rb") as f:
        raw = pickle.load(f, encoding="bytes")
    assert ds.y_test.tolist() == raw[b"labels"]
    # channel-major layout: the first 1024 bytes are the red plane
    red = raw[b"data"][0, :1024].reshape(32, 32).astype(np.float64)
    corr = np.corrcoef(red.ravel(), ds.x_test[0, 0].numpy().ravel())[0, 1]
    assert corr > 0.999


def test_cifar_truncated_and_mislabelled(tmp_path):
    (tmp_path / "a").mkdir()
    d = write_cifar(tmp_path / "a")
    p = d / "data_batch_2"
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(DataError, match="data_batch_2"):
        load_dataset("cifar10", str(tmp_path / "a"))
    (tmp_path / "b").mkdir()
    write_cifar(tmp_path / "b", bad_label=True)
    with pytest.raises(DataError, match=r"data_batch_3.*labels must be in 0\.\.9"):
        load_dataset("cifar10", str(tmp_path / "b"))


def test_cifar_refuses_foreign_pickles(tmp_path):
    d = write_cifar(tmp_path)
    with open(d / "data_batch_1", "wb") as f:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": torch.nn.Identity}, f)
    with pytest.raises(DataError, match="data_batch_1"):
        load_dataset("cifar10", str(tmp_path))


def write_svhn(root, n=5, label=None):
    from scipy.io import savemat

    rng = np.random.default_rng(2)
    for name in ("train_32x32.mat", "test_32x32.mat"):
        y = (np.arange(n) % 10 + 1).reshape(-1, 1)  # the file's labels are 1..10, 10 meaning digit 0
        if label is not None:
            y[0, 0] = label
        savemat(root / name, {"X": rng.integers(0, 256, (32, 32, 3, n)).astype(np.uint8), "y": y})


def test_svhn_loader(tmp_path):
    write_svhn(tmp_path)
    ds = load_dataset("svhn", str(tmp_path))
    assert ds.x_train.shape == (5, 3, 32, 32)
    assert ds.y_train.tolist() == [1, 2, 3, 4, 5]
    write_svhn(tmp_path, n=10)
    assert load_dataset("svhn", str(tmp_path)).y_test.tolist()[-1] == 0  # label 10 is digit 0


def test_svhn_truncated_and_mislabelled(tmp_path):
    write_svhn(tmp_path, label=11)
    with pytest.raises(DataError, match=r"train_32x32.mat.*labels"):
        load_dataset("svhn", str(tmp_path))
    write_svhn(tmp_path)
    p = tmp_path / "test_32x32.mat"
    p.write_bytes(p.read_bytes()[:300])
    with pytest.raises(DataError, match="test_32x32.mat"):
        load_dataset("svhn", str(tmp_path))


def test_digits_and_unknown_name():
    ds = load_dataset("digits")
    assert ds.x_train.shape[1:] == (1, 8, 8) and ds.x_train.shape[0] + ds.x_test.shape[0] == 1797
    assert sorted(ds.y_test.unique().tolist()) == list(range(10))
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_dataset("imagenet")


# --- Bad files are refused, never read as garbage ----------------------------------------


def test_idx_corrupt_gzip_names_file(tmp_path):
    write_idx_set(tmp_path)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    raw = bytearray(p.read_bytes())
    raw[10] = 0xFF  # the first deflate block's type is the reserved one: zlib.error
    p.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz.*corrupt"):
        load_dataset("mnist", str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bnot gzip at all")  # gzip.BadGzipFile
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", 1)


def test_idx_test_images_of_another_size(tmp_path):
    write_idx_set(tmp_path, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((6, 32, 32), np.uint8)))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*32x32.*28x28"):
        load_dataset("mnist", str(tmp_path))


def test_fashion_mnist_named_root_is_never_swapped_for_debians_copy(tmp_path, monkeypatch):
    (tmp_path / "debian").mkdir()
    write_idx_set(tmp_path / "debian")
    monkeypatch.setattr("fastmix.harness.data.idx.DEBIAN_FASHION_MNIST", str(tmp_path / "debian"))
    assert load_dataset("fashion-mnist").x_train.shape[0] == 12  # no --data-root: Debian's copy
    with pytest.raises(DataError, match="typo") as err:
        load_dataset("fashion-mnist", str(tmp_path / "typo"))
    assert "debian" not in str(err.value)


@pytest.mark.parametrize("bad", ["cat", 2.5, None])
def test_cifar_labels_that_are_not_integers(tmp_path, bad):
    d = write_cifar(tmp_path)
    with open(d / "test_batch", "rb") as f:
        batch = pickle.load(f)
    batch[b"labels"][0] = bad
    with open(d / "test_batch", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(DataError, match="test_batch.*integer labels"):
        load_dataset("cifar10", str(tmp_path))


def test_svhn_float_pixels_in_0_1_load_as_the_uint8_pixels(tmp_path):
    from scipy.io import loadmat, savemat

    write_svhn(tmp_path)
    want = load_dataset("svhn", str(tmp_path))
    for name in ("train_32x32.mat", "test_32x32.mat"):
        mat = loadmat(tmp_path / name)
        savemat(tmp_path / name, {"X": mat["X"].astype(np.float32) / 255, "y": mat["y"].astype(np.float64)})
    got = load_dataset("svhn", str(tmp_path))
    assert got.x_train.abs().max() > 0.5  # not zeros
    torch.testing.assert_close(got.x_train, want.x_train, atol=1e-4, rtol=1e-4)
    assert torch.equal(got.y_train, want.y_train)  # whole-number doubles are labels


def test_svhn_refuses_fractional_labels_and_out_of_range_pixels(tmp_path):
    from scipy.io import savemat

    write_svhn(tmp_path)
    y = (np.arange(5) % 10 + 1.0).reshape(-1, 1)
    y[2, 0] = 3.5
    x = np.random.default_rng(0).integers(0, 256, (32, 32, 3, 5)).astype(np.uint8)
    savemat(tmp_path / "train_32x32.mat", {"X": x, "y": y})
    with pytest.raises(DataError, match=r"train_32x32.mat.*3\.5"):
        load_dataset("svhn", str(tmp_path))
    savemat(tmp_path / "train_32x32.mat", {"X": x.astype(np.float64) * 2, "y": y.round()})
    with pytest.raises(DataError, match=r"train_32x32.mat.*0\.\.255"):
        load_dataset("svhn", str(tmp_path))
