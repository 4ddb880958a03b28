"""Sanity checks for attribution maps (Adebayo et al. 2018): do the maps change when the model does?

- Cascading model-parameter randomisation: the layers that own parameters are re-initialised from the
  logits down, cumulatively (`layers_top_down`, `reinitialised`), and every map is recomputed after each stage.
- Data randomisation: the maps of a model trained on permuted labels (lib.train `labels: shuffled`).

Both compare maps of the same images and the same target class by the per-image Spearman rank correlation of
|φ| (Σ over channels, per pixel; `spearman_abs`). The pass rule is registered in analysis.md (`sanity:`).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from scipy.stats import rankdata

from lib import stats
from lib.attributions import explain
from lib.models import unwrap

_REINIT = 0x5A17C0DE


def layers_top_down(model: torch.nn.Module) -> list[str]:
    """Names of the modules that own parameters, the layer nearest the logits first."""
    net = unwrap(model)
    return [n for n, m in net.named_modules() if n and any(True for _ in m.parameters(recurse=False))][::-1]


def reinitialised(model: torch.nn.Module, names, seed: int = 0) -> torch.nn.Module:
    """A copy of `model` whose modules `names` are re-drawn by their own `reset_parameters` (seeded; the global
    RNG is left as found). BatchNorm layers also forget their running statistics."""
    net = copy.deepcopy(unwrap(model))
    modules = dict(net.named_modules())
    with torch.random.fork_rng(devices=[]):
        for i, name in enumerate(names):
            torch.manual_seed(_REINIT + seed * 100_003 + i)  # offset: seed 0 must not replay a model's own init
            mod = modules[name]
            if not hasattr(mod, "reset_parameters"):
                raise ValueError(f"layer {name!r} ({type(mod).__name__}) has no reset_parameters to re-initialise")
            mod.reset_parameters()
    return net


def stages(model: torch.nn.Module, n: int | None = None) -> list[list[str]]:
    """The cascade: cumulative lists of layer names, top first; `n` contiguous groups of layers (None: one
    stage per layer). The last stage re-initialises every layer."""
    names = layers_top_down(model)
    groups = [[str(s) for s in g] for g in np.array_split(names, min(n or len(names), len(names)))]
    return [sum(groups[:i + 1], []) for i in range(len(groups))]


def spearman_abs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image Spearman rank correlation of |a| and |b| per pixel (Σ_c |φ|, ties averaged): (N,) in [-1, 1];
    NaN where a map has a NaN or is constant. a, b: (N,C,H,W)."""
    u, v = (t.abs().sum(1).flatten(1).double().cpu().numpy() for t in (a, b))
    out = np.full(len(u), np.nan)
    for i in range(len(u)):
        if np.isfinite(u[i]).all() and np.isfinite(v[i]).all() and np.ptp(u[i]) > 0 and np.ptp(v[i]) > 0:
            out[i] = np.corrcoef(rankdata(u[i]), rankdata(v[i]))[0, 1]
    return torch.from_numpy(out).float()


def cascade(model: torch.nn.Module, explain, maps: dict, *, n_stages: int | None = None, seed: int = 0) -> list:
    """[(layer, {method: (N,) Spearman with `maps`})] after each cumulative stage. explain(model) -> {method: maps}
    recomputes the maps of the same images and targets; `layer` names the deepest layer re-initialised so far."""
    out = []
    for names in stages(model, n_stages):
        new = explain(reinitialised(model, names, seed))
        out.append((names[-1], {m: spearman_abs(maps[m], new[m]) for m in maps}))
    return out


def _ci(values: torch.Tensor, seed: int) -> dict:
    mean, lo, hi = stats.bootstrap_ci(values.numpy(), seed=seed)
    return {"spearman": mean, "lo": lo, "hi": hi, "n": int(np.isfinite(values.numpy()).sum())}


def verdict(last: dict, data: dict | None, rule: dict) -> tuple[bool | None, str]:
    """(passes, reason) under the registered rule {"threshold", "bound": "upper"|"mean"}: every test's
    statistic (the upper interval end, or the mean) must be below the threshold. None when not measurable."""
    key, thr = ("hi" if rule["bound"] == "upper" else "spearman"), float(rule["threshold"])
    tests = {"full randomisation": last, **({"shuffled labels": data} if data is not None else {})}
    if any(not math.isfinite(t[key]) for t in tests.values()):
        return None, "not measurable: no finite correlation (maps undefined or constant)"
    failed = [f"{name} ρ {'upper bound ' if key == 'hi' else ''}{t[key]:.2f} ≥ {thr}" for name, t in tests.items()
              if t[key] >= thr]
    note = "" if data is not None else " (no shuffled-label model: cascade only)"
    if failed:
        return False, "fails: " + "; ".join(failed) + note
    return True, "passes: " + "; ".join(f"{name} ρ ≤ {t[key]:.2f}" for name, t in tests.items()) + f" < {thr}{note}"


def report(casc: list, data: dict | None, rule: dict, seed: int = 0) -> dict:
    """metrics["sanity"][·][model] per method: {"cascade": [{"layer", "spearman", "lo", "hi", "n"}...],
    "data_randomisation": {"spearman", "lo", "hi", "n"} | None, "passes": bool | None, "reason": str}."""
    out = {}
    for method in casc[0][1]:
        rows = [{"layer": layer, **_ci(vals[method], seed)} for layer, vals in casc]
        dr = _ci(data[method], seed) if data is not None else None
        passes, reason = verdict(rows[-1], dr, rule)
        out[method] = {"cascade": rows, "data_randomisation": dr, "passes": passes, "reason": reason}
    return out


SETTINGS = {"images": 16, "stages": None}  # a profile's attributions.sanity may change either


def check(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, cfg: dict, rule: dict, *,
          background: torch.Tensor, shuffled: torch.nn.Module | None = None, seed: int = 0, methods=None) -> dict:
    """Both tests for every method (default cfg["methods"]) on `model`, maps from lib.attributions.explain with
    the profile's `attributions` cfg, of x (N,C,H,W) in [0,1] for the fixed `target` (N,) (the trained model's
    prediction). shuffled: the shuffled-label model, or None (cascade only). Returns `report`'s dict."""
    opts = {**SETTINGS, **(cfg.get("sanity") or {})}

    def maps_of(net):
        return explain(net, x, target, cfg, background=background, seed=seed, methods=methods).maps

    maps = maps_of(model)
    casc = cascade(model, maps_of, maps, n_stages=opts["stages"], seed=seed)
    data = None if shuffled is None else {m: spearman_abs(maps[m], v) for m, v in maps_of(shuffled).items()}
    return report(casc, data, rule, seed)


def by_method(reports: dict) -> dict:
    """{model: {method: r}} (one `check` per model) → metrics["sanity"] = {method: {model: r}}."""
    out: dict = {}
    for model, rep in reports.items():
        for method, r in rep.items():
            out.setdefault(method, {})[model] = r
    return out


def table(sanity_metrics: dict) -> list[dict]:
    """Rows for a DataFrame: method, model, ρ after full randomisation, ρ with the shuffled-label model, verdict."""
    def fmt(t):
        return None if t is None else f"{t['spearman']:.2f} [{t['lo']:.2f}, {t['hi']:.2f}]"

    return [{"method": method, "model": model, "cascade_last": fmt(r["cascade"][-1]),
             "shuffled_labels": fmt(r["data_randomisation"]), "passes": r["passes"], "reason": r["reason"]}
            for method, per_model in sanity_metrics.items() for model, r in per_model.items()]
