"""Hyperparameter search for any model kind on any data set, with Optuna: ``dlrm tune``.

``tune(data, TuneConfig(model="dlrm", trials=24), out_dir)`` runs an Optuna study over the
kind's search space (``ModelSpec.search_space``, or ``TuneConfig.space``): each trial trains
with ``dlrm.training.loop.train`` on the training split with early stopping, and its objective
is the best **validation** AUC. The data is seen through ``TrainValOnly``, which has no test
split, so no trial ever evaluates a held-out row.

- Pruning: every evaluation reports the best validation AUC so far to the study; Optuna's
  median pruner stops a trial that is below the median of earlier trials at the same point
  (the training callback raises ``optuna.TrialPruned``, which ends the run).
- Budget: ``trials`` (finished trials of the study in all, counting earlier sessions) and/or
  ``timeout_s`` (this session).
- Resumable: the study lives in ``out_dir/study.db`` (SQLite); running the same command again
  continues it. Trials left running by a killed session are marked failed.
- Output: ``trials.md`` and ``trials.csv`` (one row per trial: state, validation AUC,
  parameters, steps, seconds), ``trials.png`` (validation AUC per trial and the best so far),
  ``best_config.json`` (the best trial's run config, in the layout of a run's config.json, for
  ``dlrm train --config``) and ``recipe.json`` (the best parameters as a recipe,
  ``dlrm.training.recipes``). Trial runs are in ``out_dir/trials/NNNN``.

Optuna is an optional dependency (``pip install 'dlrm[tune]'``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from dlrm.data.source import DataSource, dataset_name
from dlrm.extras import require
from dlrm.features import Batch
from dlrm.files import write_json_atomic
from dlrm.models import get_spec, model_config_for
from dlrm.training.loop import train
from dlrm.training.recipes import TRAIN_FIELDS, get_recipe, recipe_names, train_config_from_recipe

Progress = Callable[[dict[str, Any]], None]
log = logging.getLogger(__name__)

# What a trial trains with where the search space does not say (the `dlrm compare` defaults).
BASE_TRAIN = {"optimizer": "adagrad", "lr": 0.05, "batch_size": 128}


def optuna_module():
    """``optuna``, or an ImportError that says how to install it."""
    return require("optuna", "dlrm tune", "tune", "optuna")


class TrainValOnly:
    """A data source seen without its test split: what a tuning trial may look at."""

    def __init__(self, data: DataSource) -> None:
        if "val" not in data.splits() or data.num_samples("val") == 0:
            raise ValueError("dlrm tune needs a validation split (the objective is validation "
                             "AUC; test rows are never used)")
        self.data = data
        self.num_dense = data.num_dense
        self.table_sizes = data.table_sizes

    def splits(self) -> list[str]:
        return [s for s in self.data.splits() if s in ("train", "val")]

    def num_samples(self, split: str) -> int:
        if split not in ("train", "val"):
            return 0
        return self.data.num_samples(split)

    def batches(self, split: str, batch_size: int, **kwargs: Any) -> Iterator[Batch]:
        if split not in ("train", "val"):
            raise ValueError(f"a tuning trial may not read the {split!r} split")
        return self.data.batches(split, batch_size, **kwargs)

    def spec(self) -> dict[str, Any]:
        return self.data.spec()

    def optimal_metrics(self, split: str) -> dict[str, float] | None:
        optimal = getattr(self.data, "optimal_metrics", None)
        return optimal(split) if optimal and split in ("train", "val") else None


# A study's cadence when neither the caller nor the kind (ModelSpec.tune_settings) sets it.
STUDY_DEFAULTS: dict[str, Any] = {"epochs": 10, "evals_per_epoch": 4, "patience": 4,
                                  "pruner": "median"}


@dataclass
class TuneConfig:
    """A study.

    Args:
        model: the model kind.
        preset: the preset that shapes the model (D, widths; ``dlrm.models.model_config_for``).
        model_options: fixed options of the kind (not searched).
        space: the search space (default: the kind's ``ModelSpec.search_space``); see
            ``dlrm.models.registry.SEARCH_SPACE_DOC``.
        trials: finished trials the study should have in all (None: only ``timeout_s``).
        timeout_s: stop starting trials after this many seconds of this session.
        epochs: most passes over the training split per trial (early stopping ends sooner).
        evals_per_epoch: validation evaluations per epoch (pruning and early stopping points).
        patience: evaluations without a better validation AUC before a trial stops.
            (These three and ``pruner``, when None: the kind's ``ModelSpec.tune_settings``,
            else ``STUDY_DEFAULTS``.)
        max_samples: most training samples per trial (None: ``epochs`` passes).
        seed: the training seed of every trial (same initialisation and data order for all,
            so trials differ by their parameters only) and the sampler's seed.
        seeds: training runs per trial, seeds ``seed .. seed + seeds - 1``; the trial's value
            is the mean of their validation AUCs. On small data one seed's luck moves the
            AUC as much as the parameters do, and the best of many one-seed trials is partly
            the luckiest; the mean scores the recipe rather than one run of it. Pruning
            watches the first seed's run.
        pruner: ``median`` (Optuna's MedianPruner) or ``none``.
        startup_trials: random trials before the TPE sampler models the results.
        threads: torch intra-op threads per trial.
        keep_checkpoints: keep every trial's .pt files (default: only the best trial's).
    """

    model: str
    preset: str = "kaggle"
    model_options: dict[str, Any] = field(default_factory=dict)
    space: dict[str, Any] | None = None
    trials: int | None = 20
    timeout_s: float | None = None
    epochs: int | None = None
    evals_per_epoch: int | None = None
    patience: int | None = None
    max_samples: int | None = None
    seed: int = 0
    seeds: int = 1
    pruner: str | None = None
    startup_trials: int = 5
    threads: int | None = None
    keep_checkpoints: bool = False

    def __post_init__(self) -> None:
        spec = get_spec(self.model)
        if not spec.trainable:
            raise ValueError(f"model {self.model!r} cannot be trained, so it cannot be tuned")
        for name, value in {**STUDY_DEFAULTS, **spec.tune_settings}.items():
            if getattr(self, name) is None:  # not given: the kind's default, else the general
                setattr(self, name, value)
        if self.space is None:
            if not spec.search_space:
                raise ValueError(f"model {self.model!r} has no search space; pass one")
            self.space = dict(spec.search_space)
        check_space(self.model, self.space)
        if self.trials is None and self.timeout_s is None:
            raise ValueError("give a budget: a number of trials, a time limit, or both")
        if self.trials is not None and self.trials <= 0:
            raise ValueError(f"trials {self.trials}: must be positive")
        if self.seeds <= 0:
            raise ValueError(f"seeds {self.seeds}: must be positive")
        if self.pruner not in ("median", "none"):
            raise ValueError(f"pruner {self.pruner!r}: expected median or none")
        for name in ("epochs", "evals_per_epoch"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} {getattr(self, name)}: must be positive")


def check_space(kind: str, space: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming a parameter that is not a TrainConfig field or an option of
    ``kind``, or whose distribution is malformed."""
    options = get_spec(kind).options
    for name, dist in space.items():
        if name not in TRAIN_FIELDS and name not in options:
            raise ValueError(f"search space: {name!r} is neither a training setting nor an "
                             f"option of {kind!r} ({', '.join(sorted(options)) or 'none'})")
        kinds = [k for k in ("choices", "float", "int", "per") if k in dist]
        if not kinds:
            raise ValueError(f"search space: {name!r} needs choices, float, int or per")
        if "per" in dist and (dist["per"] not in space or "ranges" not in dist
                              or list(space).index(dist["per"]) > list(space).index(name)):
            raise ValueError(f"search space: {name!r} depends on {dist['per']!r}, which must "
                             f"come before it, with 'ranges' per value")


def suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """Draw one value per parameter of ``space`` from an Optuna trial (in order)."""
    params: dict[str, Any] = {}
    for name, dist in space.items():
        if "choices" in dist:
            params[name] = trial.suggest_categorical(name, list(dist["choices"]))
            continue
        low, high = dist.get("float") or dist.get("int") or (None, None)
        key = name
        if "per" in dist:
            by = params[dist["per"]]
            if str(by) not in {str(k) for k in dist["ranges"]}:
                raise ValueError(f"search space: {name!r} has no range for "
                                 f"{dist['per']}={by!r}")
            low, high = {str(k): v for k, v in dist["ranges"].items()}[str(by)]
            key = f"{name}@{by}"  # one Optuna parameter per range
        if "int" in dist:
            params[name] = trial.suggest_int(key, int(low), int(high), log=bool(dist.get("log")))
        else:
            params[name] = trial.suggest_float(key, float(low), float(high),
                                               log=bool(dist.get("log")))
    return params


def split_params(kind: str, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training settings, model options) of a parameter dict."""
    train_part = {k: v for k, v in params.items() if k in TRAIN_FIELDS}
    return train_part, {k: v for k, v in params.items() if k not in TRAIN_FIELDS}


def as_recipe(config: TuneConfig, params: dict[str, Any], source: str,
              train_rows: int | None = None, dataset: str | None = None) -> dict[str, Any]:
    """A recipe (``dlrm.training.recipes``) of the best parameters and the study's cadence.
    A full-batch L-BFGS recipe also records the ``train_rows`` its L2 strength was chosen on
    (``weight_decay_rows``), so that it scales to other sizes as scikit-learn's C does."""
    train_part, model_part = split_params(config.model, params)
    train = {**BASE_TRAIN, **train_part, "epochs": config.epochs,
             "patience": config.patience, "evals_per_epoch": config.evals_per_epoch}
    if train.get("optimizer") == "lbfgs" and train_rows:
        train["weight_decay_rows"] = int(train_rows)
    recipe = {"train": train, "model": model_part, "source": source}
    if dataset:  # the data set it was chosen on (``dlrm.training.recipes``: small-<tuned_on>)
        recipe["tuned_on"] = dataset
    return recipe


def _baseline_params(config: TuneConfig, train_rows: int,
                     dataset: str | None = None) -> dict[str, Any]:
    """The kind's current ``small`` recipe for data set ``dataset`` (its variant tuned on that
    data set, else the default one: ``dlrm.training.recipes``), else the compare defaults, as a
    first trial, so the study never ends below the settings it started from (only values
    inside the space)."""
    start: dict[str, Any] = dict(BASE_TRAIN)
    if "small" in recipe_names(config.model):
        recipe = get_recipe(config.model, "small", train_rows, dataset)
        start.update({**recipe["train"], **recipe.get("model", {})})
        if "weight_decay_rows" in recipe["train"]:  # its L2 as it applies to these rows
            start["weight_decay"] = train_config_from_recipe(recipe, train_rows).weight_decay
    start.setdefault("sparse_optimizer", "rowwise_adagrad")
    start.setdefault("sparse_lr", start["lr"])
    start.setdefault("weight_decay", 1e-8)
    start.setdefault("embedding_init", "uniform")
    fixed: dict[str, Any] = {}
    for name, dist in config.space.items():
        value = start.get(name)
        if value is None:
            continue
        if "choices" in dist:
            if value in dist["choices"]:
                fixed[name] = value
            continue
        low, high = dist.get("float") or dist.get("int") or (None, None)
        key = name
        if "per" in dist:
            by = fixed.get(dist["per"], start.get(dist["per"]))
            low, high = {str(k): v for k, v in dist["ranges"].items()}.get(str(by), (0, -1))
            key = f"{name}@{by}"
        if low <= value <= high:
            fixed[key] = value
    return fixed


def tune(data: DataSource, config: TuneConfig, out_dir: str | Path,
         progress: Progress | None = None) -> dict[str, Any]:
    """Run (or continue) the study in ``out_dir``; write the trials table, plot, best config.

    ``progress`` receives ``trial_start`` / ``trial_end`` events and every training event of
    the trials (``dlrm.training.loop``) with ``trial`` added. Returns the study summary
    (``best``: the best trial's number, value, params, run directory; ``trials``: all rows).
    """
    optuna = optuna_module()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    emit = progress or (lambda _e: None)
    seen = TrainValOnly(data)
    train_rows = seen.num_samples("train")
    identity = {"model": config.model, "preset": config.preset, "data": data.spec(),
                "space": config.space, "model_options": config.model_options}
    if config.seeds > 1:  # a trial's value means another thing: not mixed with one-seed trials
        identity["seeds"] = config.seeds
    identity = json.loads(json.dumps(identity, default=str))  # as the study stores it
    storage = f"sqlite:///{(out / 'study.db').resolve()}"
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=config.startup_trials,
                                          n_warmup_steps=config.evals_per_epoch // 2)
              if config.pruner == "median" else optuna.pruners.NopPruner())
    sampler = optuna.samplers.TPESampler(seed=config.seed,
                                         n_startup_trials=config.startup_trials)
    study = optuna.create_study(study_name="dlrm-tune", storage=storage, direction="maximize",
                                sampler=sampler, pruner=pruner, load_if_exists=True)
    stored = study.user_attrs.get("identity")
    if stored is None:
        study.set_user_attr("identity", identity)
        study.enqueue_trial(_baseline_params(config, train_rows, dataset_name(data)),
                            skip_if_exists=True)
    elif stored != identity:
        changed = sorted(k for k in {**stored, **identity} if stored.get(k) != identity.get(k))
        raise ValueError(f"{out} holds a study of another setting ({', '.join(changed)} "
                         f"differ); choose another folder to start a new study")
    _fail_stale_trials(study)

    def objective(trial: Any) -> float:
        params = suggest(trial, config.space)
        train_part, model_part = split_params(config.model, params)
        recipe = as_recipe(config, params, "", train_rows)
        train_config = train_config_from_recipe(
            recipe, train_rows, seed=config.seed, max_samples=config.max_samples,
            threads=config.threads, log_every=10**9)
        model_config = model_config_for(config.model, config.preset, data.table_sizes,
                                        data.num_dense, {**config.model_options, **model_part})
        run_dir = out / "trials" / f"{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("train_config", asdict(train_config))
        trial.set_user_attr("model_config", model_config)
        emit({"event": "trial_start", "trial": trial.number, "params": params})
        aucs: list[float] = []
        started = time.perf_counter()

        def relay(event: dict[str, Any]) -> None:
            emit({**event, "trial": trial.number})
            if event["event"] == "eval":  # after each evaluation: report, maybe prune
                aucs.append(event["auc"])
                best_so_far = max(a for a in aucs if math.isfinite(a)) \
                    if any(math.isfinite(a) for a in aucs) else 0.5
                trial.report(best_so_far, len(aucs))
                if trial.should_prune():
                    raise optuna.TrialPruned(f"val AUC {best_so_far:.4f} after "
                                             f"{len(aucs)} evaluations")

        summaries = []
        try:
            for k in range(config.seeds):  # the first run reports to the pruner
                seed_dir = run_dir if k == 0 else run_dir.with_name(f"{run_dir.name}-seed{k}")
                seed_config = replace(train_config, seed=config.seed + k)
                summaries.append(train(
                    config.model, model_config, seen, seed_config, seed_dir,
                    progress=relay if k == 0 else (lambda e: emit({**e, "trial": trial.number})),
                    extra={"tune_trial": trial.number}))
                if not math.isfinite(summaries[-1]["val_auc"]):
                    raise FloatingPointError(f"validation AUC is {summaries[-1]['val_auc']}")
        except FloatingPointError as err:  # diverged: a failed trial, the study goes on
            trial.set_user_attr("diverged", str(err))
            raise
        finally:
            trial.set_user_attr("seconds", time.perf_counter() - started)
        summary = summaries[0]
        trial.set_user_attr("steps", summary["steps"])
        trial.set_user_attr("reported_step", summary["reported_step"])
        trial.set_user_attr("val_logloss", statistics.fmean(s["val_logloss"] for s in summaries))
        trial.set_user_attr("seed_val_aucs", [s["val_auc"] for s in summaries])
        return statistics.fmean(float(s["val_auc"]) for s in summaries)

    def on_end(study: Any, trial: Any) -> None:
        best = _best(study)
        if not config.keep_checkpoints:
            _drop_checkpoints(out / "trials", keep=_best_run_dir(study))
        emit({"event": "trial_end", "trial": trial.number, "state": trial.state.name,
              "value": trial.value, "best_value": best.value if best else None,
              "best_trial": best.number if best else None})

    remaining = None
    if config.trials is not None:
        remaining = max(0, config.trials - len(_finished(study)))
    if remaining != 0:
        study.optimize(objective, n_trials=remaining, timeout=config.timeout_s,
                       catch=(FloatingPointError,), callbacks=[on_end])
    return write_report(study, config, data, out)


def trial_observer(writer: Any) -> Progress:
    """A ``tune`` progress callback that hands a ``TensorBoardWriter`` each trial's training
    events as a run of its own (``trial 3`` -> ``DIR/trial-3``) and, when the trial ends, its
    searched settings beside its final validation AUC (TensorBoard's HParams tab)."""
    params: dict[int, dict[str, Any]] = {}

    def observe(event: dict[str, Any]) -> None:
        kind, trial = event["event"], event.get("trial")
        if trial is None:
            return
        run = f"trial {trial}"
        if kind == "trial_start":
            params[trial] = event["params"]
        elif kind == "trial_end":
            if event["state"] == "COMPLETE" and event["value"] is not None:
                writer.add_hparams(run, params.pop(trial, {}), {"val_auc": event["value"]})
        else:
            writer({**event, "run": run})

    return observe


def _finished(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False)
            if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)]


def _best(study: Any) -> Any:
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    return max(done, key=lambda t: t.value) if done else None


def _best_run_dir(study: Any) -> str | None:
    best = _best(study)
    return best.user_attrs.get("run_dir") if best else None


def _drop_checkpoints(trials: Path, keep: str | None) -> None:
    """Remove the checkpoints of this study's finished trials (files this study wrote) but
    the best trial's: a study of many trials would otherwise keep gigabytes of weights."""
    for folder in trials.iterdir() if trials.exists() else []:
        if keep is not None and str(folder) == keep:
            continue
        for name in ("last.pt", "best.pt"):
            (folder / name).unlink(missing_ok=True)


def _fail_stale_trials(study: Any) -> None:
    """Trials a killed session left RUNNING can never finish: mark them failed."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "stale", True)
        study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        log.warning("trial %d was left running by an earlier session: marked failed",
                    trial.number)


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One dict per trial: number, state, value (val AUC), params, steps, seconds."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = t.state.name.lower()
        if state == "fail" and "diverged" in t.user_attrs:
            state = "diverged"
        params = {k.split("@")[0]: v for k, v in t.params.items()}
        reported = list(t.intermediate_values.values())
        rows.append({"trial": t.number, "state": state, "val_auc": t.value,
                     "reported_auc": max(reported) if reported else None,
                     "val_logloss": t.user_attrs.get("val_logloss"),
                     "evaluations": len(t.intermediate_values),
                     "steps": t.user_attrs.get("steps"),
                     "seconds": t.user_attrs.get("seconds"), "params": params})
    return rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def write_report(study: Any, config: TuneConfig, data: DataSource,
                 out: Path) -> dict[str, Any]:
    """trials.md, trials.csv, trials.png, best_config.json and recipe.json of a study."""
    rows = trial_rows(study)
    names = list(dict.fromkeys(k for r in rows for k in r["params"]))
    best = _best(study)
    counts = {s: sum(r["state"] == s for r in rows)
              for s in ("complete", "pruned", "diverged", "fail", "running")}
    seconds = sum(r["seconds"] or 0.0 for r in rows)
    lines = [f"`dlrm tune` of `{config.model}` (preset `{config.preset}`) on "
             f"{json.dumps(data.spec())}: {len(rows)} trials ({counts['complete']} complete, "
             f"{counts['pruned']} pruned, {counts['diverged']} diverged, {counts['fail']} "
             f"failed), {seconds:.0f} s of training. Objective: the best validation AUC of "
             f"a trial (up to {config.epochs} epochs, {config.evals_per_epoch} evaluations "
             f"per epoch, early stopping after {config.patience} without improvement); "
             f"test rows are never read.", ""]
    if best is not None:
        lines += [f"Best: trial {best.number}, validation AUC {best.value:.4f}.", ""]
    lines += ["| trial | state | val AUC | evaluations | steps | seconds | "
              + " | ".join(names) + " |", "|---" * (6 + len(names)) + "|"]
    for r in rows:
        mark = "**" if best is not None and r["trial"] == best.number else ""
        value = r["val_auc"] if r["val_auc"] is not None else r["reported_auc"]
        lines.append(f"| {mark}{r['trial']}{mark} | {r['state']} | {_fmt(value)} | "
                     f"{r['evaluations']} | {_fmt(r['steps'])} | {_fmt(r['seconds'])} | "
                     + " | ".join(_fmt(r["params"].get(n)) for n in names) + " |")
    (out / "trials.md").write_text("\n".join(lines) + "\n")
    with (out / "trials.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial", "state", "val_auc", "val_logloss", "evaluations", "steps",
                         "seconds", *names])
        for r in rows:
            writer.writerow([r["trial"], r["state"], r["val_auc"], r["val_logloss"],
                             r["evaluations"], r["steps"], r["seconds"],
                             *[r["params"].get(n) for n in names]])
    plot_trials(rows, out / "trials.png", f"dlrm tune: {config.model}")
    summary: dict[str, Any] = {"trials": rows, "counts": counts, "seconds": seconds,
                               "best": None, "out_dir": str(out)}
    if best is not None:
        params = {k.split("@")[0]: v for k, v in best.params.items()}
        mean_of = f" (mean of {config.seeds} seeds)" if config.seeds > 1 else ""
        source = (f"dlrm tune: best of {len(rows)} trials ({counts['complete']} complete, "
                  f"{counts['pruned']} pruned), validation AUC {best.value:.4f}{mean_of}")
        recipe = as_recipe(config, params, source, data.num_samples("train"),
                           dataset_name(data))
        write_json_atomic(out / "recipe.json", recipe)
        run_config = {"model_kind": config.model, "model_config": best.user_attrs["model_config"],
                      "train": best.user_attrs["train_config"], "data": data.spec(),
                      "tune": {"study": str(out / "study.db"), "trial": best.number,
                               "val_auc": best.value, "seeds": config.seeds,
                               "recipe": recipe}}
        write_json_atomic(out / "best_config.json", run_config)
        summary["best"] = {"trial": best.number, "val_auc": best.value, "params": params,
                           "run_dir": best.user_attrs.get("run_dir"), "recipe": recipe}
    return summary


def plot_trials(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Validation AUC of every trial (pruned ones at their last reported value: x), and the
    best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = [r for r in rows if r["state"] == "complete"]
    ax.scatter([r["trial"] for r in done], [r["val_auc"] for r in done], s=18,
               label="complete")
    best, xs, ys = -math.inf, [], []
    for r in done:
        best = max(best, r["val_auc"])
        xs.append(r["trial"])
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="black", linewidth=1, label="best so far")
    failed = [r for r in rows if r["state"] in ("diverged", "fail")]
    if failed:
        ax.scatter([r["trial"] for r in failed], [0.5] * len(failed), marker="v",
                   color="red", s=18, label="diverged / failed (at 0.5)")
    pruned = [r for r in rows if r["state"] == "pruned"]
    if pruned:
        ax.scatter([r["trial"] for r in pruned], [r["reported_auc"] or 0.5 for r in pruned],
                   marker="x", color="gray", s=18, label="pruned (best AUC when stopped)")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation AUC")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
