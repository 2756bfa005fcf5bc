"""Bad arguments and bad files, one row each: `fastmix unlearn` exits with code 2 and a
message naming the argument or file, before anything is trained or written.

Training is replaced by a function that fails the test, so a row that would reach it
fails at once instead of training (and every row stays fast)."""
from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
from harness.test_data_loaders import idx_bytes, write_cifar, write_idx_set, write_svhn

from fastmix.cli import main


def corrupt_gzip(root):
    write_idx_set(root)
    p = root / "train-images-idx3-ubyte.gz"
    raw = bytearray(p.read_bytes())
    raw[10] = 0xFF  # the first deflate block's type is the reserved one: zlib.error
    p.write_bytes(bytes(raw))
    return ["--dataset", "mnist", "--data-root", str(root)]


def truncated_gzip(root):
    write_idx_set(root)
    p = root / "train-labels-idx1-ubyte.gz"
    p.write_bytes(p.read_bytes()[:-12])  # EOFError
    return ["--dataset", "mnist", "--data-root", str(root)]


def not_gzip(root):
    write_idx_set(root)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8bnot really gzip")  # gzip.BadGzipFile
    return ["--dataset", "mnist", "--data-root", str(root)]


def other_size_test_images(root):
    write_idx_set(root, gz=False)
    rng = np.random.default_rng(0)
    (root / "t10k-images-idx3-ubyte").write_bytes(idx_bytes(rng.integers(0, 256, (6, 32, 32))))
    return ["--dataset", "mnist", "--data-root", str(root)]


def cifar_labels(value):
    def make(root):
        d = write_cifar(root)
        with open(d / "data_batch_4", "rb") as f:
            batch = pickle.load(f)
        batch[b"labels"][1] = value
        with open(d / "data_batch_4", "wb") as f:
            pickle.dump(batch, f)
        return ["--dataset", "cifar10", "--data-root", str(root)]

    return make


def svhn_pixels(x):
    def make(root):
        from scipy.io import savemat

        write_svhn(root)
        savemat(root / "train_32x32.mat", {"X": x, "y": (np.arange(5) % 10 + 1).reshape(-1, 1)})
        return ["--dataset", "svhn", "--data-root", str(root)]

    return make


def fashion_mnist_named_root_missing(root, monkeypatch):
    # Debian's copy exists (here: a valid fake), but the user named another folder: refuse, never swap.
    (root / "debian").mkdir()
    write_idx_set(root / "debian")
    monkeypatch.setattr("fastmix.harness.data.idx.DEBIAN_FASHION_MNIST", str(root / "debian"))
    return ["--dataset", "fashion-mnist", "--data-root", str(root / "typo")]


def not_a_folder(flag):
    def make(root):
        (root / "file").write_text("a file, not a folder")
        return [flag, str(root / "file" / "sub")]

    return make


def no_cuda(root, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    return ["--device", "cuda"]


# id: (arguments, or a function of the run's folder [and monkeypatch] returning them; what the message names)
ROWS = {
    "device_unknown": (["--device", "tpu0"], "--device"),
    "device_cuda_without_gpu": (no_cuda, "--device"),
    "device_index": (["--device", "cuda:x"], "--device"),
    "seed_negative": (["--seed", "-1"], "--seed"),
    "seed_too_large": (["--seed", str(2**63)], "--seed"),
    "seed_not_a_number": (["--seed", "1e3"], "--seed"),
    "no_mix_and_omega_0": (["--no-mix", "--omega", "0"], "omega"),
    "cuda_graphs_on_cpu": (["--cuda-graphs", "--device", "cpu"], "--cuda-graphs"),
    "paper_step_with_amp": (["--paper-step", "--amp", "bf16"], "amp"),
    "forget_class_in_data_setting": (["--setting", "data", "--forget-class", "3"], "--forget-class"),
    "forget_fraction_in_class_setting": (["--forget-fraction", "0.3"], "--forget-fraction"),
    "forget_every_class": (["--forget-class", "0-9"], "--forget-class"),
    "forget_class_out_of_range": (["--forget-class", "10"], "--forget-class"),
    "forget_class_not_a_class": (["--forget-class", "zero"], "--forget-class"),
    "forget_fraction_above_1": (["--setting", "data", "--forget-fraction", "1.5"], "--forget-fraction"),
    "val_size_negative": (["--val-size", "-5"], "--val-size"),
    "val_size_too_large": (["--val-size", "100000"], "--val-size"),
    "eval_split_val_without_val_size": (["--eval-split", "val"], "--val-size"),
    "unknown_method": (["--method", "mixunlearn,magic"], "magic"),
    "feature_layer_missing": (["--feature-layer", "block9"], "--feature-layer"),
    "model_for_other_images": (["--model", "mnist-cnn"], "--model"),
    "data_root_for_digits": (["--data-root", "."], "--data-root"),
    "out_not_writable": (not_a_folder("--out"), "--out"),
    "models_dir_not_writable": (not_a_folder("--models-dir"), "--models-dir"),
    "corrupt_gzip": (corrupt_gzip, "train-images-idx3-ubyte.gz"),
    "truncated_gzip": (truncated_gzip, "train-labels-idx1-ubyte.gz"),
    "not_gzip": (not_gzip, "t10k-labels-idx1-ubyte.gz"),
    "test_images_of_another_size": (other_size_test_images, "t10k-images-idx3-ubyte"),
    "cifar_label_not_a_number": (cifar_labels("cat"), "data_batch_4"),
    "cifar_label_fractional": (cifar_labels(2.5), "data_batch_4"),
    "svhn_negative_pixels": (svhn_pixels(-np.ones((32, 32, 3, 5))), "train_32x32.mat"),
    "svhn_nan_pixels": (svhn_pixels(np.full((32, 32, 3, 5), np.nan)), "train_32x32.mat"),
    "fashion_mnist_named_root_missing": (fashion_mnist_named_root_missing, "typo"),
}


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    def trained(*args, **kwargs):
        raise AssertionError("a bad argument reached training")

    monkeypatch.setattr("fastmix.harness.training.train_classifier", trained)


def run(argv, capsys) -> tuple[int, str]:
    try:
        rc = main(["unlearn", *argv])
    except SystemExit as e:  # argparse's own checks
        rc = e.code
    cap = capsys.readouterr()
    return rc, cap.out + cap.err


@pytest.mark.parametrize("row", sorted(ROWS))
def test_bad_argument_fails_before_any_work(row, tmp_path, monkeypatch, capsys):
    make, names = ROWS[row]
    root = tmp_path / "data"
    root.mkdir()
    if callable(make):
        argv = make(root, monkeypatch) if make.__code__.co_argcount == 2 else make(root)
    else:
        argv = list(make)
    out = tmp_path / "out"
    if "--out" not in argv:
        argv += ["--out", str(out)]
    rc, message = run([*argv, "--quiet", "--no-png"], capsys)
    assert rc == 2, message
    assert names in message, message
    assert "Traceback" not in message
    assert not list(tmp_path.rglob("*.pt")) and not list(tmp_path.rglob("results.json"))
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_stale_temporary_file_is_removed_at_start(tmp_path, capsys):
    """A killed write leaves ``<target>.<pid>.<random>.tmp``; the next run removes it
    (here the run stops at a bad argument found after the folders are prepared)."""
    models = tmp_path / "out" / "models"
    models.mkdir(parents=True)
    stale = [models / "x.pt.999999999.abc_1234.tmp", tmp_path / "out" / "results.json.k3j4h5ab.tmp"]
    for p in stale:
        p.write_bytes(b"half")
    rc, _ = run(["--feature-layer", "block9", "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert rc == 2
    assert not any(p.exists() for p in stale)


def test_gzip_row_is_really_corrupt(tmp_path):
    """The corrupt-gzip rows test what they say: gzip itself fails on those files."""
    import zlib

    corrupt_gzip(tmp_path)
    with pytest.raises(zlib.error):
        gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())


TRAIN_ROWS = {
    "device_unknown": (["--device", "tpu0"], "--device"),
    "seed_negative": (["--seed", "-3"], "--seed"),
    "forget_classes_in_class_setting": (["--forget-classes", "1-2"], "--forget-classes"),
    "forget_every_class": (["--forget-class", "0-9"], "--forget-class"),
    "models_dir_not_writable": (not_a_folder("--models-dir"), "--models-dir"),
}


@pytest.mark.parametrize("row", sorted(TRAIN_ROWS))
def test_fastmix_train_checks_the_same_before_training(row, tmp_path, capsys):
    make, names = TRAIN_ROWS[row]
    argv = make(tmp_path) if callable(make) else list(make)
    try:
        rc = main(["train", *argv, "--out", str(tmp_path / "out"), "--quiet"])
    except SystemExit as e:
        rc = e.code
    cap = capsys.readouterr()
    assert rc == 2 and names in cap.out + cap.err, cap.out + cap.err
    assert not list(tmp_path.rglob("*.pt"))
