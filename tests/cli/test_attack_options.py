"""`--asr-model` and `--mia-sampling`: the attacks of the reference codes, recorded in
results.json's settings; the defaults leave every number as it was."""
import json

import pytest

from fastmix.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARGS = ["unlearn", "--train-epochs", "1", "--method", "finetune", "--ft-epochs", "1", "--quiet", "--no-png"]


def test_attack_choices_are_recorded_and_change_only_the_attacks(tmp_path):
    models = str(tmp_path / "models")
    assert main([*ARGS, "--out", str(tmp_path / "a"), "--models-dir", models]) == 0
    assert main([*ARGS, "--out", str(tmp_path / "b"), "--models-dir", models, "--asr-model", "xgboost",
                 "--mia-sampling", "salun"]) == 0
    a, b = (json.loads((tmp_path / x / "results.json").read_text()) for x in "ab")
    assert a["settings"]["attacks"] == {"asr_model": "hgb", "mia_sampling": "fastmix"}
    assert b["settings"]["attacks"] == {"asr_model": "xgboost", "mia_sampling": "salun"}
    for row in ("original", "retrain", "finetune"):
        assert {k: a[row][k] for k in ("Train_r", "Train_f", "Test_r", "Test_f")} == \
            {k: b[row][k] for k in ("Train_r", "Train_f", "Test_r", "Test_f")}
    assert any(a[row][m] != b[row][m] for row in ("original", "retrain", "finetune") for m in ("ASR", "MIA_efficacy"))


@pytest.mark.parametrize("flag, value", [("--asr-model", "svm"), ("--mia-sampling", "laf")])
def test_unknown_attack_choices_are_refused(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([*ARGS, flag, value, "--out", str(tmp_path)])
    assert flag in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
