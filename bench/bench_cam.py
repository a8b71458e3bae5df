"""Heatmap -> boxes rules x CAM methods x layers on one trained run's boxed images (Wang et al.'s scoring).

Wang et al.'s scoring (a box is correct when IoBB > T; accuracy = cases with a correct box; AFP = boxes that match
nothing, per case) is fixed; what is compared is how the boxes are drawn: the CAM method
(``localize.cam.CAM_METHODS``), the layer the map comes from, and the rule that turns the map into boxes
(``localize.localization.BOX_RULES`` plus a grid of ``peak_boxes`` parameters).

The CAMs of every (method, layer) are computed once per split and every rule is applied to the same maps. Choice is
made on the ``--select`` splits (the demo phantom's val split holds about 10 boxed cases, too few, so the default
is train + val: their boxes were never used in training, only their image labels) and reported on ``--report``
(test), which is never used to choose. A layer may be written ``A+B`` (pytorch-grad-cam averages the maps of both
layers) or ``os16/A`` (the backbone rebuilt by timm with ``output_stride=16`` and the trained weights loaded: the
last stage keeps its resolution with dilated convolutions, no retraining).

    python bench/bench_cam.py RUN --data DATA --cache CACHE [--layers backbone.layer3,backbone.layer2]
        [--methods gradcam,gradcam++,hirescam] [--select train,val] [--report test] [--out bench/results/cam.md]
        [--picture docs/localization_before_after.png --rows gradcam@backbone.layer4@wang,...] [--csv FILE]
    python bench/bench_cam.py --combine A.csv B.csv ...   # rank settings over several runs

Writes a markdown report (command, machine, date, load, PHANTOM) to ``--out`` and prints progress lines.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import itertools
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from machine import cpu_model  # bench/machine.py

T_IOBB = 0.5
T_IOU = 0.3


@dataclass
class Maps:
    """CAMs of one (method, layer) on one case list, with the seconds they took."""

    method: str
    layer: str
    side: int  # native map side at the layer
    heat: np.ndarray  # (N, S, S) float32 in [0, 1]
    seconds: float


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, nargs="?")
    parser.add_argument("--data", type=Path)
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--layers", default="backbone.layer4,backbone.layer3,backbone.layer2")
    parser.add_argument("--methods", default="gradcam,gradcam++,hirescam")
    parser.add_argument("--select", default="train,val", help="splits whose boxed cases choose the rule")
    parser.add_argument("--report", default="test", help="split the chosen settings are reported on")
    parser.add_argument("--grid", default="full", choices=("full", "small"), help="peak-rule parameter grid")
    parser.add_argument("--out", type=Path, help="markdown report (default: print only)")
    parser.add_argument("--csv", type=Path, help="every (method, layer, rule) x split as CSV, for --combine")
    parser.add_argument("--picture", type=Path, help="write a picture with one row per --rows entry here")
    parser.add_argument("--rows", default="", help="method@layer@rule per picture row, comma-separated")
    parser.add_argument("--combine", nargs="*", type=Path, help="rank settings over several --csv files and stop")
    args = parser.parse_args()
    if args.combine:
        print(combine(args.combine))
        return
    if args.run is None or args.data is None or args.cache is None:
        parser.error("RUN, --data and --cache are needed unless --combine is given")
    import torch

    from cxrmtl.data.cache import open_cache
    from cxrmtl.data.nih import load_index
    from cxrmtl.infer.predictor import load_run
    from cxrmtl.localize.run import pending_cases

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    loaded = load_run(args.run, which="best", device="cpu")
    d = loaded.config.data
    index = load_index(args.data, val_fraction=d.val_fraction, split_seed=d.split_seed)
    cache = open_cache(args.cache)
    outputs = list(loaded.labels["findings"])
    select = [p for split in args.select.split(",") for p in pending_cases(index, cache, split=split,
                                                                            outputs=outputs)[0]]
    report = pending_cases(index, cache, split=args.report, outputs=outputs)[0]
    print(f"cases: select ({args.select}) {len(select)}, report ({args.report}) {len(report)}", flush=True)
    rules = rule_grid(args.grid)
    lines = [header(args, loaded, select, report, len(rules))]
    lines += [auroc_check(loaded, index, cache, split=args.report, layers=args.layers.split(","))]
    results = []
    for layer, method in itertools.product(args.layers.split(","), args.methods.split(",")):
        maps = {name: cam_maps(loaded, cache, cases, method=method, layer=layer)
                for name, cases in (("select", select), ("report", report))}
        scored = {name: score_rules(rules, maps[name].heat, cases) for name, cases in
                  (("select", select), ("report", report))}
        results.append((method, layer, maps, scored))
        best = choose(scored["select"])
        print(f"{method} {layer} ({maps['report'].side}x{maps['report'].side}, {maps['report'].seconds:.0f} s): "
              f"pointing select {pointing(maps['select'].heat, select):.3f} "
              f"test {pointing(maps['report'].heat, report):.3f}; "
              f"wang test {fmt(scored['report']['wang'])}; best on select {best}: select "
              f"{fmt(scored['select'][best])}, test {fmt(scored['report'][best])}", flush=True)
    lines += tables(results, rules, report, split=args.report)
    if args.picture:
        rows = [tuple(r.split("@")) for r in args.rows.split(",") if r]
        picture(loaded, cache, report, rows=rows, out=args.picture)
        lines.append(f"\nPicture: `{args.picture}` (rows: {', '.join(args.rows.split(','))}).\n")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    if args.csv:
        write_csv(results, args.csv, run=args.run, select=select, report=report)


def header(args, loaded, select, report, n_rules: int) -> str:
    d = loaded.config.data
    return "\n".join([
        "# Heatmap -> boxes rules x CAM methods x layers (issue 11)",
        "",
        f"command: `python {' '.join(sys.argv)}`; {os.cpu_count()} cores, {cpu_model()}, "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC, load {os.getloadavg()[0]:.1f} (machine shared, loaded)",
        "",
        f"PHANTOM data, run `{args.run}` ({loaded.config.model.backbone} at {d.image_size} px, seed "
        f"{loaded.config.seed}). Chosen on {len(select)} boxed (image, finding) cases of split(s) {args.select} "
        f"(their boxes were never used in training), reported on {len(report)} of split {args.report}. "
        f"{n_rules} box rules per (method, layer). Scoring: Wang et al. 2017 unchanged (IoBB > {T_IOBB}; AFP = "
        "predicted boxes that match no true box, per case; means are over the boxed findings).",
        "",
    ])


def rule_grid(kind: str) -> dict[str, object]:
    """Rule label -> callable(heatmap) -> boxes: the registered rules and a grid of peak_boxes parameters."""
    from cxrmtl.localize.localization import BOX_RULES, peak_boxes

    rules: dict[str, object] = {name: rule.boxes for name, rule in BOX_RULES.items()}
    grid = dict(sigma=(0.0, 0.02, 0.04), level=(0.3, 0.5, 0.7), keep=(0.5, 0.8, 1.0), max_boxes=(1, 2, 3),
                min_area=(0.0, 0.005))
    if kind == "small":
        grid = dict(sigma=(0.0, 0.02), level=(0.5, 0.7), keep=(0.8, 1.0), max_boxes=(1, 2), min_area=(0.0,))
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values, strict=True))
        if params["keep"] == 1.0 and params["max_boxes"] > 1:
            continue  # only the region holding the maximum reaches 1.0: one box whatever K is
        label = "peak(s={sigma:g},l={level:g},k={keep:g},K={max_boxes},a={min_area:g})".format(**params)
        rules[label] = _bound(peak_boxes, params)
    return rules


def _bound(fn, params):
    return lambda heat: fn(heat, **params)


def cam_maps(loaded, cache, cases, *, method: str, layer: str, batch_size: int = 16) -> Maps:
    """CAMs of ``cases`` from ``layer`` (``A+B``: both, averaged; ``os16/A``: dilated backbone)."""
    import torch
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from cxrmtl.data.loader import normalize
    from cxrmtl.localize.cam import TaskOutput

    label, aug = method, method.endswith("-aug")
    method = method.removesuffix("-aug")
    contrast = method.endswith("-contrast")
    method = method.removesuffix("-contrast")
    model, names = loaded.model, layer
    if layer.startswith("os"):
        stride, names = layer[2:].split("/", 1)
        model = dilated(loaded.model, output_stride=int(stride))
    targets = [model.get_submodule(n) for n in names.split("+")]
    d = loaded.config.data
    out, t0 = [], time.perf_counter()
    model.eval()
    with cam_type(method)(model=TaskOutput(model, "findings"), target_layers=targets) as cam:
        for start in range(0, len(cases), batch_size):
            chunk = cases[start : start + batch_size]
            pixels = np.stack([np.asarray(cache.images[p.cache_row]) for p in chunk])
            x = normalize(torch.from_numpy(pixels).unsqueeze(1), mean=d.pixel_mean, std=d.pixel_std)
            with torch.enable_grad():
                wanted = [Contrast(p.column) if contrast else ClassifierOutputTarget(p.column) for p in chunk]
                maps = cam(input_tensor=x, targets=wanted, aug_smooth=aug)
            out.append(np.nan_to_num(maps.astype(np.float32), nan=0.0))
    seconds = time.perf_counter() - t0
    side = native_side(model, targets[0], d.image_size)
    return Maps(method=label, layer=layer, side=side,
                heat=np.concatenate(out), seconds=seconds)


class Contrast:
    """CAM target: the finding's logit minus the mean of all findings' logits (evidence for this finding, not for
    "something is abnormal"); for HiResCAM, linear in the gradient, the map is the finding's map minus the mean."""

    def __init__(self, column: int) -> None:
        self.column = column

    def __call__(self, output):
        return output[..., self.column] - output.mean(dim=-1)


def cam_type(method: str) -> type:
    """The registry's class, else a pytorch-grad-cam class by name (methods tried here before they are offered)."""
    from cxrmtl.localize.cam import CAM_METHODS, cam_class

    if method in CAM_METHODS:
        return cam_class(method)
    import pytorch_grad_cam

    extra = {"layercam": "LayerCAM", "xgradcam": "XGradCAM", "eigengradcam": "EigenGradCAM", "scorecam": "ScoreCAM"}
    return getattr(pytorch_grad_cam, extra[method])


def dilated(model, *, output_stride: int):
    """A copy of ``model`` whose timm backbone is rebuilt with ``output_stride`` and the same trained weights."""
    import timm

    twin = copy.deepcopy(model)
    backbone = timm.create_model(model.backbone_name, pretrained=False, in_chans=1, num_classes=0,
                                 output_stride=output_stride)
    backbone.load_state_dict(model.backbone.state_dict())  # same parameter shapes: only strides/dilations differ
    twin.backbone = backbone
    return twin.eval()


def native_side(model, module, size: int) -> int:
    import torch

    shapes = []
    handle = module.register_forward_hook(lambda m, i, o: shapes.append(o.shape[-1]))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, size, size))
    handle.remove()
    return int(shapes[0])


def score_rules(rules: dict[str, object], heat: np.ndarray, cases) -> dict[str, dict]:
    """Rule label -> {acc, afp, iou, per-finding acc/afp}: IoBB > 0.5 accuracy and AFP, IoU > 0.3 accuracy."""
    from cxrmtl.localize.localization import LocalizationCase, evaluate_localization, smooth_heatmap

    smoothed: dict[float, np.ndarray] = {}
    out = {}
    for label, fn in rules.items():
        sigma = _sigma_of(label)
        if sigma is not None:  # peak rules: smooth once per sigma, then apply the rule without smoothing
            if sigma not in smoothed:
                smoothed[sigma] = np.stack([smooth_heatmap(h, sigma=sigma) for h in heat])
            params = _params_of(label) | {"sigma": 0.0}
            from cxrmtl.localize.localization import peak_boxes

            preds = [peak_boxes(h, **params) for h in smoothed[sigma]]
        else:
            preds = [fn(h) for h in heat]
        loc = [LocalizationCase(image=p.image, finding=p.finding, pred=b, gt=p.gt) for p, b in zip(cases, preds,
                                                                                                  strict=True)]
        a = evaluate_localization(loc, kind="iobb", thresholds=(T_IOBB,)).set_index("finding")
        u = evaluate_localization(loc, kind="iou", thresholds=(T_IOU,)).set_index("finding")
        out[label] = {"acc": float(a["accuracy"].mean()), "afp": float(a["afp"].mean()),
                      "iou": float(u["accuracy"].mean()), "boxes": float(np.mean([len(b) for b in preds])),
                      "per": a[["accuracy", "afp", "cases"]]}
    return out


def _sigma_of(label: str) -> float | None:
    if label == "peak":
        from cxrmtl import labels

        return labels.LOC_PEAK_SIGMA
    return _params_of(label)["sigma"] if label.startswith("peak(") else None


def _params_of(label: str) -> dict:
    if label == "peak":
        from cxrmtl import labels

        return {"level": labels.LOC_PEAK_LEVEL, "keep": labels.LOC_PEAK_KEEP, "max_boxes": labels.LOC_PEAK_MAX_BOXES,
                "min_area": labels.LOC_PEAK_MIN_AREA, "sigma": labels.LOC_PEAK_SIGMA}
    keys = {"s": "sigma", "l": "level", "k": "keep", "K": "max_boxes", "a": "min_area"}
    pairs = (kv.split("=") for kv in label[len("peak(") : -1].split(","))
    return {keys[k]: (int(v) if k == "K" else float(v)) for k, v in pairs}


def choose(scored: dict[str, dict], *, afp_limit: float = 1.0) -> str:
    """The rule with the best mean accuracy among those under ``afp_limit`` false boxes per case (ties: fewer FP)."""
    ok = [k for k, v in scored.items() if v["afp"] < afp_limit] or list(scored)
    return max(ok, key=lambda k: (round(scored[k]["acc"], 6), -scored[k]["afp"]))


def fmt(entry: dict) -> str:
    return f"acc {entry['acc']:.3f} AFP {entry['afp']:.2f} IoU>{T_IOU} {entry['iou']:.3f}"


def pointing(heat: np.ndarray, cases) -> float:
    """Mean over the findings of the pointing-game hit rate on the raw maps."""
    from cxrmtl.localize.localization import LocalizationCase, heatmap_peak, pointing_game

    loc = [LocalizationCase(image=p.image, finding=p.finding, pred=np.zeros((0, 4)), gt=p.gt, peak=heatmap_peak(h))
           for p, h in zip(cases, heat, strict=True)]
    return float(pointing_game(loc)["hit_rate"].mean())


def tables(results, rules, report, *, split: str) -> list[str]:
    """Markdown: per (method, layer) on the report split, Wang's rule, the default rule and the rule chosen on the
    select split; then the best settings on the select split with their report numbers."""
    findings = list(results[0][3]["report"]["wang"]["per"].index)
    head = ("| method | layer | map | rule | mean acc T(IoBB)=0.5 | mean AFP | acc T(IoU)=0.3 | boxes/case | "
            "pointing | " + " | ".join(f"{f} acc (AFP)" for f in findings) + " | CAM s |")
    lines = [f"## Split `{split}` per (method, layer): Wang's rule, the default (`peak`), "
             "and the peak parameters chosen on the select split", "", head, "|---" * (10 + len(findings)) + "|"]
    for method, layer, maps, scored in results:
        point = pointing(maps["report"].heat, report)
        best = choose(scored["select"])
        for rule in dict.fromkeys(["wang", "peak", best]):
            e = scored["report"][rule]
            cells = " | ".join(f"{e['per'].loc[f, 'accuracy']:.2f} ({e['per'].loc[f, 'afp']:.1f})"
                               if f in e["per"].index else "-" for f in findings)
            lines.append(f"| {method} | {layer} | {maps['report'].side}x{maps['report'].side} | `{rule}` | "
                         f"{e['acc']:.3f} | {e['afp']:.2f} | {e['iou']:.3f} | {e['boxes']:.2f} | {point:.3f} | "
                         f"{cells} | {maps['report'].seconds:.0f} |")
    ranked = sorted(((m, la, r, s["select"][r], s["report"][r]) for m, la, _, s in results for r in rules),
                    key=lambda t: (-(t[3]["afp"] < 1.0), -t[3]["acc"], t[3]["afp"]))
    lines += ["", "## Best 25 (method, layer, rule) on the select split (AFP < 1 first), with the report split",
              "", "| method | layer | rule | select acc | select AFP | report acc | report AFP | report IoU>0.3 |",
              "|---|---|---|---|---|---|---|---|"]
    for m, la, r, s, t in ranked[:25]:
        lines.append(f"| {m} | {la} | `{r}` | {s['acc']:.3f} | {s['afp']:.2f} | {t['acc']:.3f} | {t['afp']:.2f} | "
                     f"{t['iou']:.3f} |")
    return lines


def write_csv(results, path: Path, *, run: Path, select, report) -> None:
    """One row per (method, layer, rule, split): mean accuracy, AFP, IoU accuracy, boxes per case, pointing."""
    import pandas as pd

    rows = []
    for method, layer, maps, scored in results:
        for split, cases in (("select", select), ("report", report)):
            point = pointing(maps[split].heat, cases)
            rows += [{"run": str(run), "method": method, "layer": layer, "rule": rule, "split": split,
                      "acc": e["acc"], "afp": e["afp"], "iou": e["iou"], "boxes": e["boxes"], "pointing": point}
                     for rule, e in scored[split].items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)


def combine(paths: list[Path], *, top: int = 20) -> str:
    """Markdown: the (method, layer, rule) settings ranked by their mean select-split accuracy over the runs among
    those under 1 false box per case in every run, with each run's select and report numbers."""
    import pandas as pd

    frame = pd.concat([pd.read_csv(p) for p in paths])
    runs = list(dict.fromkeys(frame["run"]))
    wide = frame.pivot_table(index=["method", "layer", "rule"], columns=["split", "run"], values=["acc", "afp"])
    ok = (wide["afp"]["select"] < 1.0).all(axis=1)
    score = wide["acc"]["select"].mean(axis=1)
    order = score[ok].sort_values(ascending=False).index[:top]
    head = ("| method | layer | rule | mean select acc | " + " | ".join(
        f"run {k + 1}: select acc (AFP) | run {k + 1}: test acc (AFP)" for k in range(len(runs))) + " |")
    lines = [f"Runs: {', '.join(f'{k + 1} = `{r}`' for k, r in enumerate(runs))}.", "", head,
             "|---" * (4 + 2 * len(runs)) + "|"]
    for key in [*order, *(k for k in wide.index if k[2] == "wang" and k not in order)]:
        cells = []
        for r in runs:
            for split in ("select", "report"):
                cells.append(f"{wide.loc[key, ('acc', split, r)]:.3f} ({wide.loc[key, ('afp', split, r)]:.2f})")
        lines.append(f"| {key[0]} | {key[1]} | `{key[2]}` | {score[key]:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def auroc_check(loaded, index, cache, *, split: str, layers: list[str]) -> str:
    """Mean findings AUROC on ``split`` of the run as trained and of each output-stride variant asked for: a
    dilated backbone is only worth a CAM if it still classifies."""
    import torch
    from sklearn.metrics import roc_auc_score

    from cxrmtl.data.loader import normalize

    rows = index.rows(split)
    cache_rows = cache.rows_for(index.table["image"].to_numpy()[rows])
    keep = cache_rows >= 0
    from cxrmtl import labels

    outputs = list(loaded.labels["findings"])
    y = index.findings[rows][keep][:, [labels.FINDING_INDEX[f] for f in outputs]]
    d = loaded.config.data
    variants = {"as trained": loaded.model}
    for layer in layers:
        if layer.startswith("os"):
            stride = int(layer[2:].split("/", 1)[0])
            variants[f"output_stride={stride}"] = dilated(loaded.model, output_stride=stride)
    out = []
    for name, model in variants.items():
        logits = []
        with torch.no_grad():
            for start in range(0, int(keep.sum()), 64):
                idx = cache_rows[keep][start : start + 64]
                x = normalize(torch.from_numpy(np.stack([np.asarray(cache.images[i]) for i in idx])).unsqueeze(1),
                              mean=d.pixel_mean, std=d.pixel_std)
                logits.append(model.eval()(x)["findings"].numpy())
        scores = np.concatenate(logits)
        aucs = [roc_auc_score(y[:, j], scores[:, j]) for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
        out.append(f"{name} {np.mean(aucs):.3f}")
    return f"Findings mean AUROC on {split} ({', '.join(out)}).\n"


def picture(loaded, cache, cases, *, rows: list[tuple[str, str, str]], out: Path, per_finding: int = 1) -> None:
    """One row of overlays per (method, layer, rule): the first case of each finding, same cases in every row."""
    import cv2

    from cxrmtl.localize.gallery import render_overlay
    from cxrmtl.localize.localization import box_rule, iobb

    chosen, seen = [], {}
    for p in cases:
        if seen.get(p.finding, 0) < per_finding:
            chosen.append(p)
            seen[p.finding] = seen.get(p.finding, 0) + 1
    pixels = [np.asarray(cache.images[p.cache_row]) for p in chosen]
    strips = []
    for method, layer, rule in rows:
        heat = cam_maps(loaded, cache, chosen, method=method, layer=layer).heat
        tiles = []
        for p, image, h in zip(chosen, pixels, heat, strict=True):
            pred = box_rule(rule).boxes(h)
            matched = list(iobb(pred, p.gt).max(axis=1) > T_IOBB) if len(pred) else []
            tile = render_overlay(image, h, gt=p.gt, pred=pred, matched=matched, title=p.finding[:12])
            tiles.append(cv2.resize(tile, (160, 160), interpolation=cv2.INTER_AREA))
        label = np.zeros((160, 96, 3), np.uint8)
        for k, text in enumerate((method, layer.replace("backbone.", ""), f"rule {rule}")):
            cv2.putText(label, text, (4, 120 + 14 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1,
                        cv2.LINE_AA)
        strips.append(np.hstack([label, *tiles]))
    out.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image  # a 128-colour palette keeps the picture small enough for docs/

    rgb = cv2.cvtColor(np.vstack(strips), cv2.COLOR_BGR2RGB)
    Image.fromarray(rgb).quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


if __name__ == "__main__":
    main()
