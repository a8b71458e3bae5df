"""The multitask ablation: does sharing the network with auxiliary tasks help the 14 findings, and at what cost?

Variants, all trained with the same budget (the config's epochs / ``max_steps``) and the same seeds:

- ``multitask``: the config as given (findings plus its auxiliary heads: abnormal, age, sex, view, ...);
- ``findings_only``: the same network without the auxiliary heads;
- ``single:<finding>``: one network per finding (the ``single_task`` arm collects them); under a label cut by
  default only for the cut findings (``single="rare"``): the other findings' single-task models do not depend on it;
- ``weighting:<method>``: the multitask config with another loss weighting (equal, uncertainty, DWA, GradNorm,
  PCGrad), as the method defines it: the config's static task weights (``weighting.weights``, e.g. the demo
  recipe's auxiliary weights 0.1) and options belong to the config's own method; a variant identical to the config's
  weighting is the ``multitask`` run itself and is not trained twice (``equal`` is trained, as the plain sum of the
  losses, when the config gives static weights).

Variants without the auxiliary heads keep the findings task's static weight and drop the others'.

Each (variant, seed) trains through the engine's ``cxrmtl.train.loop.train`` into ``OUT/runs/<variant>/seed<k>``
and predicts the evaluation split; a finished run leaves ``ablation_run.json`` and ``ablation_predictions.npz``
and is skipped when the harness runs again (an interrupted one is resumed from its checkpoint). The comparison is
per-finding AUROC (mean and SD over seeds) with paired patient-level bootstrap intervals of the differences
(``ablate.paired``), plus parameters, training time and inference time.

Checkpoint rule (the same in every arm, docs/ablation.md): every model is scored with its final checkpoint after the
same step budget, early stopping off. Best-on-val selection would not be fair: each single-task model would pick
the best epoch for its own finding (a best-of-K choice per finding) while the multitask model gets one epoch for all
findings. The comparison runs on the test split; ``val`` is allowed but loudly labelled, ``train`` is refused.

Data efficiency: with ``data.rare_positive_fraction`` < 1 (``--rare-fraction``) every variant trains on the same
reduced labels (``data.labelcut``: the training split's positives of ``data.rare_findings`` partly masked, per seed);
val and test keep every label. The report then adds a macro row over the cut findings.

Budget check: ``ablate.curves`` reads each run's per-epoch validation AUROC (RUN/log.jsonl) and says per arm whether
it had stopped rising by the end (the final checkpoint is only a fair choice where it had).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cxrmtl import labels
from cxrmtl.ablate.curves import arm_curves
from cxrmtl.ablate.paired import PairedResult, macro_difference, paired_auroc_difference
from cxrmtl.config import Config, WeightingConfig, to_dict
from cxrmtl.errors import ConfigError, EvaluationError, RunError
from cxrmtl.eval.datakind import DataDescription, describe_data
from cxrmtl.eval.metrics import auroc
from cxrmtl.version import code_version

RUN_MARKER = "ablation_run.json"
PREDICTIONS_FILE = "ablation_predictions.npz"
RESULT_JSON = "ablation.json"
RESULT_MD = "ablation.md"
SCHEMA = 3  # 2: final-checkpoint rule, "checkpoint" and "data" fields; 3: "label_cut", "curves", "covered"
# Every arm is scored with this checkpoint of each of its models (see the module docstring and docs/ablation.md).
CHECKPOINT_RULE = "last"
COMPARE_SPLITS: tuple[str, ...] = ("test", "val")  # train is refused: in-sample numbers say nothing


# ---------------------------------------------------------------------------------------------------------------
# variants: a registry of config transforms


def findings_spec(findings: Sequence[str] | None) -> str:
    """The task spec of the findings head: ``findings`` for all 14, ``findings:A,B`` for a subset."""
    if findings is None or tuple(findings) == labels.FINDINGS:
        return "findings"
    unknown = [f for f in findings if f not in labels.FINDING_INDEX]
    if unknown or not findings:
        raise ConfigError(f"findings: unknown finding(s) {unknown}; known: {', '.join(labels.FINDINGS)}")
    return "findings:" + ",".join(findings)


def _is_findings(spec: str) -> bool:
    return spec == "findings" or spec.startswith("findings:")


def _with_specs(base: Config, specs: Sequence[str]) -> Config:
    """``base`` with these tasks; its static task weights (``weighting.weights``, keyed by task name) follow: the
    findings task's weight moves to the new findings spec, weights of tasks the variant drops go with them."""
    findings = next(s for s in specs if _is_findings(s))
    weights = {}
    for name, value in base.weighting.weights.items():
        target = findings if _is_findings(name) else name
        if target in specs:
            weights[target] = value
    return dataclasses.replace(base, tasks=dataclasses.replace(base.tasks, specs=tuple(specs)),
                               weighting=dataclasses.replace(base.weighting, weights=weights))


def _multitask(base: Config, *, spec: str, arg: str | None) -> Config:
    aux = [s for s in base.tasks.specs if not _is_findings(s)]
    return _with_specs(base, [spec, *aux])


def _findings_only(base: Config, *, spec: str, arg: str | None) -> Config:
    return _with_specs(base, [spec])


def _single(base: Config, *, spec: str, arg: str | None) -> Config:
    return _with_specs(base, [findings_spec([str(arg)])])


def _weighting(base: Config, *, spec: str, arg: str | None) -> Config:
    """The multitask config under method ``arg`` as the method defines it: the config's static task weights and
    method options belong to the config's own method (an "equal" variant is then the plain sum of the losses)."""
    cfg = _multitask(base, spec=spec, arg=None)
    return dataclasses.replace(cfg, weighting=WeightingConfig(method=str(arg)))


# kind -> (config transform, arm the variant belongs to)
VARIANT_KINDS: dict[str, tuple[Callable[..., Config], Callable[[str | None], str]]] = {
    "multitask": (_multitask, lambda arg: "multitask"),
    "findings_only": (_findings_only, lambda arg: "findings_only"),
    "single": (_single, lambda arg: "single_task"),
    "weighting": (_weighting, lambda arg: f"weighting:{arg}"),
}
ARM_TITLES: dict[str, str] = {
    "multitask": "multitask",
    "findings_only": "findings only",
    "single_task": "single-task",
}


@dataclass(frozen=True)
class Variant:
    """One trainable configuration of the ablation (seed not yet applied)."""

    name: str  # "multitask", "findings_only", "single:Effusion", "weighting:pcgrad"
    arm: str  # comparison arm: "multitask", "findings_only", "single_task", "weighting:pcgrad"
    config: Config

    @property
    def dirname(self) -> str:
        return self.name.replace(":", "-")


def make_variant(base: Config, name: str, *, findings: Sequence[str] | None) -> Variant:
    """Build variant ``name`` (``kind`` or ``kind:arg``) from the base config."""
    kind, _, arg = name.partition(":")
    if kind not in VARIANT_KINDS:
        raise ConfigError(f"variant: {name!r} is not one of {', '.join(sorted(VARIANT_KINDS))} (kind[:arg])")
    transform, arm = VARIANT_KINDS[kind]
    cfg = transform(base, spec=findings_spec(findings), arg=arg or None)
    return Variant(name=name, arm=arm(arg or None), config=cfg)


def plan_variants(
    base: Config, *, findings: Sequence[str] | None = None, weightings: Sequence[str] = (),
    single: Sequence[str] | None = None,
) -> list[Variant]:
    """Every variant of the ablation, in training order; checks the config can be ablated at all.

    ``single``: the findings that get a single-task model (None: every chosen finding; empty: none).
    """
    if not any(_is_findings(s) for s in base.tasks.specs):
        raise ConfigError("tasks.specs: the ablation compares findings AUROC, but the config has no findings task")
    if all(_is_findings(s) for s in base.tasks.specs):
        raise ConfigError("tasks.specs: the config has no auxiliary task, so multitask and findings-only are the "
                          "same model; add abnormal/age/sex/view to tasks.specs")
    unknown = sorted(set(weightings) - set(labels.ABLATION_WEIGHTINGS))
    if unknown:
        raise ConfigError(f"weightings: unknown {unknown}; choose from {', '.join(labels.ABLATION_WEIGHTINGS)}")
    chosen = tuple(findings) if findings is not None else labels.FINDINGS
    alone = chosen if single is None else tuple(single)
    outside = [f for f in alone if f not in chosen]
    if outside:
        raise ConfigError(f"single: {', '.join(outside)} not among the compared findings ({', '.join(chosen)})")
    names = ["multitask", "findings_only", *(f"single:{f}" for f in chosen if f in alone)]
    variants = [make_variant(base, name, findings=findings) for name in names]
    baseline = variants[0].config.weighting
    for method in dict.fromkeys(weightings):
        variant = make_variant(base, f"weighting:{method}", findings=findings)
        if variant.config.weighting != baseline:  # the config's own weighting is the multitask run itself
            variants.append(variant)
    return variants


def seeded(variant: Variant, *, seed: int, max_steps: int | None) -> Config:
    """The variant's config for one seed (and the step budget, when given), named after the variant.

    Early stopping is off so every model trains the same budget and its final checkpoint is what gets compared.
    """
    train = dataclasses.replace(variant.config.train, select_metric="auto", select_mode="auto", progress=False,
                                early_stop_patience=0)
    if max_steps is not None:
        train = dataclasses.replace(train, max_steps=max_steps)
    # select_metric "auto" (the first task's primary metric; findings come first) only names best.pt, which the
    # ablation does not use; a fixed name such as val/findings/auroc_mean would not exist in single-task variants.
    return dataclasses.replace(variant.config, seed=seed, name=f"ablation-{variant.dirname}-seed{seed}", train=train)


# ---------------------------------------------------------------------------------------------------------------
# running: train, predict, record; skip what is finished


@dataclass(frozen=True)
class RunRecord:
    """What one finished (variant, seed) run contributes: where it is and what it cost."""

    variant: str
    arm: str
    seed: int
    run: str
    parameters: int
    train_seconds: float
    infer_seconds: float
    infer_images: int
    steps: int
    resumed: bool
    config_sha256: str = ""  # of the resolved config: a rerun with other settings must not reuse this run

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2) + "\n"


def read_record(path: Path) -> RunRecord:
    """Load ``ablation_run.json``; a damaged file raises RunError naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return RunRecord(**data)
    except (OSError, ValueError, TypeError) as exc:
        raise RunError(f"{path}: unreadable ablation run record ({exc}); delete it to redo the run") from exc


@dataclass(frozen=True)
class Harness:
    """Where the data and the outputs are and what every run shares."""

    data_root: Path
    out: Path
    split: str = "test"
    device: str = "auto"
    batch_size: int = 64
    cache: Path | None = None  # shared preprocessing cache; default OUT/cache
    memo: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)  # index and cache, opened once

    @property
    def cache_dir(self) -> Path:
        return self.cache if self.cache is not None else self.out / "cache"

    def run_dir(self, variant: Variant, seed: int) -> Path:
        return self.out / "runs" / variant.dirname / f"seed{seed}"


def config_digest(cfg: Config) -> str:
    """SHA-256 of the resolved config's YAML: identifies what a finished run was trained with."""
    import hashlib

    from cxrmtl.config import dump_config

    return hashlib.sha256(dump_config(cfg).encode("utf-8")).hexdigest()


def run_variant(harness: Harness, variant: Variant, *, seed: int, max_steps: int | None) -> RunRecord:
    """Train and predict one (variant, seed) unless its record exists; return the record."""
    from cxrmtl.fsio import atomic_write_text
    from cxrmtl.runs.layout import RunDir
    from cxrmtl.train.loop import train

    run_dir = harness.run_dir(variant, seed)
    marker = run_dir / RUN_MARKER
    cfg = seeded(variant, seed=seed, max_steps=max_steps)
    digest = config_digest(cfg)
    if marker.is_file() and (run_dir / PREDICTIONS_FILE).is_file():
        record = read_record(marker)
        if record.config_sha256 != digest:
            raise RunError(f"{marker}: this run was trained with other settings (config, seeds or --max-steps); "
                           "use a new --out folder or delete the run folder")
        return record
    resumed = RunDir(run_dir).has_run()
    start = time.perf_counter()
    summary = train(cfg, data_root=harness.data_root, out=run_dir, cache_dir=harness.cache_dir, resume=resumed,
                    device=harness.device)
    train_seconds = time.perf_counter() - start
    parameters, infer_seconds, images = _predict(harness, run_dir)
    record = RunRecord(variant=variant.name, arm=variant.arm, seed=seed, run=str(run_dir.relative_to(harness.out)),
                       parameters=parameters, train_seconds=train_seconds, infer_seconds=infer_seconds,
                       infer_images=images, steps=summary.steps, resumed=resumed, config_sha256=digest)
    atomic_write_text(marker, record.to_json())
    return record


def _predict(harness: Harness, run_dir: Path) -> tuple[int, float, int]:
    """Predict the evaluation split with the final checkpoint (CHECKPOINT_RULE, the same for every arm); save the
    predictions; return (parameters, seconds, images)."""
    from cxrmtl.distributed import resolve_device
    from cxrmtl.infer.predictor import load_run, predict_split

    loaded = load_run(run_dir, which=CHECKPOINT_RULE, device=resolve_device(harness.device))
    index, cache = _data(harness, loaded.config)
    start = time.perf_counter()
    preds = predict_split(loaded, cache, index, harness.split, batch_size=harness.batch_size)
    seconds = time.perf_counter() - start
    preds.save(run_dir / PREDICTIONS_FILE)
    return sum(p.numel() for p in loaded.model.parameters()), seconds, len(preds)


def prepare_cache(harness: Harness, cfg: Config) -> None:
    """Build (or finish) the shared cache once up front, so no variant's training time includes decoding images."""
    _data(harness, cfg)


def _data(harness: Harness, cfg: Config) -> tuple[Any, Any]:
    """(NIHIndex, CacheView) for the run's split settings, opened (the cache built if missing) once per setting."""
    from cxrmtl.runs.data import open_run_data

    key = (cfg.data.val_fraction, cfg.data.split_seed)
    if key not in harness.memo:
        rd = open_run_data(data=cfg.data, data_root=harness.data_root, cache_dir=harness.cache_dir)
        harness.memo[key] = (rd.index, rd.cache)
    return harness.memo[key]


# ---------------------------------------------------------------------------------------------------------------
# comparison


@dataclass(frozen=True)
class ArmScores:
    """Scores of one arm on the common images: one (N, F) array per seed, seeds in the same order for every arm."""

    arm: str
    seeds: tuple[int, ...]
    scores: tuple[np.ndarray, ...]  # NaN in the columns of findings the arm has no model for
    records: tuple[RunRecord, ...]
    covered: tuple[str, ...] | None = None  # findings the arm predicts (None: all of the table's)

    def predicts(self, finding: str) -> bool:
        return self.covered is None or finding in self.covered


def _findings_columns(preds: Any, findings: Sequence[str], *, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores, targets, masks) (N, F) of the findings head of one prediction set, in ``findings`` order."""
    tasks = [t for t in preds.output_names if _is_findings(t)]
    if len(tasks) != 1:
        raise EvaluationError(f"{where}: expected one findings task in the predictions, found {tasks}")
    task = tasks[0]
    names = list(preds.output_names[task])
    missing = [f for f in findings if f not in names]
    if missing:
        raise EvaluationError(f"{where}: the findings head lacks {missing} (it has {names})")
    cols = [names.index(f) for f in findings]
    return preds.outputs[task][:, cols], preds.targets[task][:, cols], preds.masks[task][:, cols]


def _load_predictions(out: Path, record: RunRecord) -> Any:
    from cxrmtl.infer.predictor import Predictions

    return Predictions.load(out / record.run / PREDICTIONS_FILE)


@dataclass(frozen=True)
class Table:
    """Aligned evaluation data: common rows, labels, masks, patient ids, and every arm's scores."""

    findings: tuple[str, ...]
    rows: np.ndarray
    patient_ids: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    arms: dict[str, ArmScores]
    cut_findings: tuple[str, ...] = ()  # findings whose training positives were cut (empty: every label used)


def build_table(
    out: Path, records: Sequence[RunRecord], *, findings: Sequence[str], cut_findings: Sequence[str] = ()
) -> Table:
    """Load every run's predictions and align them on the images all of them scored."""
    loaded = {(r.variant, r.seed): (r, _load_predictions(out, r)) for r in records}
    common = None
    for _, preds in loaded.values():
        common = preds.rows if common is None else np.intersect1d(common, preds.rows)
    if common is None or common.size == 0:
        raise EvaluationError("ablation: the runs share no evaluated image")
    first = next(iter(loaded.values()))[1]
    pos = np.searchsorted(first.rows, common)
    full_findings = [r for r in records if r.arm == "multitask"]
    if not full_findings:
        raise EvaluationError("ablation: no multitask run to take the labels from")
    ref = loaded[(full_findings[0].variant, full_findings[0].seed)][1]
    _, targets, masks = _findings_columns(ref, findings, where=full_findings[0].run)
    ref_pos = np.searchsorted(ref.rows, common)
    arms = _arm_scores(loaded, common, findings)
    return Table(findings=tuple(findings), rows=common, patient_ids=first.patient_ids[pos],
                 labels=targets[ref_pos].astype(np.int8), masks=masks[ref_pos].astype(bool), arms=arms,
                 cut_findings=tuple(cut_findings))


def _arm_scores(loaded: dict, common: np.ndarray, findings: Sequence[str]) -> dict[str, ArmScores]:
    by_arm: dict[str, dict[int, list[tuple[RunRecord, Any]]]] = {}
    for record, preds in loaded.values():
        by_arm.setdefault(record.arm, {}).setdefault(record.seed, []).append((record, preds))
    arms = {}
    for arm, per_seed in by_arm.items():
        seeds = tuple(sorted(per_seed))
        arrays, records, covered = [], [], None
        for seed in seeds:
            matrix = np.full((common.size, len(findings)), np.nan)
            for record, preds in per_seed[seed]:
                have = [f for f in findings if f in _head_names(preds)]
                scores, _, _ = _findings_columns(preds, have, where=record.run)
                pos = np.searchsorted(preds.rows, common)
                matrix[:, [findings.index(f) for f in have]] = scores[pos]
                records.append(record)
            has = tuple(f for k, f in enumerate(findings) if not np.isnan(matrix[:, k]).any())
            if covered is not None and has != covered:
                raise EvaluationError(f"ablation: arm {arm} seed {seed} has models for {list(has)}, another seed for "
                                      f"{list(covered)}")
            covered = has
            arrays.append(matrix)
        if not covered:
            raise EvaluationError(f"ablation: arm {arm} has no complete scores for any finding")
        arms[arm] = ArmScores(arm=arm, seeds=seeds, scores=tuple(arrays), records=tuple(records),
                              covered=None if len(covered) == len(findings) else covered)
    return arms


def _head_names(preds: Any) -> list[str]:
    return [n for t in preds.output_names if _is_findings(t) for n in preds.output_names[t]]


def per_seed_auroc(table: Table, arm: str) -> np.ndarray:
    """(seeds, F) AUROC of every seed of ``arm`` (NaN where a finding has one class only)."""
    scored = table.arms[arm]
    out = np.full((len(scored.scores), len(table.findings)), np.nan)
    for s, scores in enumerate(scored.scores):
        for k, finding in enumerate(table.findings):
            if not scored.predicts(finding):
                continue
            keep = table.masks[:, k]
            value = auroc(scores[keep, k], table.labels[keep, k])
            out[s, k] = np.nan if value is None else value
    return out


def compare(table: Table, arm_a: str, arm_b: str, *, n_resamples: int, seed: int = 0) -> PairedResult:
    """Paired bootstrap of AUROC(arm_a) - AUROC(arm_b), seeds paired one to one (common seeds only), over the
    findings both arms predict (all of them unless an arm, e.g. single-task under ``single="rare"``, has fewer)."""
    a, b = table.arms[arm_a], table.arms[arm_b]
    seeds = [s for s in a.seeds if s in b.seeds]
    if not seeds:
        raise EvaluationError(f"ablation: arms {arm_a} and {arm_b} share no seed")
    cols = [k for k, f in enumerate(table.findings) if a.predicts(f) and b.predicts(f)]
    if not cols:
        raise EvaluationError(f"ablation: arms {arm_a} and {arm_b} predict no finding in common")
    pick_a = [a.scores[a.seeds.index(s)][:, cols] for s in seeds]
    pick_b = [b.scores[b.seeds.index(s)][:, cols] for s in seeds]
    return paired_auroc_difference(pick_a, pick_b, table.labels[:, cols], table.patient_ids,
                                   mask=table.masks[:, cols], names=[table.findings[k] for k in cols],
                                   n_resamples=n_resamples, seed=seed)


def subset_result(result: PairedResult, names: Sequence[str]) -> PairedResult | None:
    """The columns ``names`` of a paired result (those it has), for a macro over a subset; None if it has none."""
    cols = [result.names.index(n) for n in names if n in result.names]
    if not cols:
        return None
    return dataclasses.replace(
        result, names=tuple(result.names[k] for k in cols), auroc_a=result.auroc_a[cols],
        auroc_b=result.auroc_b[cols], diff=result.diff[cols], low=result.low[cols], high=result.high[cols],
        p_value=result.p_value[cols], n_valid=result.n_valid[cols], samples=result.samples[:, cols])


def _comparison_rows(table: Table, result: PairedResult) -> list[dict[str, Any]]:
    """One row per finding of the table (``compared`` False, numbers None, where an arm has no model for it)."""
    by_name = {row["name"]: row for row in result.rows()}
    empty = {"auroc_a": None, "auroc_b": None, "diff": None, "low": None, "high": None, "p_value": None,
             "n_valid": 0}
    return [{**by_name[f], "compared": True} if f in by_name else {"name": f, **empty, "compared": False}
            for f in table.findings]


# ---------------------------------------------------------------------------------------------------------------
# summary and the whole harness


def _spread(values: np.ndarray) -> dict[str, Any]:
    """Mean, sample SD (None with one seed) and the per-seed values of one quantity; NaN -> None."""
    finite = values[np.isfinite(values)]
    return {
        "mean": float(finite.mean()) if finite.size else None,
        "sd": float(finite.std(ddof=1)) if finite.size > 1 else None,
        "per_seed": [None if not np.isfinite(v) else float(v) for v in values],
    }


def _arm_summary(table: Table, arm: str) -> dict[str, Any]:
    scores = table.arms[arm]
    per_seed = per_seed_auroc(table, arm)
    by_seed: dict[int, list[RunRecord]] = {}
    for record in scores.records:
        by_seed.setdefault(record.seed, []).append(record)
    groups = list(by_seed.values())
    costs = {
        "parameters": [sum(r.parameters for r in rs) for rs in groups],
        "train_seconds": [sum(r.train_seconds for r in rs) for rs in groups],
        "infer_ms_per_image": [sum(1000 * r.infer_seconds / max(r.infer_images, 1) for r in rs) for rs in groups],
    }
    full = scores.covered is None
    cut = [k for k, f in enumerate(table.findings) if f in table.cut_findings]
    cut_covered = bool(cut) and all(scores.predicts(table.findings[k]) for k in cut)
    return {
        "title": ARM_TITLES.get(arm, arm.replace("weighting:", "weighting ")),
        "seeds": list(scores.seeds),
        "models_per_seed": len(scores.records) // max(len(scores.seeds), 1),
        "covered": list(table.findings) if full else list(scores.covered or ()),
        "auroc": {f: _spread(per_seed[:, k]) for k, f in enumerate(table.findings)},
        # over all findings only for an arm that predicts all of them (a partial arm's mean is another quantity)
        "macro_auroc": _spread(_row_means(per_seed) if full else np.full(len(per_seed), np.nan)),
        "macro_auroc_cut": _spread(_row_means(per_seed[:, cut])) if cut_covered else None,
        **{key: _spread(np.asarray(values, dtype=np.float64)) for key, values in costs.items()},
    }


def _row_means(values: np.ndarray) -> np.ndarray:
    """Per row (seed), the mean of the finite entries; NaN where a row has none."""
    with np.errstate(all="ignore"):
        return np.array([np.nanmean(row) if np.isfinite(row).any() else np.nan for row in values])


def comparisons_for(arms: Sequence[str]) -> list[tuple[str, str, str]]:
    """(group, a, b) pairs to compare: multitask against each architecture arm; each weighting against multitask."""
    pairs = [("architecture", "multitask", b) for b in ("findings_only", "single_task") if b in arms]
    pairs += [("weighting", a, "multitask") for a in arms if a.startswith("weighting:")]
    return pairs


def summarise(table: Table, *, n_resamples: int, seed: int = 0) -> dict[str, Any]:
    """Arms (AUROC mean/SD per finding, costs) and paired comparisons, JSON-ready."""
    order = sorted(table.arms, key=lambda a: (list(ARM_TITLES).index(a) if a in ARM_TITLES else len(ARM_TITLES), a))
    comparisons = []
    for group, a, b in comparisons_for(order):
        result = compare(table, a, b, n_resamples=n_resamples, seed=seed)
        cut = subset_result(result, table.cut_findings) if table.cut_findings else None
        comparisons.append({
            "group": group, "a": a, "b": b, "level": result.level, "n_resamples": n_resamples,
            "findings": _comparison_rows(table, result),
            "macro": {**macro_difference(result), "over": list(result.names)},
            "macro_cut": None if cut is None else {**macro_difference(cut), "over": list(cut.names)},
        })
    return {
        "findings": list(table.findings),
        "images": int(table.rows.size),
        "patients": int(np.unique(table.patient_ids).size),
        "positives": {f: int(table.labels[table.masks[:, k], k].sum()) for k, f in enumerate(table.findings)},
        "cut_findings": list(table.cut_findings),
        "arms": {arm: _arm_summary(table, arm) for arm in order},
        "comparisons": comparisons,
    }


def check_split(split: str) -> None:
    """Refuse comparisons on the training split; ``val`` passes (the report labels it loudly)."""
    if split not in COMPARE_SPLITS:
        why = " (in-sample: the models were fitted on it)" if split == "train" else ""
        raise ConfigError(f"split: the ablation compares on {' or '.join(COMPARE_SPLITS)}, not {split!r}{why}")


def describe_table(harness: Harness, cfg: Config, table: Table, *, phantom: bool = False) -> DataDescription:
    """What the compared images are (``eval.datakind``: phantom marker in the data folder, subset, official split);
    ``phantom=True`` (the command wrote the phantom itself) labels the data phantom whatever the folder holds."""
    from cxrmtl.data.nih import load_index

    key = (cfg.data.val_fraction, cfg.data.split_seed)
    index = harness.memo[key][0] if key in harness.memo else load_index(
        harness.data_root, val_fraction=cfg.data.val_fraction, split_seed=cfg.data.split_seed)
    return describe_data(index, table.rows, harness.data_root, kind="phantom" if phantom else "auto")


@dataclass(frozen=True)
class AblationOptions:
    """Everything ``cxrmtl ablate`` decides besides the config."""

    data_root: Path
    out: Path
    seeds: int = labels.ABLATION_DEFAULT_SEEDS
    max_steps: int | None = None
    weightings: tuple[str, ...] = ()
    findings: tuple[str, ...] | None = None
    split: str = "test"
    n_resamples: int = 1000
    device: str = "auto"
    batch_size: int = 64
    phantom: bool = False  # the command wrote the phantom itself; a phantom.json in data_root is detected anyway
    # Data efficiency: keep this fraction of the training positives of rare_findings (None: the config's
    # data.rare_positive_fraction, 1 unless set); rare_findings None: the config's data.rare_findings.
    rare_fraction: float | None = None
    rare_findings: tuple[str, ...] | None = None
    single: str | None = None  # all | rare | none (labels.ABLATION_SINGLE_MODES); None: rare under a cut, else all
    cache: Path | None = None  # shared preprocessing cache (default OUT/cache)
    # (k, n): train only every n-th (variant, seed) run from the k-th (1-based) and compare nothing, so n processes
    # can share the runs of one OUT; a later call without a shard finds them finished and compares.
    shard: tuple[int, int] | None = None


def with_label_cut(base: Config, *, fraction: float | None, findings: Sequence[str] | None) -> Config:
    """``base`` with the options' label cut in ``data`` (None keeps the config's value); checks the cut."""
    from cxrmtl.config import check_rare_positive_cut

    data = base.data
    data = dataclasses.replace(
        data,
        rare_positive_fraction=data.rare_positive_fraction if fraction is None else float(fraction),
        rare_findings=data.rare_findings if findings is None else tuple(findings))
    check_rare_positive_cut(data.rare_findings, data.rare_positive_fraction, where="data")
    return dataclasses.replace(base, data=data)


def cut_findings_of(cfg: Config) -> tuple[str, ...]:
    """The findings whose training positives ``cfg`` cuts (empty when it keeps every label)."""
    return tuple(cfg.data.rare_findings) if cfg.data.rare_positive_fraction < 1.0 else ()


def single_findings(mode: str | None, *, chosen: Sequence[str], cut: Sequence[str]) -> tuple[str, ...]:
    """Which findings get a single-task model under ``mode`` (all | rare | none; None: rare under a cut, else all)."""
    if mode is None:
        mode = "rare" if cut else "all"
    if mode not in labels.ABLATION_SINGLE_MODES:
        raise ConfigError(f"single: {mode!r} is not one of {', '.join(labels.ABLATION_SINGLE_MODES)}")
    if mode == "rare" and not cut:
        raise ConfigError("single: 'rare' trains single-task models for the findings whose labels are cut, but no "
                          "label is cut (rare_fraction is 1); use all or none, or a rare fraction below 1")
    picks = {"all": tuple(chosen), "rare": tuple(f for f in chosen if f in cut), "none": ()}
    return picks[mode]


@dataclass(frozen=True)
class AblationPlan:
    """What an ablation will train, decided from the config and the options alone (no data read)."""

    base: Config  # the config with the options' label cut
    findings: tuple[str, ...]  # compared findings
    cut: tuple[str, ...]  # findings whose training positives are cut (empty: every label)
    single: tuple[str, ...]  # findings that get a single-task model
    variants: tuple[Variant, ...]


def plan_ablation(base: Config, options: AblationOptions) -> AblationPlan:
    """Check the options against the config and plan the variants; every mistake is a one-line ConfigError, raised
    before any data is written or read (the command calls this before it writes a phantom)."""
    if options.seeds < 1:
        raise ConfigError(f"seeds: need at least 1, got {options.seeds}")
    if options.shard is not None and not 1 <= options.shard[0] <= options.shard[1]:
        raise ConfigError(f"shard: {options.shard[0]}/{options.shard[1]} is not K/N with 1 <= K <= N")
    check_split(options.split)
    base = with_label_cut(base, fraction=options.rare_fraction, findings=options.rare_findings)
    findings = tuple(options.findings) if options.findings is not None else labels.FINDINGS
    cut = cut_findings_of(base)
    outside = [f for f in cut if f not in findings]
    if outside:
        raise ConfigError(f"rare_findings: {', '.join(outside)} not among the compared findings "
                          f"({', '.join(findings)}); cut only findings the models predict")
    single = single_findings(options.single, chosen=findings, cut=cut)
    variants = plan_variants(base, findings=options.findings, weightings=options.weightings, single=single)
    return AblationPlan(base=base, findings=findings, cut=cut, single=single, variants=tuple(variants))


def run_ablation(
    base: Config, options: AblationOptions, *, log: Callable[[str], None] = print
) -> dict[str, Any] | None:
    """Train every (variant, seed) not yet finished, compare, write OUT/ablation.json and OUT/ablation.md; with
    ``options.shard`` train only that shard's runs and return None (nothing compared, nothing written)."""
    from cxrmtl.ablate.report import ablation_markdown, ablation_section
    from cxrmtl.fsio import atomic_write_text

    plan = plan_ablation(base, options)
    base, findings, cut, single, variants = plan.base, plan.findings, plan.cut, plan.single, plan.variants
    harness = Harness(data_root=options.data_root, out=options.out, split=options.split, device=options.device,
                      batch_size=options.batch_size, cache=options.cache)
    options.out.mkdir(parents=True, exist_ok=True)
    seeds = [base.seed + k for k in range(options.seeds)]
    prepare_cache(harness, base)
    pairs = [(variant, seed) for variant in variants for seed in seeds]
    if options.shard is not None:
        k, n = options.shard
        for variant, seed in pairs[k - 1::n]:
            log(f"ablation (shard {k}/{n}): {variant.name} seed {seed}")
            run_variant(harness, variant, seed=seed, max_steps=options.max_steps)
        return None
    records = []
    for variant, seed in pairs:
        log(f"ablation: {variant.name} seed {seed}")
        records.append(run_variant(harness, variant, seed=seed, max_steps=options.max_steps))
    table = build_table(options.out, records, findings=findings, cut_findings=cut)
    data = describe_table(harness, base, table, phantom=options.phantom)
    result = {
        "schema": SCHEMA,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "code_version": code_version(),
        "data_root": str(options.data_root),
        "data": data.to_json(),
        "phantom": data.kind == "phantom",
        "split": options.split,
        "checkpoint": CHECKPOINT_RULE,
        "seeds": seeds,
        "max_steps": options.max_steps,
        "baseline_weighting": base.weighting.method,
        "baseline_weights": dict(base.weighting.weights),
        "config": to_dict(base),
        "label_cut": label_cut_summary(options.out, base, records),
        "single": {"findings": list(single), "all": single == findings},
        **summarise(table, n_resamples=options.n_resamples),
        "curves": arm_curves(options.out, records, cut_findings=cut),
        "runs": [dataclasses.asdict(r) for r in records],
    }
    atomic_write_text(options.out / RESULT_JSON, json.dumps(result, indent=2, allow_nan=False) + "\n")
    atomic_write_text(options.out / RESULT_MD, ablation_markdown(result))
    atomic_write_text(options.out / "ablation_section.json", json.dumps(ablation_section(result).to_json()) + "\n")
    return result


def label_cut_summary(out: Path, cfg: Config, records: Sequence[RunRecord]) -> dict[str, Any] | None:
    """What the cut did (from the multitask runs' RUN/label_cut.json): per cut finding, its training positives and
    the kept count per seed; None when every label was used."""
    from cxrmtl.fsio import read_json_file
    from cxrmtl.runs.layout import LABEL_CUT_FILE

    cut = cut_findings_of(cfg)
    if not cut:
        return None
    per_finding: dict[str, dict[str, Any]] = {f: {"positives": None, "kept": []} for f in cut}
    for record in sorted((r for r in records if r.arm == "multitask"), key=lambda r: r.seed):
        path = out / record.run / LABEL_CUT_FILE
        doc = read_json_file(path, error=RunError)
        if not isinstance(doc, dict) or not isinstance(doc.get("findings"), dict):
            raise RunError(f"{path}: missing or not a label-cut record, but the run was trained on cut labels; delete "
                           "the run folder to redo it")
        for finding in cut:
            entry = doc["findings"].get(finding) or {}
            per_finding[finding]["positives"] = entry.get("positives")
            per_finding[finding]["kept"].append(entry.get("kept"))
    return {"fraction": cfg.data.rare_positive_fraction, "findings": list(cut), "unit": "image",
            "masked_not_negative": True, "split": "train", "per_finding": per_finding}
