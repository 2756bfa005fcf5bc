"""`fastmix tune`: search a method's settings on a validation split, never the test set.

Each trial runs one method (:func:`~fastmix.harness.experiment.run_experiment`) with
settings drawn from the method's search space (``SEARCH_SPACE`` beside its settings,
registered in :data:`fastmix.harness.methods.SEARCH_SPACES`), evaluated on a validation
split carved from the training data; the objective is the Avg. Gap to the retrained
model on that split (smaller is better). The original and retrained models are trained
once and cached in the models folder; every trial reuses them.

Optuna (``pip install "fastmix[tune]"``) draws the settings with its TPE sampler (at random
for its first :data:`STARTUP_TRIALS`, 10: a budget of 10 or less is a random search; the
reference defaults are not queued as a trial, so every method's search has the same form) and keeps
the trials in a journal file in the output folder, so a search that is stopped resumes:
finished trials are not run again, a trial that was running when the search stopped is
run again (stopped by Ctrl-C, or killed). The budget counts finished trials (completed or failed); a draw that repeats
an earlier trial's settings takes its result and does not count. One search at a time
per output folder (a lock file). Choices: the sampler's seed is the run's seed plus the
number of trials already held (a resumed search does not redraw the first trials' settings);
a trial whose run raises ValueError (e.g. a model that diverged into NaN outputs) is a
failed trial, recorded with its error.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import time
from pathlib import Path

from fastmix.settings import Grid, LogRange

from .atomic import atomic_write
from .experiment import OUTPUT_FIELDS, Experiment, run_experiment, validate_experiment
from .method_recipes import TUNED_SOURCE
from .report import code_hash

STORAGE = "optuna-journal.log"
SEARCH_LOG = "search-log.json"
LOCK = "tune.lock"


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise ValueError('fastmix tune needs Optuna: pip install "fastmix[tune]"') from None
    return optuna


# Trials TPE draws at random before it models the others: a budget up to this is a seeded random search.
STARTUP_TRIALS = 10


def _fields(exp: Experiment, *leave_out: str) -> dict:
    return {k: v for k, v in dataclasses.asdict(exp).items() if k not in OUTPUT_FIELDS + leave_out}


def search_key(exp: Experiment, method: str, space: dict) -> str:
    """What determines a search's trials besides the drawn settings; a resumed search must
    have the same (:func:`same_search`; where it runs and what it prints do not count)."""
    space_text = {name: repr(dim) for name, dim in space.items()}
    return json.dumps({"method": method, "experiment": _fields(exp, "methods"), "space": space_text},
                      sort_keys=True, default=str)


def same_search(held: str, key: str) -> bool:
    """Whether a study's stored key and this run's :func:`search_key` name the same search.
    Options not given (None) are left out of both: a setting that a later fastmix added (a
    stored key lacks it) and that this run does not give leaves the search the same."""
    def given(text: str):
        try:
            doc = json.loads(text)
            options = doc["experiment"]["options"]
            doc["experiment"]["options"] = {k: v for k, v in options.items() if v is not None}
        except (ValueError, KeyError, TypeError, AttributeError):
            return text  # not a key this fastmix wrote: compared as it is
        return doc
    return given(held) == given(key)


def reference_key(exp: Experiment) -> str:
    """What the original's and retrain's rows depend on: every field but the methods, their
    options and where the run writes (method options never reach those two models)."""
    return json.dumps(_fields(exp, "methods", "options"), sort_keys=True, default=str)


def suggest(trial, name: str, dim):
    if isinstance(dim, Grid):
        return trial.suggest_categorical(name, list(dim.values))
    if isinstance(dim, LogRange):
        return trial.suggest_float(name, dim.low, dim.high, log=True)
    raise ValueError(f"search space of {name}: expected Grid or LogRange, got {dim!r}")


def grid_size(space: dict) -> float:
    """How many distinct settings the space holds (inf with a LogRange)."""
    return math.prod(len(d.values) if isinstance(d, Grid) else math.inf for d in space.values())


def counted(trial) -> bool:
    """A finished trial that counts against the budget."""
    state = trial.state.name
    if state == "COMPLETE":
        return "repeat_of" not in trial.user_attrs
    return state == "FAIL" and not trial.user_attrs.get("interrupted")


# A trial whose model gives non-finite outputs (its validation Avg. Gap is NaN) is scored
# +inf: it counts against the budget like any finished trial, and TPE, which ignores
# failed trials, learns that its region is bad (gradient ascent explodes past a step size).
DIVERGED = "diverged: the model's outputs are not finite, so neither is its validation Avg. Gap (scored +inf)"


def winner(done):
    """The completed trial with the least finite validation Avg. Gap, or None."""
    finite = [t for t in done if math.isfinite(t.value)]
    return min(finite, key=lambda t: t.value) if finite else None


def trial_record(trial) -> dict:
    record = {"number": trial.number, "state": trial.state.name, "params": trial.params,
              "val_avg_gap": trial.value, "metrics": trial.user_attrs.get("metrics"),
              "seconds": trial.user_attrs.get("seconds")}
    for key in ("repeat_of", "interrupted", "error", "fastmix_source"):
        if key in trial.user_attrs:
            record[key] = trial.user_attrs[key]
    return record


class Tuner:
    """The searches of one output folder: ``out/optuna-journal.log`` (the trials of every
    method searched there), ``out/search-log.json`` (each trial's settings, validation Avg.
    Gap, metrics, seconds and ``fastmix_source``, the :func:`code_hash` of the code that ran
    it; rewritten after each trial) and the recipe of the winners."""

    def __init__(self, out: Path, log=print):
        self.optuna = import_optuna()
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        code_hash()  # the code this search starts with, whatever is edited while it runs
        self.out, self.log = Path(out), log
        self.storage = JournalStorage(JournalFileBackend(str(self.out / STORAGE)))
        self.references = {}  # reference_key -> the original's and retrain's rows, evaluated once
        self.optuna.logging.set_verbosity(self.optuna.logging.WARNING)

    def study(self, exp: Experiment, method: str, space: dict):
        """The method's study, created or resumed; refuses one searched with other settings."""
        key = search_key(exp, method, space)
        study = self.optuna.create_study(storage=self.storage, study_name=method, direction="minimize",
                                         load_if_exists=True)
        held = study.user_attrs.get("key")
        if held is None:
            study.set_user_attr("key", key)
        elif not same_search(held, key):
            raise ValueError(f"{self.out / STORAGE} holds a search of {method} with other settings (data, split, "
                             "seed, attacks, fixed options or search space); use another --out for this one, or "
                             "--restart to forget that search")
        return study

    def forget(self, method: str) -> bool:
        """Delete ``method``'s study (its trials) from the journal and the search log;
        False when there was none."""
        if method not in self.optuna.study.get_all_study_names(self.storage):
            return False
        self.optuna.delete_study(study_name=method, storage=self.storage)
        self.write_log()
        return True

    def recover(self, study) -> None:
        """Trials left running by a stopped search (none runs now: the lock is held) are
        marked failed as interrupted, and their settings queued to run first."""
        from optuna.trial import TrialState

        waiting = [t.system_attrs.get("fixed_params") for t in study.get_trials(deepcopy=False,
                                                                                 states=(TrialState.WAITING,))]
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.storage.set_trial_user_attr(trial._trial_id, "interrupted", True)
            self.storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            if trial.params and trial.params not in waiting:
                study.enqueue_trial(trial.params)

    def write_log(self) -> None:
        doc = {}
        for name in self.optuna.study.get_all_study_names(self.storage):
            study = self.optuna.load_study(study_name=name, storage=self.storage)
            trials = study.get_trials(deepcopy=False)
            done = [t for t in trials if t.state.name == "COMPLETE"]
            best = winner(done)
            best = best.number if best is not None else None
            doc[name] = {"best_trial": best, "trials": [trial_record(t) for t in trials]}

        def write(tmp):
            with open(tmp, "w") as f:
                json.dump(doc, f, indent=2, default=str)
                f.write("\n")

        atomic_write(self.out / SEARCH_LOG, write)

    def search(self, exp: Experiment, method: str, space: dict, budget: int):
        """Run ``method``'s trials until ``budget`` of them are finished; returns the best
        completed trial (None if none completed)."""
        from optuna.trial import TrialState

        study = self.study(exp, method, space)
        self.recover(study)
        size = grid_size(space)
        ref_key = reference_key(exp)

        def objective(trial):
            params = {name: suggest(trial, name, dim) for name, dim in space.items()}
            for done in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
                if done.params == params:
                    trial.set_user_attr("repeat_of", done.number)
                    for key in ("metrics", "seconds", "fastmix_source"):
                        if key in done.user_attrs:
                            trial.set_user_attr(key, done.user_attrs[key])
                    return done.value
            start = time.perf_counter()
            trial.set_user_attr("fastmix_source", code_hash())  # a search can span code versions
            run = dataclasses.replace(exp, methods=(method,), options={**exp.options, **params})
            try:
                rows = run_experiment(run, log=lambda *a: None, references=self.references.get(ref_key))["rows"]
            except ValueError as e:
                trial.set_user_attr("error", str(e))
                trial.set_user_attr("seconds", time.perf_counter() - start)
                raise
            except KeyboardInterrupt:  # Optuna marks the trial failed; it does not count and runs first next time
                trial.set_user_attr("interrupted", True)
                study.enqueue_trial(params)
                raise
            self.references[ref_key] = {name: rows[name] for name in ("original", "retrain")}
            row = rows[method]
            trial.set_user_attr("metrics", {k: float(v) for k, v in row.items()})
            trial.set_user_attr("seconds", time.perf_counter() - start)
            if not math.isfinite(row["avg_gap"]):  # scored worst, not failed: the sampler learns to avoid it
                trial.set_user_attr("error", DIVERGED)
                return math.inf
            return row["avg_gap"]

        def report(_study, trial):
            self.write_log()
            if trial.user_attrs.get("repeat_of") is not None:
                return
            gap = f"val Avg. Gap {trial.value:.2f}" if trial.value is not None else \
                f"failed: {trial.user_attrs.get('error', 'error')}"
            self.log(f"{method} trial {trial.number}: {trial.params} -> {gap} "
                     f"({trial.user_attrs.get('seconds', 0.0):.0f}s)")

        while True:
            trials = study.get_trials(deepcopy=False)
            finished = sum(counted(t) for t in trials)
            distinct = {json.dumps(t.params, sort_keys=True) for t in trials if t.state.name == "COMPLETE"}
            if finished >= budget or len(distinct) >= size:
                break
            study.sampler = self.optuna.samplers.TPESampler(seed=exp.seed + len(trials),
                                                            n_startup_trials=STARTUP_TRIALS)
            study.optimize(objective, n_trials=1, catch=(ValueError,), callbacks=[report])
        self.write_log()
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return winner(done)


def tuned_entries(best, budget: int, exp: Experiment) -> dict:
    """The recipe entries of a search's winner, each saying where it came from."""
    today = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    source = (f"{TUNED_SOURCE}, budget {budget}, val Avg. Gap {best.value:.2f} on {exp.val_size} validation "
              f"samples (label-{exp.labels}, seed {exp.seed}, asr {exp.attacks.asr_model}, mia "
              f"{exp.attacks.mia_sampling}), {today}")
    return {name: {"value": value, "source": source} for name, value in best.params.items()}


def check_search(exp: Experiment, method: str) -> None:
    """Everything about one method's search that needs no data, before any work."""
    if exp.eval_split != "val" or exp.val_size <= 0:
        raise ValueError("fastmix tune scores on a validation split carved from the training data "
                         "(--eval-split val, --val-size N > 0), never on the test set")
    validate_experiment(dataclasses.replace(exp, methods=(method,)))
