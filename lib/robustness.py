"""Notebook 01's accuracy table: clean, PGD and AutoAttack-APGD accuracy of every model of a profile.

Trained models carry clean/PGD test accuracy in their meta (computed at the end of training);
external checkpoints (lib/zoo.py) are evaluated here with the same `train.evaluate`. The stronger
APGD-CE + APGD-T number (lib.attacks.apgd) is computed for every model (or the recipes that
`eval.apgd.models` names) on the first `eval.apgd.images` test images, with PGD on the same images
beside it, and cached in runs/<profile>/robustness/<key>-<config hash>-<setting hash>.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from lib import attacks, data, models, profiles, stats, train, workers
from lib.results import write_json


def apgd_settings(profile: dict) -> dict | None:
    """The profile's `eval.apgd` section merged with the threat model of `eval`; None when absent/null."""
    ev = profile["eval"]
    if not ev.get("apgd"):
        return None
    unknown = sorted(set(ev["apgd"].get("models") or []) - set(profile["models"]))
    if unknown:
        raise ValueError(f"eval.apgd.models names {', '.join(unknown)}, which profile {profile['name']!r} does not "
                         f"define; use some of: {', '.join(profile['models'])}.")
    return {"norm": ev["norm"], "eps": ev["eps"], "step_size": ev["step_size"], "pgd_steps": ev["steps"],
            "seed": profile.get("seed", 0), "images": None, "steps": 50, "targets": 9, "restarts": 1,
            "batch_size": 500, **ev["apgd"]}


def evaluate(model, ds, settings: dict, *, device="cpu", progress: bool = False, known: dict | None = None) -> dict:
    """PGD and APGD-CE+APGD-T accuracy (%) on the first settings['images'] images of `ds`, batch by batch.

    apgd_acc counts an image as robust only if APGD-CE and APGD-T both fail on it (AutoAttack's rule);
    pgd_acc is our PGD (lib.attacks.pgd) on the same images, for a like-for-like column.
    known: the per-image clean/PGD 0/1 lists of the test evaluation (lib.train.evaluate: the first images of the
    same split, the same attack), read for these images instead of attacking them a second time.
    """
    n = len(ds) if settings["images"] is None else min(len(ds), settings["images"])
    reuse = known is not None and min(len(known["clean"]), len(known["pgd"])) >= n
    gen = torch.Generator(device=device).manual_seed(settings["seed"])
    correct = {"clean": [], "pgd": [], "apgd": []}
    t0 = time.time()
    for start in range(0, n, settings["batch_size"]):
        x, y = ds.batch(torch.arange(start, min(n, start + settings["batch_size"])), device)
        xs = {"apgd": attacks.apgd(model, x, y, eps=settings["eps"], norm=settings["norm"], steps=settings["steps"],
                                   targets=settings["targets"], restarts=settings["restarts"],
                                   seed=settings["seed"] + start)}
        if reuse:
            for name in ("clean", "pgd"):
                correct[name] += known[name][start:start + len(y)]
        else:
            xs.update(clean=x, pgd=attacks.pgd(model, x, y, eps=settings["eps"], step_size=settings["step_size"],
                                               steps=settings["pgd_steps"], norm=settings["norm"], generator=gen))
        with torch.no_grad(), models.eval_mode(model):
            for name, xa in xs.items():
                correct[name] += (model(xa).argmax(1) == y).int().tolist()
        if progress:
            print(f"  {start + len(y)}/{n} images, {time.time() - t0:.0f} s")
    acc = {name: 100.0 * sum(v) / n for name, v in correct.items()}
    return {"clean_acc_apgd_images": acc["clean"], "pgd_acc_apgd_images": acc["pgd"], "apgd_acc": acc["apgd"],
            "apgd_images": n, "apgd_seconds": time.time() - t0, "apgd_correct": correct["apgd"]}


def model_row(profile: dict, unit: str, model, run_dir, device="cpu", data_root="data",
              progress: bool = False) -> dict:
    """One table row of one unit ('robust@1'): clean/PGD test accuracy (meta, or evaluated for an external model),
    APGD, the selected epoch; per-image 0/1 lists under `correct` (clean, pgd) and `apgd_correct`."""
    meta, ev = model.meta, profile["eval"]
    key, seed = profiles.split_unit(unit)
    cfg = {**profiles.model_config(profile, key, seed), "sha256": meta.get("sha256")}  # a replaced file re-evaluates
    row = {"unit": unit, "model": key, "seed": seed}
    settings = apgd_settings(profile)
    attacked = settings.pop("models", None) if settings else None
    if attacked is not None and key not in attacked:
        settings = None  # eval.apgd.models leaves this recipe out
    test = None
    if meta.get("external") or settings:
        test = data.load_for(profile, "test", data_root)
    if meta.get("external"):
        row.update(source=cfg["source"], mode="external", eps=None, lam=None)
        row.update(_cached(run_dir, unit, cfg, {"test_images": ev.get("test_images"), **_threat(ev)},
                           lambda: _test_metrics(model, test, ev, device, progress)))
        row.update(best_epoch=None, train_min=None)
    else:
        m = meta["metrics"]
        row.update(source="trained", mode=cfg["mode"], eps=cfg["eps"] if cfg["mode"] == "pgd" else None,
                   lam=cfg["lam"] if cfg["mode"] == "gradnorm" else None, clean_acc=m["clean_acc"],
                   pgd_acc=m["pgd_acc"], test_images=m["test_images"], best_epoch=m["best_epoch"],
                   epochs=cfg["epochs"], select=cfg["select"], train_min=meta["train_seconds"] / 60,
                   correct=m.get("correct"))
    if settings:
        same = not meta.get("external") and _threat(meta["config"]["eval"]) == _threat(
            {**settings, "steps": settings["pgd_steps"]})  # the test evaluation's PGD is this column's: not run twice
        known = (meta["metrics"].get("correct") or None) if same else None
        row.update(_cached(run_dir, unit, cfg, {**settings, "pgd_from_test_eval": known is not None},
                           lambda: evaluate(model, test, settings, device=device, progress=progress, known=known)))
    else:
        row.update(apgd_acc=None, apgd_images=None)
    paper = (profile.get("paper") or {}).get(key)
    if paper:
        row.update(paper_clean_acc=paper.get("clean_acc"), paper_pgd_acc=paper.get("pgd_acc"))
    return row


def accuracy_rows(profile: dict, trained: dict, run_dir, *, device="cpu", data_root="data", progress=True) -> list:
    """One `model_row` per unit of `trained` (unit id -> model), side by side in the profile's `workers`."""
    units = list(trained)
    n = workers.count(profile.get("workers"), device, len(units))

    def done(i, row):
        if progress and n > 1 and row.get("apgd_acc") is not None:
            print(f"  {units[i]}: APGD {row['apgd_acc']:.1f} % on {row['apgd_images']} images")

    return workers.run(model_row, [(profile, u, trained[u], run_dir, device, data_root, progress and n == 1)
                                   for u in units], workers=n, on_done=done)


def accuracy_table(rows: list):
    """The rows as a DataFrame, one per unit, without the per-image lists."""
    import pandas as pd

    return pd.DataFrame([{k: v for k, v in r.items() if k not in ("correct", "apgd_correct")} for r in rows])


def histories(trained: dict) -> dict:
    """Training curves of the models that were trained here (external checkpoints have none)."""
    return {k: m.meta["history"] for k, m in trained.items() if m.meta.get("history")}


def _threat(ev: dict) -> dict:
    return {k: ev[k] for k in ("norm", "eps", "step_size", "steps")}


def _test_metrics(model, test, ev: dict, device, progress: bool) -> dict:
    r = train.evaluate(model, test, eps=ev["eps"], step_size=ev["step_size"], steps=ev["steps"], norm=ev["norm"],
                       max_images=ev.get("test_images"), device=device, progress=progress)
    return {"clean_acc": r["clean_acc"], "pgd_acc": r["pgd_acc"], "test_images": r["n"], "correct": r["correct"]}


def _cached(run_dir, key: str, cfg: dict, settings: dict, compute) -> dict:
    """compute() once per (model config, settings); the JSON file is the cache."""
    path = Path(run_dir) / "robustness" / (f"{key}-{profiles.config_hash(cfg)}-"
                                           f"{profiles.config_hash({'settings': settings})}.json")
    if path.is_file():
        return json.loads(path.read_text())["result"]
    result = compute()
    write_json(path, {"model": key, "settings": settings, "result": result})
    return result


def summary(rows: list, ev: dict) -> dict:
    """Notebook 01's metrics: every unit's row (`units`), the per-image 0/1 lists for the claims layer
    (`per_unit`: clean, pgd, apgd; image j is test image j for every unit) and the unit table (`units_meta`)."""
    per_unit = {"clean_acc": {}, "pgd_acc": {}, "apgd_acc": {}}
    for r in rows:
        correct = r.get("correct") or {}
        per_unit["clean_acc"][r["unit"]] = correct.get("clean")
        per_unit["pgd_acc"][r["unit"]] = correct.get("pgd")
        per_unit["apgd_acc"][r["unit"]] = r.get("apgd_correct")
    per_unit = {q: {u: None if v is None else [100.0 * c for c in v] for u, v in d.items()}
                for q, d in per_unit.items() if any(v is not None for v in d.values())}
    table = {r["unit"]: {k: v for k, v in r.items() if k not in ("correct", "apgd_correct")} for r in rows}
    return {"units": table, "per_unit": per_unit, "eval": ev}


def mean_image_norm(ds, max_images: int | None = None) -> float:
    """Mean L2 norm of the first `max_images` images of `ds` (pixels in [0, 1]): the scale ε is read against."""
    n = len(ds) if max_images is None else min(len(ds), max_images)
    x, _ = ds.batch(torch.arange(n), "cpu")
    return float(x.flatten(1).norm(dim=1).mean())


def recipe_table(metrics: dict, seed: int = 0):
    """Per recipe: mean [95 % interval] over its training seeds and test images (lib.stats.hierarchical) of clean,
    PGD and APGD accuracy, and every seed's selected epoch."""
    import pandas as pd

    cols = {}
    for q, per in metrics["per_unit"].items():
        table = stats.hierarchical(per, seed=seed).table()
        cols[q] = {r: f"{v['mean']:.1f} [{v['lo']:.1f}, {v['hi']:.1f}]" for r, v in table.items()}
        cols["seeds"] = {r: v["seeds"] for r, v in table.items()}
    epochs: dict = {}
    for row in metrics["units"].values():
        epochs.setdefault(row["model"], []).append(row.get("best_epoch"))
    cols["selected epochs"] = {r: ", ".join(str(e) for e in v) for r, v in epochs.items()}
    return pd.DataFrame(cols)
