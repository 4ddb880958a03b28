"""Notebook 04's computations: representation inversion over the compared models, its feature distances
(ours: mean per-pair L2; Boychev's Tables 3/6 statistic: one norm over three pairs), and direct
feature-visualisation panels. The optimisers themselves live in `lib.visualize`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from lib import fid, visualize
from lib import workers as pool

BOYCHEV_COLUMN = "Boychev statistic (one norm over 3 pairs)"
OURS_COLUMN = "ours: mean per-pair distance"


@dataclass
class Inversions:
    """x_src, x_targ: (M,C,H,W) in [0,1]; inverted[key]: (M,C,H,W); rel[key]: relative R distances (M,)
    of the source and the inverted image; group: consecutive pairs sharing one target (3 for `triple`)."""

    x_src: torch.Tensor
    x_targ: torch.Tensor
    inverted: dict
    rel: dict
    group: int


def invert_all(nets: dict, test, inv: dict, *, seed: int = 0, device="cpu", fake_relu: bool = True,
               workers="auto") -> Inversions:
    """Invert the same (source, target) pairs (`visualize.inversion_pairs` with inv["source"]) with every model,
    side by side in `workers` processes on a multi-core CPU (lib.workers)."""
    x_src, x_targ = visualize.inversion_pairs(test, inv["n"], source=inv["source"], seed=seed)
    x_src, x_targ = x_src.to(device), x_targ.to(device)
    n = pool.count(workers, device, 2 * len(nets))
    parts = 2 if n > 1 else 1  # each model's pairs in two jobs (the loss is per example): no worker idles at the end
    chunks, keys = torch.arange(len(x_src)).chunk(parts), list(nets)
    out = pool.run(invert_one, [(nets[k], x_src[i], x_targ[i], inv, fake_relu) for k in keys for i in chunks],
                   workers=n)
    got = {k: out[j * len(chunks):(j + 1) * len(chunks)] for j, k in enumerate(keys)}
    return Inversions(x_src.cpu(), x_targ.cpu(), {k: torch.cat([g[0] for g in v]) for k, v in got.items()},
                      {k: {s: torch.cat([g[1][s] for g in v]) for s in ("source", "inverted")} for k, v in got.items()},
                      3 if inv["source"] == "triple" else 1)


def invert_one(net, x_src, x_targ, inv: dict, fake_relu: bool = True) -> tuple[torch.Tensor, dict]:
    """One model's inversions of the pairs (CPU) and the relative distances to the targets before and after."""
    inverted = visualize.invert_representation(net, x_src, x_targ, eps=inv["eps"], step_size=inv["step_size"],
                                               steps=inv["steps"], batch_size=inv.get("batch_size"),
                                               fake_relu=fake_relu)
    with torch.no_grad():
        r_targ = net.features(x_targ)
        rel = {"source": visualize.relative_distance(net, x_src, r_targ).cpu(),
               "inverted": visualize.relative_distance(net, inverted, r_targ).cpu()}
    return inverted.cpu(), rel


def relative_table(res: Inversions) -> pd.DataFrame:
    """Mean relative representation distance ‖R(x) − R(x_targ)‖/‖R(x_targ)‖ before and after, per model."""
    return pd.DataFrame({k: {s: float(v.mean()) for s, v in r.items()} for k, r in res.rel.items()}).T


def figure_rows(res: Inversions, n_show: int) -> dict:
    """`plotting.image_grid` data: rows source, target and each model's inversion of the first n_show pairs."""
    rows = [res.x_src[:n_show], res.x_targ[:n_show]] + [v[:n_show] for v in res.inverted.values()]
    return dict(images=torch.stack(rows).numpy(), row_labels=["source", "target", *res.inverted],
                title="Representation inversion: source + δ with R(source + δ) ≈ R(target)")


def feature_distances(res: Inversions, extractor) -> dict:
    """{"pair": {row: (M,) L2 feature distance of target and image}, "boychev": {row: (M/3,)} or None}.
    Rows: "source" (the untouched source: the scale of an unrelated image) and every model."""
    images = {"source": res.x_src, **res.inverted}
    pair = {k: fid.feature_distance(res.x_targ, v, extractor) for k, v in images.items()}
    boy = None
    if res.group > 1:
        boy = {k: fid.group_distance(res.x_targ, v, extractor, res.group) for k, v in images.items()}
    return {"pair": pair, "boychev": boy}


def distance_table(dist: dict, paper: dict | None) -> pd.DataFrame:
    """Per row (source, models): Boychev's statistic (when the protocol has triples), ours, their spread,
    and the paper's value (which is Boychev's statistic)."""
    pair = dist["pair"]
    table = pd.DataFrame({OURS_COLUMN: {k: v.mean() for k, v in pair.items()},
                          "std (per pair)": {k: v.std() for k, v in pair.items()}})
    if dist["boychev"] is not None:
        table.insert(0, BOYCHEV_COLUMN, pd.Series({k: v.mean() for k, v in dist["boychev"].items()}))
        table["ratio Boychev / ours"] = table[BOYCHEV_COLUMN] / table[OURS_COLUMN]
    if paper:
        table["paper (Boychev statistic)"] = pd.Series(paper)
    return table


def feature_vis(nets: dict, train, test, fv: dict, *, seed: int = 0, device="cpu", fake_relu: bool = True) -> dict:
    """Direct feature visualisation for every model: the fv["n_coords"] highest-variance coordinates of R(x)
    over `test`, each maximised from fv["n_seeds"] seeds, beside its top-k / bottom-k test images.

    Seeds: fv["seeds"] "data" (a normal fitted to all train images, at fv["grain"]) or "noise" (0.5 + N/20);
    fv["pick"]: start each unit from the pool images where it is most active (`visualize.pick_seeds`),
    else from the first seeds of the pool. Returns {"grid": `plotting.image_grid` data, "metrics": per model}.
    """
    k, n_seeds, nc = fv["k"], fv["n_seeds"], fv["n_coords"]
    if fv.get("seeds", "data") == "noise":
        pool = visualize.noise_seeds(fv["pool"], test.shape, seed=seed, kind="normal")
    else:
        pool = visualize.class_seeds(train, None, fv["pool"], grain=fv["grain"], seed=seed,
                                     max_images=fv.get("max_images", 5000))
    pool = pool.to(device)
    rows, labels, metrics = [], [], {}
    for key, net in nets.items():
        feats = visualize.representations(net, test, device=device)
        coords = feats.var(0).topk(nc).indices
        seeds = (visualize.pick_seeds(net, pool, coords, n_seeds) if fv.get("pick", True)
                 else pool[:n_seeds].repeat(nc, 1, 1, 1))
        index = coords.repeat_interleave(n_seeds).to(device)
        vis = visualize.visualize_feature(net, seeds, index, eps=fv["eps"], step_size=fv["step_size"],
                                          steps=fv["steps"], fake_relu=fake_relu, progress=False)
        with torch.no_grad():
            start = net.features(seeds).gather(1, index[:, None]).squeeze(1).cpu().view(nc, n_seeds)
            reached = net.features(vis).gather(1, index[:, None]).squeeze(1).cpu().view(nc, n_seeds)
        tops = [visualize.top_activating(net, test, int(c), k, feats=feats) for c in coords]
        vis = vis.cpu().view(nc, n_seeds, *test.shape)
        rows += [torch.cat([vis[i], t.top_images, t.bottom_images]) for i, t in enumerate(tops)]
        labels += [f"{key} · unit {int(c)}" for c in coords]
        test_max = torch.tensor([t.top_values[0].item() for t in tops])
        metrics[key] = {"coords": coords.tolist(), "activation_start": start.mean(1).tolist(),
                        "activation_reached": reached.mean(1).tolist(), "test_max_activation": test_max.tolist(),
                        "reached_over_test_max": float((reached.mean(1) / test_max.clamp_min(1e-12)).mean()),
                        "units_stuck_at_zero": int((reached.amax(1) <= 0).sum())}
    cols = ([f"maximised {j + 1}" for j in range(n_seeds)] + [f"top {j + 1}" for j in range(k)]
            + [f"bottom {j + 1}" for j in range(k)])
    grid = dict(images=torch.stack(rows).numpy(), row_labels=labels, col_labels=cols,
                title="maximised coordinates of R(x) and their top / bottom test images")
    return {"grid": grid, "metrics": metrics}


def per_target(res: Inversions, pair: np.ndarray) -> list[float]:
    """(M,) per-pair distances -> the mean over each target's `group` pairs, (M/group,) as a list."""
    return np.asarray(pair).reshape(-1, res.group).mean(1).tolist()


def summary_metrics(res: Inversions, dist: dict, extractor_label: str, paper: dict | None,
                    spaces: dict | None = None) -> dict:
    """Notebook 04's metric keys: feature_distance (ours, per model), feature_distance_boychev (his statistic,
    None unless the protocol is `triple`), their std, relative_distance, extractor and paper values.
    spaces: {name: (label, `feature_distances` in that space)} for every feature space: feature_distance_spaces
    and per_unit["feature_distance.<name>"]; per_unit["feature_distance"] (the primary space, `dist`) holds, per
    compared model's seed-0 unit, the mean per-pair distance of each target (targets aligned across units)."""
    boy = dist["boychev"]
    models = list(res.inverted)
    per_unit = {"feature_distance": {f"{k}@0": per_target(res, dist["pair"][k]) for k in models}}
    by_space = {}
    for name, (label, d) in (spaces or {}).items():
        per_unit[f"feature_distance.{name}"] = {f"{k}@0": per_target(res, d["pair"][k]) for k in models}
        by_space[name] = {"label": label, "feature_distance": {k: float(v.mean()) for k, v in d["pair"].items()},
                          "feature_distance_boychev": None if d["boychev"] is None else
                          {k: float(v.mean()) for k, v in d["boychev"].items()}}
    return {"per_unit": per_unit, "units": {f"{k}@0": {"model": k, "seed": 0} for k in models},
            "feature_distance_spaces": by_space,
        "feature_distance": {k: float(v.mean()) for k, v in dist["pair"].items()},
        "feature_distance_std": {k: float(v.std()) for k, v in dist["pair"].items()},
        "feature_distance_boychev": None if boy is None else {k: float(v.mean()) for k, v in boy.items()},
        "feature_distance_boychev_std": None if boy is None else {k: float(v.std()) for k, v in boy.items()},
        "feature_distance_extractor": extractor_label,
        "relative_distance": {k: {s: float(v.mean()) for s, v in r.items()} for k, r in res.rel.items()},
        "n_pairs": len(res.x_targ), "n_targets": len(res.x_targ) // res.group,
        "paper": {"inversion_distance": paper} if paper else None,
        "models": models,
    }


def stack_distances(dist: dict) -> np.ndarray:
    """(rows, M) per-pair distances for `plotting.distance_strip`."""
    return np.stack(list(dist["pair"].values()))
