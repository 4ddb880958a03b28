"""Feature attributions and boundary attributions, in fp32, for `lib.models.Classifier`s.

Every method takes model: torch.nn.Module, x: (N,C,H,W) float in [0,1] and target: (N,) class indices,
and returns a float32 tensor shaped like x; signed (red supports the class). By default the target
*logit* is explained; `output="softmax"` explains its probability (path methods, saliency, SmoothGrad,
SHAP). Models run in eval mode; their modes, hooks and the global RNGs (torch, numpy, python) are left
as found: randomness comes from an explicit `seed`. `batch_size=None` (every default) picks a
memory-bounded number of points per pass (`auto_batch_size`). Path methods live in `lib.path_methods`
and are importable from here.

For a captum user (one word per idea in robinterp), ours → captum's, and where the semantics differ:

| ours | captum | difference |
|---|---|---|
| `target` | `target` | the class explained (our notebooks: the predicted class) |
| `baseline` | `baselines` | also "uniform"/"gaussian" (drawn with `seed`) or a (T,N,C,H,W) stack of trials |
| `steps` | `n_steps` | same count of gradient evaluations. Trapezoid weights: ours sum to 1 (exact on a |
| | | linear path); captum's `riemann_trapezoid` weights sum to (n−1)/n, so its IG is (n−1)/n of ours |
| `rule` | `method` | "trapezoid" (above) or "gausslegendre" (identical to captum's) |
| `trials` | – (Boychev's `num_random_trials`) | IG averaged over `trials` baselines, in one batched pass |
| `output` | – (wrap the model) | "logit" or "softmax" |
| `batch_size` | `internal_batch_size` | default automatic and memory-bounded (captum's: all points at once) |
| `saliency` | `Saliency` | ours is signed; captum's default `abs=True` returns abs(∇F) |
| `smoothgrad(samples, sigma,` | `NoiseTunnel(Saliency)` | captum's `stdevs` is in the model input's units; ours |
|   `sigma_unit)` | `(nt_samples, stdevs)` | names it: "pixel", "range" (× image max−min), "std" (× normalisation std) |
| `expected_gradients(samples)`, | shap `GradientExplainer` | same estimator; ours draws all samples in one |
|   `shap_values` | `(nsamples)` | batched pass |
| `deeplift` | `DeepLift` | ours calls captum's |
"""

from __future__ import annotations

import random
import warnings
from typing import NamedTuple

import numpy as np
import torch

from lib import workers as pool
from lib.alignment import boundary_normal_cosine
from lib.boundary import WANG, Boundary, boundary_search, check_target, logits
from lib.device import exact_fp32
from lib.models import Normalize, eval_mode, unwrap
from lib.path_methods import (
    GAUSSIAN_BASELINE_STD,
    OUTPUTS,
    RULES,
    _gen,
    _path_sum,
    agi,
    auto_batch_size,
    completeness_error,
    completeness_gap,
    expected_gradients,
    integrated_gradients,
    make_baseline,
    make_baselines,
    quadrature,
    target_output,
)

__all__ = ["DEFAULTS", "GAUSSIAN_BASELINE_STD", "OUTPUTS", "RULES", "SIGMA_UNITS", "agi", "auto_batch_size", "big",
           "bdt", "bsg", "bsm", "completeness_error", "completeness_gap", "deeplift", "explain", "explain_models",
           "expected_gradients", "ig_options",
           "integrated_gradients", "logits", "make_baseline", "make_baselines", "noise_scale", "quadrature",
           "saliency", "shap_values", "smoothgrad", "target_output", "with_defaults"]
SIGMA_UNITS = ("pixel", "range", "std")


# ---------------------------------------------------------------- gradient methods

def saliency(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, *, output: str = "logit",
             batch_size: int | None = None) -> torch.Tensor:
    """∇_x F_target(x), signed: (N,C,H,W)."""
    target = check_target(x, target)
    return _path_sum(model, x, 1, target, batch_size, lambda k0, k1, i0, i1: (x[i0:i1], None, None), output)


def noise_scale(model: torch.nn.Module, x: torch.Tensor, sigma: float, sigma_unit: str = "pixel") -> torch.Tensor:
    """SmoothGrad's noise std in pixel units, (N,C,1,1), for σ given in `sigma_unit`:

    "pixel": σ itself (x in [0,1]); "range": σ·(max x − min x) per image (Smilkov et al.'s noise level);
    "std": σ·s_c with s_c the model's per-channel normalisation std, i.e. σ in the units of the
    standardised input the network sees. Wang et al.'s code passes stdevs=0.15 to captum's NoiseTunnel
    on ImageNet-standardised inputs: σ = 0.15 with unit "std" (≈ 0.034 in pixels, 3 % of that input's range).
    """
    n, c = x.shape[:2]
    if sigma_unit == "pixel":
        s = torch.full((n, c), float(sigma), device=x.device)
    elif sigma_unit == "range":
        flat = x.float().flatten(1)
        s = (sigma * (flat.amax(1) - flat.amin(1)))[:, None].expand(n, c)
    elif sigma_unit == "std":
        norm = getattr(unwrap(model), "normalize", None)
        if not isinstance(norm, Normalize):
            raise ValueError("sigma_unit 'std' needs a model whose first layer is lib.models.Normalize; "
                             "use sigma_unit 'pixel' or 'range' for this model")
        s = (sigma * norm.std.flatten().to(x.device))[None].expand(n, c)
    else:
        raise ValueError(f"unknown sigma_unit {sigma_unit!r}; use one of {', '.join(SIGMA_UNITS)}")
    return s.float().reshape(n, c, 1, 1)


def smoothgrad(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, *, samples: int = 50,
               sigma: float = 0.15, sigma_unit: str = "pixel", output: str = "logit", seed: int = 0,
               batch_size: int | None = None) -> torch.Tensor:
    """Mean gradient over x + N(0, s²), s = `noise_scale(model, x, sigma, sigma_unit)`, noise not clipped: (N,C,H,W).

    The noise is drawn sample by sample for all images, so results do not depend on batch_size.
    """
    target = check_target(x, target)
    x, gen, drawn = x.float(), _gen(seed, x.device), {}
    scale = noise_scale(model, x, sigma, sigma_unit)

    def points(k0, k1, i0, i1):
        if (k0, k1) not in drawn:
            drawn.clear()
            drawn[(k0, k1)] = torch.randn((k1 - k0, *x.shape), generator=gen, device=x.device)
        z = x[None, i0:i1] + scale[None, i0:i1] * drawn[(k0, k1)][:, i0:i1]
        return z.flatten(0, 1), None, None

    return _path_sum(model, x, samples, target, batch_size, points, output) / samples


def shap_values(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, *, background: torch.Tensor,
                samples: int = 200, output: str = "logit", seed: int = 0,
                batch_size: int | None = None) -> torch.Tensor:
    """shap.GradientExplainer's expected gradients of the target logit (or softmax probability): (N,C,H,W).

    One explainer per distinct target explains only that output (shap's single-output path).
    Restores the model's modes and the numpy/torch/python RNG states, which shap changes.
    """
    import shap

    target = check_target(x, target)
    if output not in OUTPUTS:
        raise ValueError(f"unknown output {output!r}; use one of {', '.join(OUTPUTS)}")
    batch_size = auto_batch_size(model, x) if batch_size is None else batch_size
    states = (np.random.get_state(), torch.get_rng_state(), random.getstate())
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    try:
        with eval_mode(model):
            for c in target.unique().tolist():
                rows = (target == c).nonzero().flatten()
                explainer = shap.GradientExplainer(_Select(model, c, output), background.float().to(x.device),
                                                   batch_size=batch_size)
                sv = np.asarray(explainer.shap_values(x[rows].float(), nsamples=samples, rseed=seed))
                if sv.ndim == x.ndim + 1:  # shap >= 0.45: outputs on the last axis
                    sv = sv[..., 0]
                out[rows] = torch.from_numpy(sv).float().to(x.device)
    finally:
        np.random.set_state(states[0])
        torch.set_rng_state(states[1])
        random.setstate(states[2])
    return out


class _Select(torch.nn.Module):
    """model restricted to one logit (or its softmax probability): (N, 1)."""

    def __init__(self, model: torch.nn.Module, c: int, output: str = "logit"):
        super().__init__()
        self.model, self.c, self.output = model, c, output

    def forward(self, x):
        out = self.model(x)
        if self.output == "softmax":
            out = out.softmax(1)
        return out[:, self.c:self.c + 1]


def deeplift(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, *, baseline=None,
             seed: int = 0) -> torch.Tensor:
    """captum's DeepLift (Rescale rule) of the target logit relative to `baseline` (see `make_baseline`): (N,C,H,W).

    captum's MaxPool rule is not conservative (multipliers are undefined where the pool input
    equals its reference), so on max-pooling nets Σφ ≠ F(x) − F(x′); `completeness_error` shows it.
    """
    from captum.attr import DeepLift

    target = check_target(x, target)
    x = x.float()
    base = make_baseline(x, baseline, seed)
    with eval_mode(model), torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(hooks|require gradients).*")  # captum's routine notices
        phi = DeepLift(model).attribute(x.clone(), baselines=base, target=target)
    return phi.detach().float()


def _on_boundary(x, boundary: Boundary, fn) -> torch.Tensor:
    out = torch.full(x.shape, float("nan"), dtype=torch.float32, device=x.device)
    ok = boundary.success.nonzero().flatten()
    if len(ok):
        out[ok] = fn(ok)
    return out


def big(model, x, target, boundary: Boundary, **ig_kwargs) -> torch.Tensor:
    """Boundary IG: IG of x relative to its boundary point. NaN rows where the search failed."""
    target = check_target(x, target)
    return _on_boundary(x, boundary, lambda ok: integrated_gradients(
        model, x[ok], target[ok], baseline=boundary.points[ok], **ig_kwargs))


def bsm(model, x, target, boundary: Boundary) -> torch.Tensor:
    """Boundary saliency: ∇F_target at the boundary point. NaN rows where the search failed."""
    target = check_target(x, target)
    return _on_boundary(x, boundary, lambda ok: saliency(model, boundary.points[ok], target[ok]))


def bsg(model, x, target, boundary: Boundary, **sg_kwargs) -> torch.Tensor:
    """Boundary SmoothGrad: SmoothGrad at the boundary point. NaN rows where the search failed."""
    target = check_target(x, target)
    return _on_boundary(x, boundary, lambda ok: smoothgrad(model, boundary.points[ok], target[ok], **sg_kwargs))


def bdt(model, x, target, boundary: Boundary) -> torch.Tensor:
    """Boundary DeepLift: DeepLift of x relative to its boundary point. NaN rows where the search failed."""
    target = check_target(x, target)
    return _on_boundary(x, boundary, lambda ok: deeplift(model, x[ok], target[ok], baseline=boundary.points[ok]))



def boundary_alignment(model, x: torch.Tensor, target: torch.Tensor, boundary: Boundary) -> dict:
    """`lib.alignment.boundary_normal_cosine` as a dict: cos_saliency, cos_margin, distance, cos_direction (N,)
    (aliases cos_grad_boundary_grad, cos_grad_normal); NaN where the search failed or target ≠ F(x)."""
    cos = boundary_normal_cosine(model, x, boundary.points)
    own = logits(model, x).argmax(1) == check_target(x, target)
    out = {k if k == "distance" else f"cos_{k}": torch.where(own, getattr(cos, k), torch.nan)
           for k in ("saliency", "margin", "distance", "direction")}
    return {**out, "cos_grad_boundary_grad": out["cos_saliency"], "cos_grad_normal": out["cos_direction"]}


# ---------------------------------------------------------------- a profile's whole comparison

METHODS = ("saliency", "smoothgrad", "ig", "eg", "shap", "deeplift", "agi", "big", "bsm", "bsg", "bdt")
BOUNDARY_METHODS = ("big", "bsm", "bsg", "bdt")
# The settings `explain` uses for whatever a profile's `attributions` section leaves out: each method's own
# defaults (IG from a black baseline, 1 trial, the logit), and for the boundary methods Wang et al.'s search
# (their default ε list 36/255 ... 1.1, here in pixel L2 units, 40 CE-PGD steps; `lib.boundary.WANG`).
DEFAULTS = {
    "methods": list(METHODS),
    "sweep_methods": None,   # None: `methods`
    "batch_size": None,      # None: automatic, memory-bounded
    "ig": {"steps": 50, "rule": "trapezoid", "baseline": None, "trials": 1, "output": "logit"},
    "smoothgrad": {"samples": 50, "sigma": 0.15, "sigma_unit": "pixel"},
    "eg": {"samples": 50, "output": "logit"},
    "shap": {"samples": 200, "output": "logit"},
    "agi": {"steps": 20, "step_size": 0.05, "classes": None},
    "boundary": {"eps": [0.141, 0.251, 0.3, 0.5, 0.7, 0.9, 1.1], "steps": 40, "rel_step": 2.5, **WANG},
}


def with_defaults(cfg: dict | None) -> dict:
    """cfg (a profile's `attributions` section, possibly partial) over `DEFAULTS`, one level deep per section."""
    cfg = dict(cfg or {})
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in DEFAULTS.items()}
    for key, value in cfg.items():
        out[key] = {**out[key], **value} if isinstance(out.get(key), dict) and isinstance(value, dict) else value
    return out


TITLES = {"ig": "Integrated Gradients", "shap": "SHAP (GradientExplainer)", "eg": "Expected Gradients",
          "big": "Boundary IG (BIG)", "bsm": "Boundary saliency (BSM)", "bsg": "Boundary SmoothGrad (BSG)",
          "bdt": "Boundary DeepLift (BDT)", "agi": "AGI", "smoothgrad": "SmoothGrad", "saliency": "Saliency",
          "deeplift": "DeepLift"}


def method_title(method: str, cfg: dict) -> str:
    """A figure title naming the method and the setting that produced it (IG: baseline, trials, output)."""
    cfg = with_defaults(cfg)
    if method == "ig":
        o = ig_options(cfg["ig"])
        trials = f" ×{o['trials']}" if o["trials"] > 1 else ""
        setting = f"{o['baseline'] or 'black'} baseline{trials}, {o['output']}, {cfg['ig']['steps']} steps"
        return f"{TITLES[method]} ({setting})"
    if method in ("smoothgrad", "bsg"):
        sg = cfg["smoothgrad"]
        return f"{TITLES[method]} (σ = {sg['sigma']} {sg.get('sigma_unit', 'pixel')} units)"
    return TITLES[method]


def ig_options(ig_cfg: dict) -> dict:
    """IG's baseline, trials and output from a profile's `attributions.ig` (black, 1 trial, logit by default)."""
    return {"baseline": ig_cfg.get("baseline"), "trials": ig_cfg.get("trials", 1),
            "output": ig_cfg.get("output", "logit")}


class Explanations(NamedTuple):
    maps: dict              # method -> (N,C,H,W) float32 (NaN rows: no boundary point found)
    boundary: Boundary | None
    seconds: dict           # method -> wall seconds (boundary search under "boundary_search")


@exact_fp32
def explain(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, cfg: dict | None = None, *,
            background: torch.Tensor | None = None, seed: int = 0, methods=None) -> Explanations:
    """Run every method of `methods` (default cfg["methods"]) with the parameters of a profile's
    `attributions` section; what cfg leaves out comes from `DEFAULTS`. x: (N,C,H,W) in [0,1], target (N,).
    background: (B,C,H,W) in [0,1], the baselines of "eg" and "shap" (needed only by those two)."""
    import time

    cfg = with_defaults(cfg)
    methods = list(cfg["methods"] if methods is None else methods)
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown attribution methods {sorted(unknown)}; known: {', '.join(METHODS)}")
    if background is None and {"eg", "shap"} & set(methods):
        raise ValueError("methods eg and shap need background images: pass background=(B,C,H,W) images in [0,1] "
                         "(e.g. a few hundred training images)")
    bs, seconds, eg, sh, ag = cfg["batch_size"], {}, cfg["eg"], cfg["shap"], cfg["agi"]
    ig = dict(steps=cfg["ig"]["steps"], rule=cfg["ig"]["rule"], batch_size=bs)
    sg = dict(samples=cfg["smoothgrad"]["samples"], sigma=cfg["smoothgrad"]["sigma"],
              sigma_unit=cfg["smoothgrad"]["sigma_unit"], seed=seed, batch_size=bs)
    boundary = None
    if set(methods) & set(BOUNDARY_METHODS):
        b, t0 = {k: v for k, v in cfg["boundary"].items() if k != "eps"}, time.perf_counter()
        boundary = boundary_search(model, x, target, eps_list=cfg["boundary"]["eps"], seed=seed, **b)
        seconds["boundary_search"] = time.perf_counter() - t0
    run = {
        "saliency": lambda: saliency(model, x, target),
        "smoothgrad": lambda: smoothgrad(model, x, target, **sg),
        "ig": lambda: integrated_gradients(model, x, target, **ig_options(cfg["ig"]), seed=seed, **ig),
        "eg": lambda: expected_gradients(model, x, target, background=background, samples=eg["samples"],
                                         output=eg["output"], seed=seed, batch_size=bs),
        "shap": lambda: shap_values(model, x, target, background=background, samples=sh["samples"],
                                    output=sh["output"], seed=seed, batch_size=bs),
        "deeplift": lambda: deeplift(model, x, target),
        "agi": lambda: agi(model, x, target, steps=ag["steps"], step_size=ag["step_size"], classes=ag["classes"],
                           seed=seed, batch_size=bs),
        "big": lambda: big(model, x, target, boundary, **ig),
        "bsm": lambda: bsm(model, x, target, boundary),
        "bsg": lambda: bsg(model, x, target, boundary, **sg),
        "bdt": lambda: bdt(model, x, target, boundary),
    }
    maps = {}
    for name in methods:
        t0 = time.perf_counter()
        maps[name] = run[name]().detach().float()
        seconds[name] = time.perf_counter() - t0
    return Explanations(maps, boundary, seconds)


def explain_models(models: dict, x: torch.Tensor, preds: dict, cfg: dict | None = None, *,
                   background: torch.Tensor | None = None,
                   seed: int = 0, pair=("standard", "robust"), workers="auto") -> dict:
    """{key: Explanations} for every model of `models` ({key: model}, e.g. a pgd sweep), each explaining its
    own predictions preds[key]: cfg["methods"] on the `pair` shown in the grids, cfg["sweep_methods"]
    (default: all methods) on the other members, to keep a long sweep cheap; side by side in `workers`
    processes on a multi-core CPU (lib.workers)."""
    cfg = with_defaults(cfg)
    sweep = cfg["sweep_methods"] or cfg["methods"]
    keys = sorted(models, key=lambda k: k not in pair)  # the pair's long jobs first, so no worker waits at the end
    jobs = [(models[k], x, preds[k], cfg, background, seed, cfg["methods"] if k in pair else sweep) for k in keys]
    done = dict(zip(keys, pool.run(_explain_job, jobs, workers=pool.count(workers, x.device, len(keys)))))
    return {k: done[k] for k in models}


def _explain_job(net, x, pred, cfg, background, seed, methods) -> Explanations:
    return explain(net, x, pred, cfg, background=background, seed=seed, methods=methods)
