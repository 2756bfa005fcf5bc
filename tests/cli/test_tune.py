"""`fastmix tune` on digits at tiny scale: trials scored on the validation split, the
search log and the recipe of the winner, resuming without repeating finished trials."""
import json
import sys

import pytest
from repo_files import load

from fastmix.cli import main
from fastmix.harness.method_recipes import load_recipe
from fastmix.harness.report import code_hash

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARGS = ["tune", "--train-epochs", "1", "--quiet", "--threads", "1"]


def recorded_runs(monkeypatch, diverged=()):
    """Every Experiment a trial runs, in order, through the real run_experiment; on the calls
    numbered in ``diverged`` the method row comes back NaN (as a diverged model's does)."""
    import fastmix.harness.tuning as tuning

    real, seen = tuning.run_experiment, []

    def run(exp, **kw):
        number = len(seen)
        seen.append(exp)
        result = real(exp, **kw)
        if number in diverged:
            row = result["rows"][exp.methods[0]]
            row.update({k: float("nan") for k in row if k not in ("seconds", "RTE")})
        return result

    monkeypatch.setattr(tuning, "run_experiment", run)
    return seen


@pytest.fixture
def runs(monkeypatch):
    return recorded_runs(monkeypatch)


def search_log(out, method="finetune"):
    return json.loads((out / "search-log.json").read_text())[method]


def test_tune_scores_on_the_validation_split_and_writes_log_and_recipe(tmp_path, runs):
    out = tmp_path / "t"
    assert main([*ARGS, "--method", "finetune", "--budget", "2", "--mia-sampling", "salun", "--out", str(out)]) == 0
    assert len(runs) == 2
    for exp in runs:  # the validation split (10% of digits' 1347 training images), never the test set
        assert (exp.eval_split, exp.val_size, exp.methods) == ("val", 134, ("finetune",))
        assert exp.attacks.mia_sampling == "salun" and exp.models_dir is None and exp.out == str(out)
    assert len(list((out / "models").glob("*.pt"))) == 2  # the original and retrain, trained once
    log = search_log(out)
    assert [t["state"] for t in log["trials"]] == ["COMPLETE", "COMPLETE"]
    for trial, exp in zip(log["trials"], runs):
        assert set(trial["params"]) == {"ft_lr", "ft_epochs"} and trial["params"].items() <= exp.options.items()
        assert trial["val_avg_gap"] == trial["metrics"]["avg_gap"] and trial["seconds"] > 0
        assert {"Train_r", "Train_f", "Test_r", "Test_f", "ASR", "MIA_efficacy"} <= set(trial["metrics"])
        assert trial["fastmix_source"] == code_hash()  # the code each trial ran: a search can span versions
    best = min(log["trials"], key=lambda t: t["val_avg_gap"])
    assert log["best_trial"] == best["number"]
    recipe = load_recipe(out / "digits-class.json")
    assert {k: e["value"] for k, e in recipe["methods"]["finetune"].items()} == best["params"]
    source = recipe["methods"]["finetune"]["ft_lr"]["source"]
    assert source.startswith("tuned: fastmix tune, budget 2, val Avg. Gap ") and "134 validation" in source
    assert "mia salun" in source


def test_a_rerun_resumes_without_repeating_finished_trials(tmp_path, runs):
    out = str(tmp_path / "t")
    argv = [*ARGS, "--method", "finetune", "--ft-epochs", "1", "--out", out]
    assert main([*argv, "--budget", "2"]) == 0 and len(runs) == 2
    assert main([*argv, "--budget", "2"]) == 0 and len(runs) == 2  # budget reached: nothing runs
    assert main([*argv, "--budget", "3"]) == 0 and len(runs) == 3  # one more
    trials = search_log(tmp_path / "t")["trials"]
    assert [set(t["params"]) for t in trials] == [{"ft_lr"}] * 3  # --ft-epochs given: fixed, not searched
    assert all(exp.options["ft_epochs"] == 1 for exp in runs)
    assert len({t["params"]["ft_lr"] for t in trials}) == 3
    with pytest.raises(SystemExit):  # the budget is required
        main([*ARGS, "--method", "finetune", "--out", out])


def test_later_trials_reuse_the_first_trials_original_and_retrain_rows(tmp_path, runs, monkeypatch):
    import fastmix.harness.experiment as experiment
    from fastmix.harness.experiment import run_experiment

    evaluated, loaded = [], []
    real, real_load = experiment.evaluate, experiment.train_or_load
    monkeypatch.setattr(experiment, "evaluate", lambda *a, **kw: evaluated.append(1) or real(*a, **kw))
    monkeypatch.setattr(experiment, "train_or_load", lambda *a, **kw: loaded.append(kw["desc"]) or real_load(*a, **kw))
    out = tmp_path / "t"
    assert main([*ARGS, "--method", "finetune", "--ft-epochs", "1", "--budget", "2", "--out", str(out)]) == 0
    assert len(runs) == 2 and len(evaluated) == 4  # original, retrain and the method; then the method only
    assert loaded == ["original", "retrain", "original"]  # the retrained model is not even loaded again
    second = search_log(out)["trials"][1]
    fresh = run_experiment(runs[1], log=lambda *a: None)["rows"]["finetune"]  # everything evaluated anew
    assert {k: float(v) for k, v in fresh.items() if k not in ("seconds", "RTE")} == \
        {k: v for k, v in second["metrics"].items() if k not in ("seconds", "RTE")}


def table_rows(markdown: str, trials: int) -> list:
    """The header and trial rows of a one-method Markdown table, checked to have one cell a column."""
    lines = [r for r in markdown.splitlines() if r.startswith("|")]
    cells = {len(r.replace("\\|", "").split("|")) for r in lines}
    assert len(lines) == trials + 2 and len(cells) == 1, lines
    return [lines[0], *lines[2:]]


def test_a_diverged_trial_is_scored_worst_and_counts(tmp_path, monkeypatch, capsys):
    from fastmix.harness.tuning import DIVERGED

    out = tmp_path / "t"
    calls = recorded_runs(monkeypatch, diverged={0})
    assert main([*ARGS, "--method", "finetune", "--budget", "2", "--out", str(out)]) == 0
    assert len(calls) == 2
    first, second = search_log(out)["trials"]
    assert (first["state"], first["val_avg_gap"], first["error"]) == ("COMPLETE", float("inf"), DIVERGED)
    assert search_log(out)["best_trial"] == second["number"]
    recipe = load_recipe(out / "digits-class.json")
    assert {k: e["value"] for k, e in recipe["methods"]["finetune"].items()} == second["params"]
    # scripts/search_log_tables.py (RESULTS.md's search logs): the winner bold, the diverged one named
    script = load("scripts/search_log_tables.py")
    rows = table_rows(script.tables(out), 2)
    assert rows[0].startswith("| # | settings | Train r |")
    assert f"**{second['val_avg_gap']:.2f}**" in rows[2] and code_hash() in rows[2]
    assert rows[1].endswith("| inf | " + f"{first['seconds']:.0f} | {code_hash()} | diverged (scored +inf) |")
    # no trial with metrics (one failed with a | in its message, one interrupted): still one cell a column
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "search-log.json").write_text(json.dumps({"finetune": {"best_trial": None, "trials": [
        {"number": 0, "state": "FAIL", "params": {"ft_lr": 0.1}, "val_avg_gap": None, "metrics": None,
         "seconds": 1.0, "error": "bad | value\nsecond line"},
        {"number": 1, "state": "FAIL", "params": {"ft_lr": 0.2}, "val_avg_gap": None, "metrics": None,
         "seconds": None, "interrupted": True}]}}))
    rows = table_rows(script.tables(tmp_path / "failed"), 2)
    assert rows[1].endswith("| bad \\| value second line |") and "interrupted" in rows[2]

    out = tmp_path / "all-diverged"  # no winner, no recipe, said so
    recorded_runs(monkeypatch, diverged={0, 1})  # wraps the first: its calls from here on are 2 and 3
    capsys.readouterr()
    assert main([*ARGS, "--method", "finetune", "--budget", "2", "--out", str(out)]) == 1
    assert "no trial completed with a finite gap" in capsys.readouterr().out
    assert not (out / "digits-class.json").exists() and search_log(out)["best_trial"] is None


def test_a_setting_drawn_again_runs_nothing_and_copies_its_trial(tmp_path, runs):
    """A trial that draws a finished trial's settings (seeded: TPE's random start draws SSD's
    (alpha 5, lambda 1) twice) takes that trial's value, metrics and code hash, and runs nothing."""
    out = tmp_path / "t"
    assert main([*ARGS, "--method", "ssd", "--budget", "4", "--out", str(out)]) == 0
    trials = search_log(out, "ssd")["trials"]
    repeats = [t for t in trials if "repeat_of" in t]
    assert repeats and len(runs) == len(trials) - len(repeats)
    for t in repeats:
        first = trials[t["repeat_of"]]
        assert "repeat_of" not in first and t["params"] == first["params"]
        assert [t[k] for k in ("val_avg_gap", "metrics", "fastmix_source")] == \
            [first[k] for k in ("val_avg_gap", "metrics", "fastmix_source")]
    rows = table_rows(load("scripts/search_log_tables.py").tables(out), len(trials))
    row = rows[1 + repeats[0]["number"]]
    assert row.endswith(f"|  | {code_hash()} | repeat of {repeats[0]['repeat_of']} (ran nothing) |")


def test_an_interrupted_trial_runs_again_first_and_does_not_count(tmp_path, runs, monkeypatch):
    import fastmix.harness.tuning as tuning

    out = str(tmp_path / "t")
    argv = [*ARGS, "--method", "finetune", "--budget", "2", "--out", out]
    recording = tuning.run_experiment

    def stopped_second(exp, **kw):
        if len(runs) == 1:
            runs.append(exp)
            raise KeyboardInterrupt
        return recording(exp, **kw)

    monkeypatch.setattr(tuning, "run_experiment", stopped_second)
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    interrupted = runs[1].options
    monkeypatch.setattr(tuning, "run_experiment", recording)
    assert main(argv) == 0 and len(runs) == 3 and runs[2].options == interrupted
    trials = search_log(tmp_path / "t")["trials"]
    assert [(t["state"], t.get("interrupted", False)) for t in trials] == \
        [("COMPLETE", False), ("FAIL", True), ("COMPLETE", False)]


def test_a_trial_left_running_by_a_killed_search_is_run_again(tmp_path, runs):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    out = tmp_path / "t"
    out.mkdir()
    argv = [*ARGS, "--method", "finetune", "--ft-epochs", "1", "--budget", "1", "--out", str(out)]
    assert main(argv) == 0 and len(runs) == 1
    study = optuna.load_study(study_name="finetune", storage=JournalStorage(JournalFileBackend(
        str(out / "optuna-journal.log"))))
    left = study.ask()  # as a search killed in its trial leaves it: RUNNING
    lr = left.suggest_float("ft_lr", 1e-5, 1e-2, log=True)
    assert main([*argv[:-4], "--budget", "2", "--out", str(out)]) == 0
    assert len(runs) == 2 and runs[1].options["ft_lr"] == lr
    trials = search_log(out)["trials"]
    assert trials[1]["state"] == "FAIL" and trials[1]["interrupted"] and trials[2]["params"] == {"ft_lr": lr}


def test_mixunlearn_searches_the_paper_grids(tmp_path, runs):
    from fastmix.mixunlearn.config import SEARCH_SPACE

    assert main([*ARGS, "--method", "mixunlearn", "--unlearn-epochs", "1", "--budget", "1",
                 "--out", str(tmp_path)]) == 0
    (trial,) = search_log(tmp_path, "mixunlearn")["trials"]
    assert set(trial["params"]) == {"omega", "tau_real", "tau_mix", "tau_gen"}
    assert all(v in SEARCH_SPACE[k].values for k, v in trial["params"].items())
    assert runs[0].options["epochs"] == 1


@pytest.mark.parametrize("extra, message", [
    (["--eval-split", "test"], "validation split"),
    (["--method", "nope"], "unknown method 'nope'"),
    (["--asr-model", "xgboost", "--method", "finetune", "--ft-lr", "1e-3", "--ft-epochs", "1"],
     "finetune has nothing left to search"),
])
def test_bad_searches_are_refused_before_any_work(tmp_path, capsys, extra, message, runs):
    argv = [*ARGS, "--budget", "1", "--out", str(tmp_path / "t"), *extra]
    if "--method" not in extra:
        argv += ["--method", "finetune"]
    assert main(argv) == 2
    assert message in capsys.readouterr().out and not runs and not (tmp_path / "t").exists()


def test_missing_optuna_is_named_with_its_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    assert main([*ARGS, "--method", "finetune", "--budget", "1", "--out", str(tmp_path)]) == 2
    assert 'pip install "fastmix[tune]"' in capsys.readouterr().out


def test_a_search_with_other_settings_is_refused_in_the_same_folder(tmp_path, capsys, runs):
    argv = [*ARGS, "--method", "finetune", "--ft-epochs", "1", "--budget", "1", "--out", str(tmp_path)]
    assert main(argv) == 0
    assert main([*argv, "--seed", "1"]) == 2
    assert "holds a search of finetune with other settings" in capsys.readouterr().out and len(runs) == 1


def test_a_setting_added_since_a_search_began_leaves_it_the_same_search(tmp_path, capsys, runs):
    """A study keyed before a setting existed (its key lacks that option) resumes while the
    option is not given, and is refused once it is: issue 16's searches outlived the
    addition of --scrub-forget-batch-size."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    argv = [*ARGS, "--method", "finetune", "--ft-epochs", "1", "--out", str(tmp_path)]
    assert main([*argv, "--budget", "1"]) == 0 and len(runs) == 1
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna-journal.log")))
    study = optuna.load_study(study_name="finetune", storage=storage)
    key = json.loads(study.user_attrs["key"])
    assert key["experiment"]["options"].pop("scrub_forget_batch_size", "absent") is None  # an ungiven option
    study.set_user_attr("key", json.dumps(key, sort_keys=True))  # as an older fastmix stored it
    assert main([*argv, "--budget", "2"]) == 0 and len(runs) == 2
    assert main([*argv, "--budget", "3", "--scrub-forget-batch-size", "256"]) == 2 and len(runs) == 2
    assert "holds a search of finetune with other settings" in capsys.readouterr().out


def test_a_later_methods_held_search_is_refused_before_an_earlier_one_runs(tmp_path, capsys, runs):
    # --method finetune,ga where ga's search has other settings: no finetune trial runs first
    argv = [*ARGS, "--ft-epochs", "1", "--ga-epochs", "1", "--budget", "1", "--out", str(tmp_path)]
    assert main([*argv, "--method", "ga"]) == 0 and len(runs) == 1
    assert main([*argv, "--method", "finetune,ga", "--seed", "1"]) == 2
    assert "holds a search of ga with other settings" in capsys.readouterr().out and len(runs) == 1


def test_restart_forgets_a_methods_trials_and_searches_again(tmp_path, capsys, runs):
    argv = [*ARGS, "--method", "finetune", "--ft-epochs", "1", "--budget", "1", "--out", str(tmp_path)]
    assert main(argv) == 0 and len(runs) == 1
    first = search_log(tmp_path)["trials"]
    assert main([*argv, "--seed", "1"]) == 2
    assert "--restart to forget that search" in capsys.readouterr().out and len(runs) == 1
    assert main([*argv, "--seed", "1", "--restart"]) == 0 and len(runs) == 2 and runs[-1].seed == 1
    again = search_log(tmp_path)["trials"]
    assert [t["number"] for t in again] == [0] and again != first
    assert main([*argv, "--seed", "1"]) == 0 and len(runs) == 2  # the new search is the one resumed


def test_fastmix_unlearn_takes_the_recipe_tune_wrote_and_a_flag_still_wins(tmp_path):
    out = tmp_path / "t"
    assert main([*ARGS, "--method", "finetune", "--budget", "1", "--out", str(out)]) == 0
    recipe = out / "digits-class.json"
    tuned = {k: e["value"] for k, e in load_recipe(recipe)["methods"]["finetune"].items()}
    run = ["unlearn", "--train-epochs", "1", "--method", "finetune", "--quiet", "--no-png", "--recipe", str(recipe)]
    assert main([*run, "--out", str(tmp_path / "a")]) == 0
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    assert doc["settings"]["recipe"] == str(recipe)
    assert {k: doc["settings"]["options"][k] for k in tuned} == tuned
    assert main([*run, "--ft-epochs", "4", "--out", str(tmp_path / "b")]) == 0
    options = json.loads((tmp_path / "b" / "results.json").read_text())["settings"]["options"]
    assert options["ft_epochs"] == 4 and options["ft_lr"] == tuned["ft_lr"]


def test_help_names_the_validation_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["tune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert e.value.code == 0 and "default 10% of the training set" in text and "--budget" in text
