"""Train several model kinds on the same data, budget, embedding size and seeds; tabulate.

``compare(data, CompareConfig(models=["dlrm", "dcn"], budget=1_000_000, seeds=3), out_dir)``
trains every (model, optimizer, seed) with ``dlrm.training.loop.train`` and writes
``out_dir/results.md`` (a markdown table of AUC, log loss and accuracy as mean ± std over
seeds, parameters, train time and samples/s), ``out_dir/auc_curve.png`` (validation AUC
against samples seen, with the Bayes-optimal AUC when the data is planted) and
``out_dir/results.json`` (every run's summary and curve).

Metrics are those of the ``test`` split when the data has one, else of ``val``. The spread
over seeds covers initialization and data order; it does not cover the finite evaluation
set, so the table also gives the AUC's standard error on that set (Hanley & McNeil 1982).

That SE is of one AUC alone. Two models scored on the same rows stumble on the same hard
rows, so whether one beats the other is a paired question: every run's scores on the split
are kept (``RUN/{split}_scores.npy``, from the checkpoint it reported, float32 logits in the
split's order; the labels once, ``{split}_labels.npy``), and a second table gives each row's
mean AUC minus a reference row's (``against``, LR by default) with the SE of that difference
on these rows (DeLong, DeLong & Clarke-Pearson 1988, ``dlrm.metrics.paired_auc_difference``),
z and p.
"""

from __future__ import annotations

import json
import logging
import math
import re
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlrm.data.source import DataSource, dataset_name
from dlrm.files import atomic_file
from dlrm.metrics import (
    auc_standard_error,
    log_loss_from_probs,
    paired_auc_difference,
    roc_auc,
    z_test,
)
from dlrm.models import build_model, model_config_for, model_kinds
from dlrm.training.checkpoint import load_model
from dlrm.training.loop import TrainConfig, score_split, train
from dlrm.training.recipes import get_recipe, recipe_names, resolve_recipe

Progress = Callable[[dict[str, Any]], None]

# Learning rates per dense optimizer (embedding rows: sgd / rowwise_adagrad at the same lr).
DEFAULT_LR = {"sgd": 0.1, "adagrad": 0.05, "adam": 0.001}

log = logging.getLogger(__name__)


@dataclass
class CompareConfig:
    """What to compare and how.

    Args:
        models: model kinds (``dlrm.models.model_kinds()``).
        budget: training samples per run (None: ``epochs`` full passes); more than the
            training split makes as many passes as needed.
        seeds: runs per model, seeds 0..seeds-1 (initialization and data order).
        preset: DLRM preset giving every model its D and deep widths
            (``dlrm.models.model_config_for``).
        embedding_dim: overrides the preset's D for every model.
        model_options: per-kind overrides, e.g. ``{"dcn": {"cross_layers": 6}}``.
        optimizers: dense optimizers; every model runs once with each.
        recipes: instead of ``optimizers``: recipe names (``dlrm.training.recipes``:
            ``small``, ``reference``, ``auto``); every model runs with its own recipe of each
            name (optimizer, lr, batch size, epochs with early stopping, initialisation), so
            each kind is trained as its tuning chose. ``budget`` still caps the samples.
        lr: learning rate per optimizer (default ``DEFAULT_LR``).
        batch_size, epochs, precision, threads: as ``TrainConfig``.
        curve_points: validation evaluations along each run, for the AUC curve.
        against: the row every other row is tested against on the same rows (paired AUC
            difference): ``KIND`` (its first optimizer or recipe) or ``KIND:SETTING``;
            default: ``lr`` when it runs, else the first row.
        ensemble: also score each row's seeds as one model (the mean of their click
            probabilities; ``seed_ensembles``).
    """

    models: list[str]
    budget: int | None = None
    seeds: int = 3
    preset: str = "tiny"
    embedding_dim: int | None = None
    model_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    optimizers: list[str] = field(default_factory=lambda: ["adagrad"])
    recipes: list[str] = field(default_factory=list)
    lr: dict[str, float] = field(default_factory=dict)
    batch_size: int = 256
    epochs: int = 1
    precision: str = "fp32"
    threads: int | None = None
    curve_points: int = 8
    against: str | None = None
    ensemble: bool = False

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in model_kinds()]
        if unknown:
            raise ValueError(f"--models: unknown kind(s) {unknown}; "
                             f"choose from {', '.join(model_kinds())}")
        if not self.models:
            raise ValueError("--models: give at least one model kind")
        if self.seeds <= 0:
            raise ValueError(f"seeds {self.seeds}: must be positive")
        for kind in self.models:
            for name in self.recipes:
                if name not in recipe_names(kind) and not name.endswith(".json"):
                    raise ValueError(f"--recipes: model {kind!r} has no recipe {name!r} "
                                     f"(it has {', '.join(recipe_names(kind))})")
        if self.against is not None:
            kind, _, setting = self.against.partition(":")
            settings = self.recipes or self.optimizers
            if kind not in self.models or (setting and setting not in settings):
                raise ValueError(f"--against {self.against!r}: not among the rows; give a "
                                 f"kind of --models ({', '.join(self.models)}), optionally "
                                 f"with one of its settings ({', '.join(settings)}) as "
                                 f"KIND:SETTING")


def paper_config(**overrides: Any) -> CompareConfig:
    """The DLRM paper's comparison (Naumov et al. 2019, sec. 6): DLRM (bottom 512-256-64,
    top 512-256, D=16) against DCN (6 cross layers, deep 512-256, D=16), one epoch, once with
    SGD and once with Adagrad."""
    base = {"models": ["dlrm", "dcn"], "budget": None, "seeds": 1, "preset": "kaggle",
            "embedding_dim": 16, "optimizers": ["sgd", "adagrad"], "epochs": 1,
            "batch_size": 128, "model_options": {"dcn": {"cross_layers": 6,
                                                          "deep_mlp": [512, 256]}}}
    base.update({k: v for k, v in overrides.items() if v is not None})
    return CompareConfig(**base)


def count_parameters(kind: str, model_config: dict[str, Any]) -> int:
    with torch.device("meta"):  # shapes only: nothing allocated, nothing drawn
        return sum(p.numel() for p in build_model(kind, model_config).parameters())


def run_dir_label(setting: str) -> str:
    """An optimizer or recipe name as one folder-name part: a recipe file
    (``runs/tune-avazu-lr/recipe.json``) by its folder and stem (``tune-avazu-lr.recipe``),
    never a path that nests the run's folder."""
    if setting.endswith(".json"):
        path = Path(setting)
        setting = f"{path.parent.name}.{path.stem}" if path.parent.name else path.stem
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", setting)


def _run_settings(kind: str, opt: str, seed: int, data: DataSource, config: CompareConfig
                  ) -> tuple[dict[str, Any] | None, TrainConfig, dict[str, Any]]:
    """(recipe or None, TrainConfig, model config) of one run of the comparison."""
    train_samples = data.num_samples("train")
    dataset = dataset_name(data)  # a recipe family (small) resolves to this data's variant
    options = dict(config.model_options.get(kind, {}))
    if config.embedding_dim is not None and kind != "lr":
        options.setdefault("embedding_dim", config.embedding_dim)
    recipe = None
    if config.recipes:  # every kind at its own recipe (opt is the recipe's name)
        recipe = get_recipe(kind, opt, train_samples, dataset)
        train_config, recipe_options = resolve_recipe(
            kind, opt, train_samples, TrainConfig(precision=config.precision,
                                                  threads=config.threads),
            dataset=dataset, seed=seed, max_samples=config.budget)
        if not train_config.eval_every and config.curve_points:
            run_steps = (config.budget or train_samples * train_config.epochs) \
                // (train_config.batch_size or train_samples)
            train_config.eval_every = max(1, run_steps // config.curve_points)
        train_config.log_every = max(1, train_config.eval_every or 100)
        options = {**recipe_options, **options}
    else:
        epochs = config.epochs
        if config.budget:  # a budget larger than the training split takes several epochs
            epochs = max(epochs, math.ceil(config.budget / train_samples))
        per_run = config.budget or train_samples * epochs
        steps = max(1, min(per_run, train_samples * epochs)
                    // (config.batch_size or train_samples))
        eval_every = max(1, steps // config.curve_points) if config.curve_points else 0
        train_config = TrainConfig(
            batch_size=config.batch_size, lr=config.lr.get(opt, DEFAULT_LR[opt]),
            optimizer=opt, epochs=epochs, max_samples=config.budget,
            eval_every=eval_every, precision=config.precision, threads=config.threads,
            seed=seed, log_every=max(1, steps // 20))
    model_config = model_config_for(kind, config.preset, data.table_sizes, data.num_dense,
                                    options)
    return recipe, train_config, model_config


def compare(data: DataSource, config: CompareConfig, out_dir: str | Path,
            progress: Progress | None = None) -> dict[str, Any]:
    """Run every (model, optimizer, seed); write results.md, auc_curve.png, results.json.

    ``progress`` receives each run's training events (see ``dlrm.training.loop.train``) with
    ``run`` (e.g. ``"dcn adagrad seed 1"``), ``run_index`` and ``runs`` added.
    """
    out = Path(out_dir)
    emit = progress or (lambda _e: None)
    split = "test" if "test" in data.splits() and data.num_samples("test") > 0 else "val"
    settings = config.recipes or config.optimizers
    plan = [(kind, opt, seed) for kind in config.models for opt in settings
            for seed in range(config.seeds)]
    # Every run's settings and model are resolved before the first one trains: a recipe that
    # does not fit the preset fails now, not after hours of the other runs.
    prepared = [(kind, opt, seed, *_run_settings(kind, opt, seed, data, config))
                for kind, opt, seed in plan]
    out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    kept_splits = list(dict.fromkeys([split, "val"]))  # the reported split, and validation
    for index, (kind, opt, seed, recipe, train_config, model_config) in enumerate(prepared):
        label = f"{kind} {opt} seed {seed}"

        def relay(event: dict[str, Any], label: str = label, index: int = index) -> None:
            emit({**event, "run": label, "run_index": index, "runs": len(plan)})

        run_dir = out / f"{kind}-{run_dir_label(opt)}-seed{seed}"
        try:
            summary = train(kind, model_config, data, train_config, run_dir, progress=relay,
                            extra={"compare": label})
        except FloatingPointError as err:  # diverged: counted, left out of the means
            log.warning("%s: %s", label, err)
            summary = diverged_summary(run_dir, split, str(err))
        curve = [(r["samples_seen"], r["auc"]) for r in _eval_records(run_dir)]
        scores = None
        if "diverged" not in summary:
            scores = _score_run(run_dir, summary, data, kept_splits, train_config)
        runs.append({"model": kind, "optimizer": opt, "seed": seed, "recipe": recipe,
                     "parameters": count_parameters(kind, model_config),
                     "model_config": model_config, "summary": summary, "curve": curve,
                     "auc": summary[f"{split}_auc"], "logloss": summary[f"{split}_logloss"],
                     "accuracy": summary[f"{split}_accuracy"], "scores": scores})
    optimal = getattr(data, "optimal_metrics", lambda _s: None)
    results = {"config": asdict(config), "split": split, "data": data.spec(), "runs": runs,
               "eval_positives": _positives(data, split),
               "optimal_auc": (optimal(split) or {}).get("auc"),
               "optimal_val_auc": runs[0]["summary"].get("optimal_auc"),
               "rows": aggregate(runs)}
    results["paired"] = paired_comparison(results, out, config.against)
    if config.ensemble:
        results["ensembles"] = seed_ensembles(results, out, config.against)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "results.md").write_text(markdown_table(results))
    plot_curves(results, out / "auc_curve.png")
    return results


def _save_array(path: Path, values: torch.Tensor) -> None:
    with atomic_file(path) as f:
        np.save(f, values.numpy())


def _score_run(run_dir: Path, summary: dict[str, Any], data: DataSource, splits: list[str],
               config: TrainConfig) -> dict[str, str]:
    """Score each split with the model the run reported (``best.pt`` when it went back to an
    earlier step, else ``last.pt``) into ``run_dir/{split}_scores.npy``, and the labels once
    into the comparison folder (``{split}_labels.npy``); return the score files' paths
    relative to that folder. The rescored AUCs are checked against the run's own: a
    checkpoint that does not reproduce them is a bug, not a result."""
    name = "best" if summary["reported_step"] != summary["steps"] else "last"
    model, _ = load_model(run_dir / f"{name}.pt", config.device)
    paths = {}
    for split in splits:
        logits, labels = score_split(model, data, split, config.eval_batch_size,
                                     config.precision, config.device).tensors()
        rescored, reported = roc_auc(logits, labels), summary[f"{split}_auc"]
        if not math.isclose(rescored, reported, abs_tol=1e-5):  # near-ties may flip
            raise RuntimeError(f"{run_dir / f'{name}.pt'} scores {split} AUC {rescored:.6f}, "
                               f"the run reported {reported:.6f}: the checkpoint is not the "
                               f"reported model")
        _save_array(run_dir / f"{split}_scores.npy", logits)
        if not (run_dir.parent / f"{split}_labels.npy").exists():
            _save_array(run_dir.parent / f"{split}_labels.npy", labels)
        paths[split] = f"{run_dir.name}/{split}_scores.npy"
    return paths


def _reference_key(rows: list[dict[str, Any]], against: str | None) -> tuple[str, str] | None:
    if against:
        kind, _, setting = against.partition(":")
    else:
        kind, setting = ("lr" if any(r["model"] == "lr" for r in rows) else rows[0]["model"]), ""
    for row in rows:
        if row["model"] == kind and (not setting or row["optimizer"] == setting):
            return row["model"], row["optimizer"]
    return None


def paired_comparison(results: dict[str, Any], out: str | Path,
                      against: str | None = None) -> dict[str, Any] | None:
    """Each row's mean AUC over its finished seeds minus the reference row's, on the same
    rows: ``delta``; ``se``, the SE of that difference from the finite set of rows (DeLong,
    the trained models held fixed); ``se_seeds``, that SE with the seeds' own spread added
    (``se² + s_a²/S_a + s_b²/S_b``, s the AUC's std over the S seeds of a side: does the
    *recipe* beat the other, not just these runs), NaN when a side has one seed; ``z`` and
    two-sided ``p`` from ``se_seeds`` where there is one, else from ``se``. None when the
    scores are missing (a comparison from before they were kept) or the split has one class.
    """
    out = Path(out)
    split, rows = results["split"], results["rows"]
    labels_path = out / f"{split}_labels.npy"
    ref = _reference_key(rows, against) if rows else None
    if ref is None or not labels_path.exists() or 0 in results["eval_positives"]:
        return None
    labels = torch.from_numpy(np.load(labels_path))

    def scores(key: tuple[str, str]) -> list[torch.Tensor]:
        return _kept_scores(results, out, key, split)

    def seed_variance(key: tuple[str, str]) -> float:  # of the mean AUC over the seeds
        aucs = [r["auc"] for r in results["runs"]
                if (r["model"], r["optimizer"]) == key and _finite(r)]
        return statistics.variance(aucs) / len(aucs) if len(aucs) > 1 else math.nan

    reference = scores(ref)
    paired = []
    for row in rows:
        key = (row["model"], row["optimizer"])
        if key == ref:
            continue
        mine = scores(key)
        entry = {"model": key[0], "optimizer": key[1], "seeds": len(mine)}
        if mine and reference:
            entry.update(paired_auc_difference(mine, reference, labels))
            entry["se_seeds"] = math.sqrt(entry["se"] ** 2 + seed_variance(key)
                                          + seed_variance(ref))
            if not math.isnan(entry["se_seeds"]):  # else one side has one seed: rows only
                entry.update(z_test(entry["delta"], entry["se_seeds"]))
        else:  # every run of one side diverged
            entry.update(delta=math.nan, se=math.nan, se_seeds=math.nan, z=math.nan,
                         p=math.nan)
        paired.append(entry)
    return {"against": {"model": ref[0], "optimizer": ref[1], "seeds": len(reference)},
            "rows": paired}


def seed_ensembles(results: dict[str, Any], out: str | Path,
                   against: str | None = None) -> dict[str, Any] | None:
    """Each row with two or more finished seeds as one model: the mean of its seeds' click
    probabilities, scored on the reported split (AUC, log loss, accuracy) and paired against
    the reference row's ensemble (one seed: itself) on the same rows (DeLong; the ensembles
    are single models, so there is no seed term). ``val_single_auc`` (the seeds' mean) and
    ``val_auc`` (the ensemble's) say whether ensembling pays on validation, before the test
    split is looked at. None when the scores were not kept."""
    out = Path(out)
    split, rows = results["split"], results["rows"]
    ref = _reference_key(rows, against) if rows else None
    if ref is None or not (out / f"{split}_labels.npy").exists():
        return None
    labels = {s: torch.from_numpy(np.load(out / f"{s}_labels.npy"))
              for s in dict.fromkeys([split, "val"]) if (out / f"{s}_labels.npy").exists()}

    def ensemble(key: tuple[str, str], part: str) -> tuple[torch.Tensor | None, int]:
        kept = _kept_scores(results, out, key, part)
        if not kept:
            return None, 0
        return torch.stack([torch.sigmoid(x.double()) for x in kept]).mean(0), len(kept)

    reference, _ = ensemble(ref, split)
    ensembles = []
    for row in rows:
        key = (row["model"], row["optimizer"])
        probs, seeds = ensemble(key, split)
        if seeds < 2:
            continue
        y = labels[split]
        entry = {"model": key[0], "optimizer": key[1], "seeds": seeds,
                 "single_auc": row["auc"], "auc": roc_auc(probs, y),
                 "logloss": log_loss_from_probs(probs, y),
                 "accuracy": float(((probs > 0.5).double() == y.double()).double().mean())}
        if "val" in labels:
            val_probs, _ = ensemble(key, "val")
            entry["val_auc"] = roc_auc(val_probs, labels["val"])
            entry["val_single_auc"] = statistics.fmean(
                r["summary"]["val_auc"] for r in results["runs"]
                if (r["model"], r["optimizer"]) == key and _finite(r))
        if key != ref and reference is not None:
            entry.update(paired_auc_difference([probs], [reference], y))
        ensembles.append(entry)
    return {"against": {"model": ref[0], "optimizer": ref[1]}, "rows": ensembles}


def _kept_scores(results: dict[str, Any], out: Path, key: tuple[str, str], split: str
                 ) -> list[torch.Tensor]:
    """The kept ``split`` scores of the finished runs of row ``key`` (model, setting)."""
    return [torch.from_numpy(np.load(out / r["scores"][split])) for r in results["runs"]
            if (r["model"], r["optimizer"]) == key and _finite(r)
            and split in (r.get("scores") or {})]


def _records(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():  # a run that stopped before writing anything
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _eval_records(run_dir: Path) -> list[dict[str, Any]]:
    return [r for r in _records(run_dir) if r.get("event") == "eval"]


def diverged_summary(run_dir: Path, split: str, error: str) -> dict[str, Any]:
    """What a run that diverged reports: NaN metrics, the error, and how far it got (the
    samples of its last logged step, from metrics.jsonl); no time or rate."""
    nan = float("nan")
    seen = max((r.get("samples_seen", 0) for r in _records(run_dir)), default=0)
    return {**{f"{split}_{k}": nan for k in ("auc", "logloss", "accuracy")},
            "diverged": error, "samples_seen": seen, "train_seconds": None,
            "samples_per_s": None}


def _positives(data: DataSource, split: str) -> tuple[int, int]:
    metadata = getattr(data, "metadata", None)
    if metadata and split in metadata.get("positives", {}):
        pos = int(metadata["positives"][split])
        return pos, data.num_samples(split) - pos
    total = pos = 0
    for batch in data.batches(split, 65536):
        pos += int(batch.labels.sum())
        total += len(batch)
    return pos, total - pos


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation; the std is NaN (shown as "–") below two values."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else math.nan)


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):  # every run diverged
        return "–"
    return f"{mean:.4f} ± " + ("–" if math.isnan(std) else f"{std:.4f}")


def _num(value: float, spec: str) -> str:
    return "–" if value is None or math.isnan(value) else format(value, spec)


def _finite(run: dict[str, Any]) -> bool:
    return all(math.isfinite(run[m]) for m in ("auc", "logloss", "accuracy"))


def aggregate(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (model, optimizer): mean and std of each metric over seeds.

    Runs whose metrics are not finite (training diverged to NaN) are counted in ``diverged``
    and left out of the means, never silently averaged in.
    """
    rows = []
    keys = list(dict.fromkeys((r["model"], r["optimizer"]) for r in runs))
    for kind, opt in keys:
        group = [r for r in runs if r["model"] == kind and r["optimizer"] == opt]
        ok = [r for r in group if _finite(r)]
        row: dict[str, Any] = {"model": kind, "optimizer": opt, "seeds": len(group),
                               "diverged": len(group) - len(ok),
                               "parameters": group[0]["parameters"]}
        for metric in ("auc", "logloss", "accuracy"):
            row[metric], row[f"{metric}_std"] = _mean_std([r[metric] for r in ok])
        # Time and rate of the runs that finished (a diverged run stopped early; its time would
        # make the mean meaningless); NaN when none did.
        times = [r["summary"].get("train_seconds") for r in ok]
        row["train_seconds"] = _mean_std([t for t in times if t is not None])[0]
        rates = [r["summary"].get("samples_per_s") for r in ok]
        rates = [x for x in rates if x]
        row["samples_per_s"] = statistics.median(rates) if rates else math.nan
        seen = [r["summary"].get("samples_seen") for r in (ok or group)]
        seen = [s for s in seen if s is not None]
        row["samples_seen"] = statistics.median(seen) if seen else 0
        rows.append(row)
    return rows


def markdown_table(results: dict[str, Any]) -> str:
    """The comparison as markdown: one row per model and optimizer."""
    split = results["split"]
    pos, neg = results["eval_positives"]
    lines = [f"Metrics on the {split} split ({pos + neg:,} samples, {pos:,} positives); "
             f"mean ± std over seeds. AUC SE: the standard error of one AUC measured on "
             f"this many samples (Hanley & McNeil 1982).", ""]
    ctr = pos / max(pos + neg, 1)
    if 0 < ctr < 1:
        entropy = -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr))
        lines += [f"A constant predictor has AUC 0.5 and at best log loss {entropy:.4f} (the "
                  f"label entropy of this split, {ctr:.1%} positives).", ""]
    if results.get("optimal_auc"):
        lines += [f"Bayes-optimal AUC on this split: {results['optimal_auc']:.4f}.", ""]
    setting = "recipe" if results.get("config", {}).get("recipes") else "optimizer"
    lines += [f"| model | {setting} | seeds | parameters | AUC | AUC SE | log loss | accuracy "
              "| samples seen | train time (s) | samples/s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["rows"]:
        se = auc_standard_error(row["auc"], pos, neg)
        seeds = str(row["seeds"]) + (f" ({row['diverged']} diverged: NaN, not in the means)"
                                     if row["diverged"] else "")
        lines.append(
            f"| {row['model']} | {row['optimizer']} | {seeds} | {row['parameters']:,} "
            f"| {_pm(row['auc'], row['auc_std'])} | {_num(se, '.4f')} "
            f"| {_pm(row['logloss'], row['logloss_std'])} "
            f"| {_pm(row['accuracy'], row['accuracy_std'])} | {row['samples_seen']:,.0f} "
            f"| {_num(row['train_seconds'], '.1f')} | {_num(row['samples_per_s'], ',.0f')} |")
    paired = results.get("paired")
    if paired and paired["rows"]:
        ref = paired["against"]
        name = f"{ref['model']} ({ref['optimizer']})"
        lines += ["", f"Paired against {name} on the same {pos + neg:,} rows: ΔAUC is the "
                  f"row's mean AUC over its seeds minus {name}'s. SE, rows: the standard error "
                  f"of that difference from the finite {split} set, both scored on the same "
                  f"rows (DeLong, DeLong & Clarke-Pearson 1988; usually below the single AUC's "
                  f"SE above): do these trained models differ? SE, rows + seeds: that SE with "
                  f"the seeds' spread added (s²/seeds of each side): does the recipe beat the "
                  f"other's? z and two-sided p use the second where both sides have two or "
                  f"more seeds, else the first.", "",
                  f"| model | {setting} | ΔAUC vs {name} | SE, rows | SE, rows + seeds | z "
                  f"| p |", "|---|---|---|---|---|---|---|"]
        for row in paired["rows"]:
            lines.append(f"| {row['model']} | {row['optimizer']} | {_num(row['delta'], '+.4f')} "
                         f"| {_num(row['se'], '.4f')} | {_num(row.get('se_seeds'), '.4f')} "
                         f"| {_num(row['z'], '+.2f')} | {_num(row['p'], '.2g')} |")
    ensembles = results.get("ensembles")
    if ensembles and ensembles["rows"]:
        ref = ensembles["against"]
        name = f"{ref['model']} ({ref['optimizer']})"
        lines += ["", "Seed ensembles: each row's seeds as one model, the mean of their click "
                  "probabilities. Validation AUC, the seeds' mean -> the ensemble's, says "
                  "whether ensembling pays before the test split is looked at. ΔAUC: against "
                  f"{name}'s ensemble on the same rows, SE from the rows (DeLong), p two-sided.",
                  "", f"| model | {setting} | seeds | val AUC: seeds' mean -> ensemble | AUC: "
                  f"seeds' mean -> ensemble | log loss | accuracy | ΔAUC vs {name} | SE, rows "
                  "| p |", "|---|---|---|---|---|---|---|---|---|---|"]
        for row in ensembles["rows"]:
            val = (f"{row['val_single_auc']:.4f} -> {row['val_auc']:.4f}"
                   if "val_auc" in row else "–")
            lines.append(
                f"| {row['model']} | {row['optimizer']} | {row['seeds']} | {val} "
                f"| {row['single_auc']:.4f} -> {row['auc']:.4f} | {row['logloss']:.4f} "
                f"| {row['accuracy']:.4f} | {_num(row.get('delta'), '+.4f')} "
                f"| {_num(row.get('se'), '.4f')} | {_num(row.get('p'), '.2g')} |")
    return "\n".join(lines) + "\n"


def rewrite_report(out_dir: str | Path) -> dict[str, Any]:
    """Rebuild results.md and auc_curve.png of a finished comparison from its results.json."""
    out = Path(out_dir)
    results = json.loads((out / "results.json").read_text())
    results["rows"] = aggregate(results["runs"])
    against = results.get("config", {}).get("against")
    results["paired"] = paired_comparison(results, out, against)
    if results.get("config", {}).get("ensemble"):
        results["ensembles"] = seed_ensembles(results, out, against)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "results.md").write_text(markdown_table(results))
    plot_curves(results, out / "auc_curve.png")
    return results


def plot_curves(results: dict[str, Any], path: str | Path) -> None:
    """Validation AUC against samples seen: mean over seeds, min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    keys = list(dict.fromkeys((r["model"], r["optimizer"]) for r in results["runs"]))
    several = len({opt for _, opt in keys}) > 1
    for kind, opt in keys:
        group = [r for r in results["runs"] if r["model"] == kind and r["optimizer"] == opt]
        curves = [r["curve"] for r in group if _finite(r)]  # diverged runs: counted, not drawn
        label = f"{kind} ({opt})" if several else kind
        diverged = len(group) - len(curves)
        if diverged:
            label += f", {diverged} of {len(group)} diverged"
        length = min((len(c) for c in curves), default=0)
        if length == 0:
            ax.plot([], [], linestyle="none", marker="x", color="red", label=label)
            continue
        xs = [curves[0][k][0] for k in range(length)]
        per_point = [[c[k][1] for c in curves] for k in range(length)]
        line, = ax.plot(xs, [statistics.fmean(p) for p in per_point], marker="o",
                        markersize=3, label=label)
        if len(curves) > 1:
            ax.fill_between(xs, [min(p) for p in per_point], [max(p) for p in per_point],
                            color=line.get_color(), alpha=0.15)
    optimal = results.get("optimal_val_auc")
    if optimal:
        ax.axhline(optimal, color="black", linestyle="--", linewidth=1,
                   label=f"Bayes-optimal ({optimal:.3f})")
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("validation AUC")
    ax.set_title("dlrm compare")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
