"""Notebook 01's accuracy table: clean, PGD and AutoAttack-APGD accuracy of every model of a profile.

Trained models carry clean/PGD test accuracy in their meta (computed at the end of training);
external checkpoints (lib/zoo.py) are evaluated here with the same `train.evaluate`. The stronger
APGD-CE + APGD-T number (lib.attacks.apgd) is computed for every model on the first
`eval.apgd.images` test images, with PGD on the same images beside it, and cached in
runs/<profile>/robustness/<key>-<config hash>-<setting hash>.json.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from lib import attacks, data, models, profiles, train
from lib.results import write_json


def apgd_settings(profile: dict) -> dict | None:
    """The profile's `eval.apgd` section merged with the threat model of `eval`; None when absent/null."""
    ev = profile["eval"]
    if not ev.get("apgd"):
        return None
    return {"norm": ev["norm"], "eps": ev["eps"], "step_size": ev["step_size"], "pgd_steps": ev["steps"],
            "seed": profile.get("seed", 0), "images": None, "steps": 50, "targets": 9, "restarts": 1,
            "batch_size": 500, **ev["apgd"]}


def evaluate(model, ds, settings: dict, *, device="cpu", progress: bool = False) -> dict:
    """PGD and APGD-CE+APGD-T accuracy (%) on the first settings['images'] images of `ds`, batch by batch.

    apgd_acc counts an image as robust only if APGD-CE and APGD-T both fail on it (AutoAttack's rule);
    pgd_acc is our PGD (lib.attacks.pgd) on the same images, for a like-for-like column.
    """
    n = len(ds) if settings["images"] is None else min(len(ds), settings["images"])
    gen = torch.Generator(device=device).manual_seed(settings["seed"])
    counts = {"clean": 0, "pgd": 0, "apgd": 0}
    t0 = time.time()
    for start in range(0, n, settings["batch_size"]):
        x, y = ds.batch(torch.arange(start, min(n, start + settings["batch_size"])), device)
        xp = attacks.pgd(model, x, y, eps=settings["eps"], step_size=settings["step_size"],
                         steps=settings["pgd_steps"], norm=settings["norm"], generator=gen)
        xa = attacks.apgd(model, x, y, eps=settings["eps"], norm=settings["norm"], steps=settings["steps"],
                          targets=settings["targets"], restarts=settings["restarts"], seed=settings["seed"] + start)
        with torch.no_grad(), models.eval_mode(model):
            for name, xs in (("clean", x), ("pgd", xp), ("apgd", xa)):
                counts[name] += (model(xs).argmax(1) == y).sum().item()
        if progress:
            print(f"  {start + len(y)}/{n} images, {time.time() - t0:.0f} s")
    return {"clean_acc_apgd_images": 100.0 * counts["clean"] / n, "pgd_acc_apgd_images": 100.0 * counts["pgd"] / n,
            "apgd_acc": 100.0 * counts["apgd"] / n, "apgd_images": n, "apgd_seconds": time.time() - t0}


def model_row(profile: dict, key: str, model, run_dir, *, device="cpu", data_root="data",
              progress: bool = False) -> dict:
    """One table row: clean/PGD test accuracy (meta, or evaluated for an external model) and APGD."""
    meta, ev = model.meta, profile["eval"]
    cfg = {**profiles.model_config(profile, key), "sha256": meta.get("sha256")}  # a replaced file re-evaluates
    row = {"model": key}
    settings = apgd_settings(profile)
    test = None
    if meta.get("external") or settings:
        test = data.load_for(profile, "test", data_root)
    if meta.get("external"):
        row.update(source=cfg["source"], mode="external", eps=None, lam=None)
        row.update(_cached(run_dir, key, cfg, {"test_images": ev.get("test_images"), **_threat(ev)},
                           lambda: _test_metrics(model, test, ev, device, progress)))
        row.update(best_epoch=None, train_min=None)
    else:
        m = meta["metrics"]
        row.update(source="trained", mode=cfg["mode"], eps=cfg["eps"] if cfg["mode"] == "pgd" else None,
                   lam=cfg["lam"] if cfg["mode"] == "gradnorm" else None, clean_acc=m["clean_acc"],
                   pgd_acc=m["pgd_acc"], test_images=m["test_images"], best_epoch=m["best_epoch"],
                   train_min=meta["train_seconds"] / 60)
    if settings:
        row.update(_cached(run_dir, key, cfg, settings,
                           lambda: evaluate(model, test, settings, device=device, progress=progress)))
    else:
        row.update(apgd_acc=None, apgd_images=None)
    paper = (profile.get("paper") or {}).get(key)
    if paper:
        row.update(paper_clean_acc=paper.get("clean_acc"), paper_pgd_acc=paper.get("pgd_acc"))
    return row


def accuracy_table(profile: dict, trained: dict, run_dir, *, device="cpu", data_root="data", progress=True):
    """A DataFrame with one `model_row` per model of `trained` (key -> model)."""
    import pandas as pd

    return pd.DataFrame([model_row(profile, k, m, run_dir, device=device, data_root=data_root, progress=progress)
                         for k, m in trained.items()])


def histories(trained: dict) -> dict:
    """Training curves of the models that were trained here (external checkpoints have none)."""
    return {k: m.meta["history"] for k, m in trained.items() if m.meta.get("history")}


def _threat(ev: dict) -> dict:
    return {k: ev[k] for k in ("norm", "eps", "step_size", "steps")}


def _test_metrics(model, test, ev: dict, device, progress: bool) -> dict:
    r = train.evaluate(model, test, eps=ev["eps"], step_size=ev["step_size"], steps=ev["steps"], norm=ev["norm"],
                       max_images=ev.get("test_images"), device=device, progress=progress)
    return {"clean_acc": r["clean_acc"], "pgd_acc": r["pgd_acc"], "test_images": r["n"]}


def _cached(run_dir, key: str, cfg: dict, settings: dict, compute) -> dict:
    """compute() once per (model config, settings); the JSON file is the cache."""
    path = Path(run_dir) / "robustness" / (f"{key}-{profiles.config_hash(cfg)}-"
                                           f"{profiles.config_hash({'settings': settings})}.json")
    if path.is_file():
        return json.loads(path.read_text())["result"]
    result = compute()
    write_json(path, {"model": key, "settings": settings, "result": result})
    return result


def summary(table, ev: dict) -> dict:
    """Notebook 01's metrics: every row by model key, and the robust − standard gaps (None if uncomputed)."""
    rows = table.set_index("model").astype(object).where(table.set_index("model").notna(), None)

    def gap(col, a="robust", b="standard"):
        x, y = rows.loc[a, col], rows.loc[b, col]
        return None if x is None or y is None else float(x) - float(y)

    return {"models": rows.to_dict("index"), "eval": ev, "robust_minus_standard_pgd": gap("pgd_acc"),
            "robust_minus_standard_apgd": gap("apgd_acc"),
            "standard_minus_robust_clean": gap("clean_acc", "standard", "robust")}
