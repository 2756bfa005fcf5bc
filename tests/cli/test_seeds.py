"""`fastmix unlearn --seeds`: one run per seed, then each metric's mean and standard
deviation over the seeds; and the RTE column of every run."""
import contextlib
import io
import json
import math
import shutil

import pytest

from fastmix.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARGS = ["unlearn", "--train-epochs", "2", "--unlearn-epochs", "1", "--method", "mixunlearn", "--quiet", "--no-png"]


@pytest.fixture(scope="module")
def seeds_run(tmp_path_factory, one_torch_thread):
    """One ``--seeds 0,3`` run shared by the tests that only read it (or a copy): its folder and table."""
    out = tmp_path_factory.mktemp("seeds")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main([*ARGS, "--seeds", "0,3", "--out", str(out)]) == 0
    return out, printed.getvalue()


def test_seeds_report_mean_and_std_of_the_per_seed_runs(seeds_run):
    tmp_path, table = seeds_run
    assert "mean ± std over seeds 0, 3" in table and "±" in table.splitlines()[-1]
    runs = [json.loads((tmp_path / f"seed-{s}" / "results.json").read_text()) for s in (0, 3)]
    assert [r["settings"]["seed"] for r in runs] == [0, 3]
    assert {k: v for k, v in runs[0]["original"].items() if k not in ("seconds", "RTE")} != \
        {k: v for k, v in runs[1]["original"].items() if k not in ("seconds", "RTE")}  # the seeds differ
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["settings"]["seeds"] == [0, 3] and "seed" not in doc["settings"]
    for name in ("original", "retrain", "mixunlearn"):
        for metric in ("Train_r", "Train_f", "Test_r", "ASR", "avg_gap", "RTE"):
            values = [r[name][metric] for r in runs]
            mean = sum(values) / 2
            std = math.sqrt(sum((v - mean) ** 2 for v in values))  # sample std of two values: |a - b| / sqrt(2)
            assert doc[name][metric] == pytest.approx(mean) and doc[name][f"{metric}_std"] == pytest.approx(std)


def test_each_run_reports_rte_against_retrain(tmp_path):
    assert main([*ARGS, "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "results.json").read_text())
    retrain = doc["retrain"]["seconds"]
    assert doc["retrain"]["RTE"] == pytest.approx(1.0)
    assert doc["mixunlearn"]["RTE"] == pytest.approx(retrain / doc["mixunlearn"]["seconds"])


@pytest.mark.parametrize("seeds", ["0,0", "", "1,x", "-1"])
def test_bad_seed_lists_are_refused(seeds, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main([*ARGS, "--seeds", seeds, "--out", str(tmp_path)])
    assert "--seeds" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_a_rerun_skips_finished_seeds_and_reruns_stopped_or_changed_ones(seeds_run, tmp_path, monkeypatch):
    import fastmix.harness.experiment as experiment

    runs = []
    real = experiment.run_experiment

    def counting(exp, **kw):
        runs.append(exp.seed)
        return real(exp, **kw)

    monkeypatch.setattr(experiment, "run_experiment", counting)
    shutil.copytree(seeds_run[0], tmp_path, dirs_exist_ok=True)
    argv = [*ARGS, "--seeds", "0,3", "--out", str(tmp_path)]
    files = [tmp_path / f"seed-{s}" / "results.json" for s in (0, 3)]
    stamps = [p.stat().st_mtime_ns for p in files]
    fresh = json.loads((tmp_path / "results.json").read_text())  # the aggregate of the seeds' own runs
    assert main(argv) == 0 and runs == []  # both complete with the same settings: nothing runs
    assert [p.stat().st_mtime_ns for p in files] == stamps
    again = json.loads((tmp_path / "results.json").read_text())

    def same(doc):  # where it was written aside (the copy's folder)
        return {k: v for k, v in doc.items() if k != "versions"} | {"settings": {**doc["settings"], "out": None}}

    assert same(again) == same(fresh)

    stopped = json.loads(files[1].read_text())
    files[1].write_text(json.dumps({**stopped, "pending": ["mixunlearn"]}))  # as a run stopped half-way leaves it
    assert main(argv) == 0 and runs == [3]
    assert "pending" not in json.loads(files[1].read_text())

    assert main([*argv, "--omega", "2"]) == 0 and runs == [3, 0, 3]  # other settings: both again
    assert json.loads(files[0].read_text())["settings"]["options"]["omega"] == 2.0


def results_tables():
    from repo_files import load

    return load("scripts/results_tables.py")


def test_results_tables_script_shows_mean_and_std(seeds_run, tmp_path):
    """scripts/results_tables.py (RESULTS.md's tables) renders a --seeds run as mean ± std."""
    tables = results_tables()
    shutil.copytree(seeds_run[0], tmp_path, dirs_exist_ok=True)
    text = tables.table(tmp_path)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert "seeds 0, 3" in text.splitlines()[0]
    assert f"fastmix source {doc['versions']['fastmix_source']})" in text.splitlines()[0]
    row = next(line for line in text.splitlines() if line.startswith("| mixunlearn |"))
    gap = f"{doc['mixunlearn']['avg_gap']:.2f} ± {doc['mixunlearn']['avg_gap_std']:.2f}"
    assert gap in row and row.count("±") == len(row.split("|")) - 3  # every cell but the name
    with pytest.raises(SystemExit, match="stopped run"):
        (tmp_path / "results.json").write_text(json.dumps({**doc, "pending": ["mixunlearn"]}))
        tables.table(tmp_path)


def test_seeds_that_ran_other_code_are_named_in_the_table(seeds_run, tmp_path):
    """A seed finished under other fastmix code is reused (the code is not a setting), and
    the aggregate and its table name both sources."""
    shutil.copytree(seeds_run[0], tmp_path, dirs_exist_ok=True)
    seed3 = tmp_path / "seed-3" / "results.json"
    doc = json.loads(seed3.read_text())
    other = "f" * 16
    seed3.write_text(json.dumps({**doc, "versions": {**doc["versions"], "fastmix_source": other,
                                                     "fastmix_sources": [other]}}))
    assert main([*ARGS, "--seeds", "0,3", "--out", str(tmp_path)]) == 0
    agg = json.loads((tmp_path / "results.json").read_text())
    own = agg["versions"]["fastmix_source"]
    assert agg["versions"]["fastmix_sources"] == sorted([own, other])
    assert f"rows from 2 fastmix sources: {', '.join(sorted([own, other]))}" in results_tables().table(tmp_path)
    # both seeds from other code: the aggregate names theirs only (averaging made no row)
    seed0 = tmp_path / "seed-0" / "results.json"
    doc0 = json.loads(seed0.read_text())
    seed0.write_text(json.dumps({**doc0, "versions": {**doc0["versions"], "fastmix_source": other,
                                                      "fastmix_sources": [other]}}))
    assert main([*ARGS, "--seeds", "0,3", "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "results.json").read_text())["versions"]["fastmix_sources"] == [other]
