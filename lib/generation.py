"""Notebooks 05 and 06: class-specific generation over the compared models, and the Fréchet distance of
the generated images to the test set in several feature spaces (Boychev 2023 §2.3.2, §2.5, Tables 2/5).

Seeds come from class-conditional normals fitted on `generation.seeds_from` (train by default; test
on the paper profiles, as the reference code). The optimisers live in `lib.visualize`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from lib import fid, visualize
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
             fake_relu: bool = True) -> dict:
    """key -> images (N,C,H,W) in [0,1] on the CPU: each model maximises the class logit y from the same seeds."""
    return {key: visualize.generate_class_images(
        net, seeds.to(device), y.to(device), eps=g["eps"], step_size=g["step_size"], steps=g["steps"],
        batch_size=g.get("batch_size"), fake_relu=fake_relu, progress=False).cpu() for key, net in nets.items()}


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
    """Fréchet distances of image sets (real, seeds, each model) to the test set, per feature space."""

    spaces: dict                                        # name -> fid.describe(extractor)
    sets: list
    per_seed: dict = field(default_factory=dict)        # space -> set -> [FD per seed]
    accuracy: dict = field(default_factory=dict)        # space -> set -> [% classified as y per seed] or None
    per_class: dict = field(default_factory=dict)       # space -> set -> (K,) mean over seeds (NaN: not computed)
    per_class_reason: dict = field(default_factory=dict)  # space -> None or why per-class FD is not computed
    n_per_set: int = 0


def fd_study(nets: dict, extractors: dict, train, test, fsec: dict, g: dict, *,
             device="cpu", fake_relu: bool = True, batch_size: int = 500) -> FDStudy:
    """For each seed in fsec["seeds"]: a class-balanced train draw (real), fsec["per_class"] seeds per class
    (normals fitted on g["seeds_from"]), and each model's generations from those seeds; their FD to `test` in
    every feature space,
    each extractor's accuracy on them (domain classifiers only), and per-class FD where `fid.per_class_fd`'s
    rule allows."""
    sets = ["real", "seeds", *nets]
    normals = fit_normals(train, test, g)
    study = FDStudy({n: fid.describe(e) for n, e in extractors.items()}, sets)
    ref = {n: fid.activations(test, e, batch_size, device=device, progress=False) for n, e in extractors.items()}
    ref_y = test.labels.numpy()
    classes = range(len(test.classes))
    per_cls = {n: {s: [] for s in sets} for n in extractors}
    for n in extractors:
        study.per_seed[n] = {s: [] for s in sets}
        study.accuracy[n] = {s: [] for s in sets}
    for seed in fsec["seeds"]:
        idx = visualize.balanced_indices(train, fsec["per_class"], seed=seed)
        seeds, y = visualize.class_seed_set(train, fsec["per_class"], seed=seed, normals=normals)
        images = {"real": (train.batch(idx)[0], train.labels[idx]), "seeds": (seeds, y)}
        images.update({k: (v, y) for k, v in generate(nets, seeds, y, g, device=device, fake_relu=fake_relu).items()})
        for n, ext in extractors.items():
            for s, (x, yy) in images.items():
                acts = fid.activations(x, ext, batch_size, device=device, progress=False)
                study.per_seed[n][s].append(fid.frechet_of(acts, ref[n]))
                study.accuracy[n][s].append(fid.accuracy(ext, x, yy, device=device))
                values, reason = fid.per_class_fd(acts, yy.numpy(), ref[n], ref_y, classes)
                per_cls[n][s].append(values)
                study.per_class_reason[n] = reason
        study.n_per_set = len(y)
    study.per_class = {n: {s: np.mean(v, axis=0) for s, v in d.items()} for n, d in per_cls.items()}
    return study


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
    """Notebook 06's metric keys. fd_spaces[space]: label, extractor, fd / fd_std / fd_per_seed / accuracy per
    set, per_class (or per_class_reason). fd, fd_std, fd_name, extractor: the primary (first) space's values."""
    primary = primary or next(iter(study.per_seed))
    spaces = {}
    for n, d in study.per_seed.items():
        acc = {s: (None if any(a is None for a in v) else float(np.mean(v))) for s, v in study.accuracy[n].items()}
        reason = study.per_class_reason.get(n)
        spaces[n] = {**study.spaces[n], "fd": {s: float(np.mean(v)) for s, v in d.items()},
                     "fd_std": {s: float(np.std(v)) for s, v in d.items()}, "fd_per_seed": d, "accuracy": acc,
                     "per_class": None if reason else {s: dict(zip(classes, v.tolist()))
                                                       for s, v in study.per_class[n].items()},
                     "per_class_reason": reason}
    p = spaces[primary]
    return {"fd_spaces": spaces, "fd_primary": primary, "fd_name": p["label"], "extractor": p["extractor"],
            "fd": p["fd"], "fd_std": p["fd_std"], "sets": study.sets, "models": study.sets[2:],
            "n_per_set": study.n_per_set}
