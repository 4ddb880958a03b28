"""Notebooks 05 and 06: class-specific generation over the compared models, and the Fréchet distance of
the generated images to the test set in several feature spaces (Boychev 2023 §2.3.2, §2.5, Tables 2/5).

Seeds come from class-conditional normals fitted on `generation.seeds_from` (train by default; test
on the paper profiles, as the reference code). The optimisers live in `lib.visualize`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from lib import fid, visualize
from lib import workers as pool
from lib.checkpoints import check_finite

SEED_SPLITS = ("train", "test")


def seed_split(g: dict) -> str:
    """The split class normals are fitted on (generation.seeds_from), checked."""
    split = g.get("seeds_from", "train")
    if split not in SEED_SPLITS:
        raise ValueError(f"visualize.generation.seeds_from must be train or test, got {split!r}")
    return split


def fit_normals(train, test, g: dict) -> dict:
    """Class normals (`visualize.fit_class_normals`) on the split g["seeds_from"] names."""
    ds = train if seed_split(g) == "train" else test
    return visualize.fit_class_normals(ds, grain=g["grain"], shrinkage=g["shrinkage"], max_images=g.get("max_images"))


def class_seeds(train, test, g: dict, per_class: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """per_class seeds of every class from normals fitted on g["seeds_from"]: (K·per_class,C,H,W) in [0,1]
    and their classes (K·per_class,), grouped by class."""
    return visualize.class_seed_set(train, per_class, seed=seed, normals=fit_normals(train, test, g))


def generate(nets: dict, seeds: torch.Tensor, y: torch.Tensor, g: dict, *, device="cpu",
             fake_relu: bool = True, workers="auto") -> dict:
    """key -> images (N,C,H,W) in [0,1] on the CPU: each model maximises the class logit y from the same seeds,
    side by side in `workers` processes on a multi-core CPU (lib.workers)."""
    runs = trajectories(nets, seeds, y, g, [g["steps"]], device=device, fake_relu=fake_relu, workers=workers)
    return {key: r[g["steps"]] for key, r in runs.items()}


def generation_table(nets: dict, seeds: torch.Tensor, generated: dict, y: torch.Tensor, *,
                     batch_size: int | None = None) -> pd.DataFrame:
    """Per model: target logit at the seed and after generation, % classified as the target by the model
    itself and by each other compared model (do the images carry the class beyond their own features?),
    and the mean L2 change."""
    rows = {}
    for key, net in nets.items():
        dev = next(net.parameters()).device
        before, _ = visualize.class_logits(net, seeds.to(dev), y, batch_size=batch_size)
        after, _ = visualize.class_logits(net, generated[key].to(dev), y, batch_size=batch_size)
        check_finite(torch.cat([before, after]), "target logits in generation_table", net)
        row = {"target logit (seed)": before.mean().item(), "target logit (generated)": after.mean().item(),
               "L2 change": (generated[key] - seeds.cpu()).flatten(1).norm(dim=1).mean().item()}
        for judge, jnet in nets.items():  # the diagonal is the model's own verdict
            _, pred = visualize.class_logits(jnet, generated[key].to(dev), y, batch_size=batch_size)
            row[f"classified as target by {judge} (%)"] = 100 * (pred.cpu() == y.cpu()).float().mean().item()
        rows[key] = row
    return pd.DataFrame(rows).T


def class_grid(seeds: torch.Tensor, generated: dict, n_classes: int, show: list, classes: list) -> dict:
    """`plotting.image_grid` data: one row per shown class, its seeds then each model's images."""
    per = len(seeds) // n_classes
    parts = [seeds.cpu()] + list(generated.values())
    grid = torch.cat([p.view(n_classes, per, *p.shape[1:]) for p in parts], dim=1)
    cols = [f"{name} {j + 1}" for name in ["seed", *generated] for j in range(per)]
    return dict(images=grid[show].numpy(), row_labels=[classes[c] for c in show], col_labels=cols,
                title="class-specific generation: seeds, then each model's images from them")


@dataclass
class FDStudy:
    """Fréchet distances of image sets (real, seeds, each model) to the test set, per feature space, at the
    profile's generation budget; and, along the same generation runs, every model's FD / KID / saturation at
    each step count of the budget grid."""

    spaces: dict                                        # name -> fid.describe(extractor)
    sets: list
    per_seed: dict = field(default_factory=dict)        # space -> set -> [FD per seed]
    accuracy: dict = field(default_factory=dict)        # space -> set -> [% classified as y per seed] or None
    per_class: dict = field(default_factory=dict)       # space -> set -> (K,) mean over seeds (NaN: not computed)
    per_class_reason: dict = field(default_factory=dict)  # space -> None or why per-class FD is not computed
    n_per_set: int = 0
    grid: list = field(default_factory=list)            # step counts measured along the generation runs
    budget: dict = field(default_factory=dict)          # space -> model -> step -> {fd, kid, ..., acc}
    kid: dict = field(default_factory=dict)             # space -> set -> fid.kid of the seeds pooled


def budget_grid(fsec: dict, g: dict) -> list[int]:
    """The step counts of the budget curve: fid.budget_steps (default 0, 5, 10, 20, 40) up to the profile's
    generation.steps, plus generation.steps itself (the paper's budget scaled to the dataset)."""
    grid = {int(t) for t in fsec.get("budget_steps", (0, 5, 10, 20, 40)) if 0 <= int(t) <= g["steps"]}
    return sorted(grid | {int(g["steps"])})


def saturation(x: torch.Tensor) -> dict:
    """Share of pixels ≤ 0.01 and ≥ 0.99, and the mean L2 image norm, of images x (N,C,H,W) in [0,1]."""
    x = x.double()
    return {"sat_low": float((x <= 0.01).double().mean()), "sat_high": float((x >= 0.99).double().mean()),
            "norm": float(x.flatten(1).norm(dim=1).mean())}


def fd_study(nets: dict, extractors: dict, train, test, fsec: dict, g: dict, *,
             device="cpu", fake_relu: bool = True, batch_size: int = 500, workers="auto") -> FDStudy:
    """For each seed in fsec["seeds"]: a class-balanced train draw (real), fsec["per_class"] seeds per class
    (normals fitted on g["seeds_from"]), and each model's generations from those seeds, ONE run per model
    snapshotted at every step of `budget_grid`; their FD to `test` in every feature space at each step,
    each extractor's accuracy on them (domain classifiers only), per-class FD where `fid.per_class_fd`'s
    rule allows (at g["steps"]), and KID (fsec["kid"]: subsets, subset_size) over the seeds pooled."""
    sets, grid, kid_opts = ["real", "seeds", *nets], budget_grid(fsec, g), fsec.get("kid") or {}
    normals = fit_normals(train, test, g)
    study = FDStudy({n: fid.describe(e) for n, e in extractors.items()}, sets, grid=grid)
    ref = {n: fid.activations(test, e, batch_size, device=device, progress=False) for n, e in extractors.items()}
    ref_y = test.labels.numpy()
    classes = range(len(test.classes))
    per_cls = {n: {s: [] for s in sets} for n in extractors}
    pooled = {n: {s: [] for s in [*sets, *[(k, t) for k in nets for t in grid]]} for n in extractors}
    points = {n: {k: {t: [] for t in grid} for k in nets} for n in extractors}
    for n in extractors:
        study.per_seed[n] = {s: [] for s in sets}
        study.accuracy[n] = {s: [] for s in sets}
    memo, kid_memo = {}, {}

    def measure(n, x, labels):  # step 0 of every run is the seed set, the profile's step the generated set:
        key = (n, _digest(x), _digest(labels))  # each distinct set is measured once per feature space
        if key not in memo:
            acts = fid.activations(x, extractors[n], batch_size, device=device, progress=False)
            memo[key] = (acts, fid.frechet_of(acts, ref[n]), fid.accuracy(extractors[n], x, labels, device=device))
        return memo[key]

    def kid_of(n, parts):  # the same sets again: the same activation arrays
        key = (n, *map(id, parts))
        if key not in kid_memo:
            kid_memo[key] = fid.kid(np.concatenate(parts), ref[n], **kid_opts)
        return kid_memo[key]
    for seed in fsec["seeds"]:
        idx = visualize.balanced_indices(train, fsec["per_class"], seed=seed)
        seeds, y = visualize.class_seed_set(train, fsec["per_class"], seed=seed, normals=normals)
        runs = trajectories(nets, seeds, y, g, grid, device=device, fake_relu=fake_relu, workers=workers)
        images = {"real": (train.batch(idx)[0], train.labels[idx]), "seeds": (seeds, y)}
        images.update({k: (r[g["steps"]], y) for k, r in runs.items()})
        for n in extractors:
            for s, (x, yy) in images.items():
                acts, fd_, acc = measure(n, x, yy)
                pooled[n][s].append(acts)
                study.per_seed[n][s].append(fd_)
                study.accuracy[n][s].append(acc)
                values, reason = fid.per_class_fd(acts, yy.numpy(), ref[n], ref_y, classes)
                per_cls[n][s].append(values)
                study.per_class_reason[n] = reason
            for k, r in runs.items():
                for t, x in r.items():
                    acts, fd_, acc = measure(n, x, y)
                    pooled[n][(k, t)].append(acts)
                    points[n][k][t].append({"fd": fd_, **saturation(x), "acc": acc})
        study.n_per_set = len(y)
    study.per_class = {n: {s: np.mean(v, axis=0) for s, v in d.items()} for n, d in per_cls.items()}
    kid = {n: {s: kid_of(n, v) for s, v in d.items()} for n, d in pooled.items()}
    study.kid = {n: {s: kid[n][s] for s in sets} for n in extractors}
    study.budget = {n: {k: {t: {**_mean_rows(points[n][k][t]), **kid[n][(k, t)]} for t in grid} for k in nets}
                    for n in extractors}
    return study


def _digest(t) -> str:
    return hashlib.sha1(np.ascontiguousarray(torch.as_tensor(t).cpu().numpy()).tobytes()).hexdigest()


def trajectories(nets: dict, seeds: torch.Tensor, y: torch.Tensor, g: dict, grid: list, *, device="cpu",
                 fake_relu: bool = True, workers="auto") -> dict:
    """key -> {steps: images (N,C,H,W) in [0,1] on the CPU}: one generation run per model, snapshotted at grid,
    side by side in `workers` processes on a multi-core CPU (lib.workers)."""
    return pool.map_models(trajectory, nets, seeds.to(device), y.to(device), g, grid, fake_relu, workers=workers,
                           device=device, progress=False)


def trajectory(net, seeds: torch.Tensor, y: torch.Tensor, g: dict, grid: list, fake_relu: bool = True) -> dict:
    """One model's generation run from `seeds` towards classes y: {steps: images on the CPU} at every grid step."""
    return {t: v.cpu() for t, v in visualize.generate_class_images(
        net, seeds, y, eps=g["eps"], step_size=g["step_size"], steps=g["steps"], batch_size=g.get("batch_size"),
        fake_relu=fake_relu, progress=False, at=grid).items()}


def _mean_rows(rows: list) -> dict:
    """Mean over seeds of each field (None stays None: Inception has no accuracy)."""
    return {f: (None if any(r[f] is None for r in rows) else float(np.mean([r[f] for r in rows]))) for f in rows[0]}


def flip_steps(budget: dict, first: str, last: str) -> list[int]:
    """Step counts at which the order of FD(first) and FD(last) differs from the previous step's order
    (ties, e.g. at 0 steps where both are the seeds, carry no order). budget: model -> step -> {"fd"}."""
    flips, prev = [], 0
    for t in sorted(budget[first], key=int):
        sign = int(np.sign(budget[first][t]["fd"] - budget[last][t]["fd"]))
        if sign and prev and sign != prev:
            flips.append(int(t))
        prev = sign or prev
    return flips


def fd_table(study: FDStudy, paper: dict | None = None) -> pd.DataFrame:
    """Rows: image sets; per feature space its mean ± std over seeds and the extractor's accuracy on the set."""
    cols = {}
    for n, d in study.per_seed.items():
        label = f"{n}: {study.spaces[n]['label']}"
        cols[label] = {s: np.mean(v) for s, v in d.items()}
        cols[f"{n}: std"] = {s: np.std(v) for s, v in d.items()}
        if all(a is not None for v in study.accuracy[n].values() for a in v):  # not Inception
            cols[f"{n}: accuracy (%)"] = {s: np.mean(v) for s, v in study.accuracy[n].items()}
    table = pd.DataFrame(cols).loc[study.sets]
    if paper:
        table["paper (FID)"] = pd.Series(paper)
    return table


def bars(study: FDStudy) -> dict:
    """`plotting.fd_per_class` data drawing grouped bars: x = feature space, hue = image set (mean over seeds)."""
    names = list(study.per_seed)
    values = np.array([[np.mean(study.per_seed[n][s]) for n in names] for s in study.sets])
    return dict(classes=[f"{n} ({study.spaces[n]['label']})" for n in names], name=study.sets, values=values,
                label="Fréchet distance to test (per feature space)")


def per_class_table(study: FDStudy, classes: list) -> pd.DataFrame:
    """Per class and set, for each feature space where per-class FD is computed; else the reason."""
    frames = {}
    for n, d in study.per_class.items():
        if study.per_class_reason.get(n):
            frames[n] = pd.DataFrame({"per-class FD": study.per_class_reason[n]}, index=["all classes"])
        else:
            frames[n] = pd.DataFrame(d, index=classes)
    return pd.concat(frames, axis=1)


def summary_metrics(study: FDStudy, classes: list, primary: str | None = None) -> dict:
    """Notebook 06's metric keys. fd_spaces[space]: label, extractor, fd / fd_std / fd_per_seed / accuracy / kid
    per set, per_class (or per_class_reason), at the profile's budget. fd, fd_std, fd_name, extractor: the primary
    (first) space's values. fd_budget[space][model][steps]: fd, kid, kid_lo, kid_hi, sat_low, sat_high, norm, acc;
    fd_flip_steps[space]: steps where the order of the first and last model changes. per_unit["fd.<space>"]:
    {"<model>@0": [FD per generation seed]} at the profile's budget, and units (the seed-0 models)."""
    primary = primary or next(iter(study.per_seed))
    spaces = {}
    for n, d in study.per_seed.items():
        acc = {s: (None if any(a is None for a in v) else float(np.mean(v))) for s, v in study.accuracy[n].items()}
        reason = study.per_class_reason.get(n)
        spaces[n] = {**study.spaces[n], "fd": {s: float(np.mean(v)) for s, v in d.items()},
                     "fd_std": {s: float(np.std(v)) for s, v in d.items()}, "fd_per_seed": d, "accuracy": acc,
                     "kid": study.kid.get(n),
                     "per_class": None if reason else {s: dict(zip(classes, v.tolist()))
                                                       for s, v in study.per_class[n].items()},
                     "per_class_reason": reason}
    p, models = spaces[primary], study.sets[2:]
    budget = {n: {k: {str(t): v for t, v in d.items()} for k, d in b.items()} for n, b in study.budget.items()}
    flips = {n: flip_steps(b, models[0], models[-1]) for n, b in budget.items()} if len(models) > 1 else {}
    return {"fd_spaces": spaces, "fd_primary": primary, "fd_name": p["label"], "extractor": p["extractor"],
            "fd": p["fd"], "fd_std": p["fd_std"], "sets": study.sets, "models": models,
            "n_per_set": study.n_per_set, "budget_steps": study.grid, "fd_budget": budget, "fd_flip_steps": flips,
            "per_unit": {f"fd.{n}": {f"{k}@0": study.per_seed[n][k] for k in models} for n in study.per_seed},
            "units": {f"{k}@0": {"model": k, "seed": 0} for k in models}}


def budget_curves(study: FDStudy) -> dict:
    """`plotting.fd_vs_steps` data: per space and model FD and KID (with its interval) against steps, and the
    real-image floor of each space."""
    b = study.budget
    field = {f: {n: {k: [d[t][f] for t in study.grid] for k, d in b[n].items()} for n in b}
             for f in ("fd", "kid", "kid_lo", "kid_hi", "sat_high")}
    return dict(steps=study.grid, labels={n: f"{n}: {study.spaces[n]['label']}" for n in b},
                floor={n: float(np.mean(study.per_seed[n]["real"])) for n in b}, **field)


def budget_table(study: FDStudy) -> pd.DataFrame:
    """Rows (space, model, steps): FD, KID with its interval, saturation, mean norm, the extractor's accuracy."""
    rows = {(n, k, t): v for n, b in study.budget.items() for k, d in b.items() for t, v in d.items()}
    return pd.DataFrame(rows).T.rename_axis(["space", "model", "steps"])
