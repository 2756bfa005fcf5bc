"""End to end on the embedded digits: `fastmix train` and `fastmix unlearn` forget
class 0 and keep the rest, against retraining."""
import json
import os

import pytest

from fastmix.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, one_torch_thread):
    out = tmp_path_factory.mktemp("digits")
    assert main(["unlearn", "--out", str(out), "--quiet"]) == 0
    return out


def test_default_run_forgets_class_and_keeps_the_rest(default_run):
    res = json.loads((default_run / "results.json").read_text())
    assert {"original", "retrain", "mixunlearn", "finetune", "settings", "versions"} <= set(res)
    keys = {"Train_r", "Train_f", "Test_r", "Test_f", "ASR", "MIA_efficacy", "avg_gap", "seconds"}
    assert all(keys <= set(res[m]) for m in ("original", "retrain", "mixunlearn", "finetune"))
    orig, ret, mix = res["original"], res["retrain"], res["mixunlearn"]
    assert orig["Train_f"] > 95 and orig["Test_f"] > 90  # there was something to forget
    assert ret["Train_f"] == 0 and ret["Test_f"] == 0
    assert mix["Train_f"] < 5 and mix["Test_f"] < 5  # forgotten
    assert abs(mix["Test_r"] - ret["Test_r"]) <= 2.0 and mix["Train_r"] > 97  # retained
    assert mix["avg_gap"] < orig["avg_gap"] / 5 and mix["avg_gap"] < res["finetune"]["avg_gap"]
    assert 0 < mix["seconds"] < 120  # wall time on a shared machine: only a loose bound
    assert res["settings"]["dataset"] == "digits" and res["settings"]["options"]["omega"] == 10.0
    png = (default_run / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_second_run_reuses_the_cached_models(default_run, capsys):
    models = sorted((default_run / "models").glob("*.pt"))
    assert len(models) == 2
    stamps = [os.stat(p).st_mtime_ns for p in models]
    assert main(["train", "--out", str(default_run)]) == 0
    assert "reusing" in capsys.readouterr().out
    assert [os.stat(p).st_mtime_ns for p in models] == stamps
    assert not list((default_run / "models").glob("*.tmp"))


def test_data_level_label_agnostic_run(tmp_path, capsys):
    rc = main(["unlearn", "--setting", "data", "--labels", "agnostic", "--method", "mixunlearn",
               "--train-epochs", "5", "--unlearn-epochs", "2", "--out", str(tmp_path), "--quiet", "--no-png"])
    assert rc == 0
    table = capsys.readouterr().out
    assert "Test " not in table.splitlines()[0] or "Test_f" not in table  # data-level has one Test column
    res = json.loads((tmp_path / "results.json").read_text())
    assert "Test" in res["mixunlearn"] and "Test_f" not in res["mixunlearn"]
    assert res["settings"]["labels"] == "agnostic" and res["settings"]["n_forget"] > 0


def test_clear_errors(tmp_path, capsys):
    assert main(["unlearn", "--dataset", "mnist", "--data-root", str(tmp_path), "--out", str(tmp_path), "--quiet"]) == 2
    assert "no IDX files" in capsys.readouterr().out
    assert main(["unlearn", "--method", "magic", "--out", str(tmp_path), "--quiet"]) == 2
    assert "unknown method 'magic'" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["unlearn", "--tau-mix", "-1"])
