"""Our attributions vs captum's IG and shap's GradientExplainer, in one run.

    .venv/bin/python benchmarks/bench_attributions.py [--repeats 5] [--threads 2] [--quick]

1. IG: `lib.attributions.integrated_gradients` (correct trapezoid) at default arguments (automatic,
   memory-bounded batch) and at each batch vs captum `IntegratedGradients(method="riemann_trapezoid")`
   at equal steps (50) over its `internal_batch_size` choices; small_cnn (width 16) on 32
   Fashion-MNIST-sized images. Time: the minimum wall and process-CPU time over interleaved repeats
   (a busy shared machine disturbs minima and CPU time least). Agreement:
   max |ours − captum·n/(n−1)| / max |ours|, and the completeness error of both.
2. EG vs shap: `expected_gradients` at default arguments vs `shap.GradientExplainer(batch_size=50 /
   200 / 800).shap_values(ranked_outputs=1)` (its best) at equal samples (explaining the predicted
   class), on the default-sized small_cnn (28×28, width 16) and the smoke-sized one (8×8, width 8);
   time ratio and correlation of the maps.
3. Steps each rule needs to come within 1% (relative L2) of a 1000-step trapezoid reference,
   on small_cnn, a random resnet18_cifar (16×16 inputs) and a positively homogeneous one
   (bias-free, no normalisation layer), the speed-up at equal accuracy, and the completeness error at 50 steps.

Models have seeded random weights (timing does not depend on them); images are Fashion-MNIST
test images when available, else uniform noise.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from lib import attribution_metrics as M
from lib import attributions as A
from lib import models

ROOT = Path(__file__).resolve().parent.parent


def images(n: int, channels: int, size: int) -> torch.Tensor:
    try:
        from lib.data import load

        ds = load("fashion_mnist", "test", ROOT / "data")
        x = torch.stack([ds[i][0] for i in range(n)])
        if x.shape[1:] == (channels, size, size):
            return x
        return torch.nn.functional.interpolate(x, size=size).repeat(1, channels, 1, 1)
    except (FileNotFoundError, ValueError):
        return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(0))


def interleaved(fns: dict, repeats: int, cpu: dict | None = None) -> dict:
    """name -> min wall seconds over `repeats` rounds, each round running every fn once.

    cpu: if given, filled with name -> min process CPU seconds (all threads), which other jobs
    on a shared machine disturb less than wall time.
    """
    best = {k: float("inf") for k in fns}
    best_cpu = {k: float("inf") for k in fns}
    for f in fns.values():  # warm-up
        f()
    for _ in range(repeats):
        for k, f in fns.items():
            t, c = time.perf_counter(), time.process_time()
            f()
            best[k] = min(best[k], time.perf_counter() - t)
            best_cpu[k] = min(best_cpu[k], time.process_time() - c)
    if cpu is not None:
        cpu.update(best_cpu)
    return best


def bench_ig(model, x, t, steps: int, repeats: int) -> dict:
    """Ours at default arguments (automatic batch) and at each batch vs captum at each internal_batch_size,
    all interleaved in the same rounds."""
    from captum.attr import IntegratedGradients

    ig, n = IntegratedGradients(model), len(x)
    batches = (n * 5, n * 25, n * steps)
    fns = {"ours_default": lambda: A.integrated_gradients(model, x, t, steps=steps)}
    for bs in batches:
        fns[f"captum_{bs}"] = lambda bs=bs: ig.attribute(x, target=t, n_steps=steps, method="riemann_trapezoid",
                                                         internal_batch_size=bs)
        fns[f"ours_{bs}"] = lambda bs=bs: A.integrated_gradients(model, x, t, steps=steps, batch_size=bs)
    cpu = {}
    times = interleaved(fns, repeats, cpu)
    best_c = min(batches, key=lambda b: times[f"captum_{b}"])
    best_o = min(batches, key=lambda b: times[f"ours_{b}"])
    ours, theirs = A.integrated_gradients(model, x, t, steps=steps), ig.attribute(
        x, target=t, n_steps=steps, method="riemann_trapezoid")
    rel = lambda phi: M.relative_error(A.completeness_error(model, x, t, phi), model, x, t, None)
    return {
        "steps": steps, "images": n, "times": times, "cpu_times": cpu,
        "ours_default_batch": A.auto_batch_size(model, x),
        "captum_best_batch": best_c, "captum_best_s": times[f"captum_{best_c}"],
        "ours_default_s": times["ours_default"],
        "ratio_default_vs_captum_best": times["ours_default"] / times[f"captum_{best_c}"],
        "cpu_ratio_default_vs_captum_best": cpu["ours_default"] / cpu[f"captum_{best_c}"],
        "ours_same_batch_s": times[f"ours_{best_c}"],
        "ratio_same_batch": times[f"ours_{best_c}"] / times[f"captum_{best_c}"],
        "ours_best_batch": best_o, "ours_best_s": times[f"ours_{best_o}"],
        "ratio_best_vs_best": times[f"ours_{best_o}"] / times[f"captum_{best_c}"],
        "max_rel_diff_vs_captum_corrected": ((ours - theirs * steps / (steps - 1)).abs().max()
                                             / ours.abs().max()).item(),
        "completeness_rel_err_median": {"ours": rel(ours).median().item(), "captum": rel(theirs).median().item()},
    }


def bench_eg(model, x, t, bg, samples: int, repeats: int) -> dict:
    """Ours at default arguments vs shap.GradientExplainer at each batch_size, interleaved."""
    import shap

    state = np.random.get_state()

    def theirs(bs):
        ex = shap.GradientExplainer(model, bg, batch_size=bs)
        sv, idx = ex.shap_values(x, nsamples=samples, ranked_outputs=1, rseed=0)
        return np.asarray(sv)[..., 0], idx

    batches = (50, 200, 800)
    fns = {"ours_default": lambda: A.expected_gradients(model, x, t, background=bg, samples=samples, seed=0)}
    fns.update({f"shap_{bs}": lambda bs=bs: theirs(bs) for bs in batches})
    cpu = {}
    times = interleaved(fns, repeats, cpu)
    best = min(batches, key=lambda b: times[f"shap_{b}"])
    sv, idx = theirs(best)
    np.random.set_state(state)
    assert torch.equal(torch.as_tensor(idx[:, 0]).long(), t), "shap's top output must be our target"
    corr = float(np.corrcoef(fns["ours_default"]().flatten().numpy(), sv.flatten())[0, 1])
    return {"samples": samples, "images": len(x), "times": times, "shap_best_batch": best,
            "shap_s": times[f"shap_{best}"], "ours_s": times["ours_default"],
            "ours_default_batch": A.auto_batch_size(model, x),
            "ratio": times["ours_default"] / times[f"shap_{best}"],
            "cpu_ratio": cpu["ours_default"] / cpu[f"shap_{best}"], "map_correlation": corr}


def bench_rules(model, x, t, grid, tol: float = 0.01, timing: bool = True) -> dict:
    ref = A.integrated_gradients(model, x, t, steps=1000, batch_size=2000)
    err = lambda phi: ((phi - ref).flatten(1).norm(dim=1) / ref.flatten(1).norm(dim=1)).max().item()
    out = {"tolerance": tol, "errors": {}, "steps_needed": {}}
    for rule in ("captum_trapezoid", "trapezoid", "gausslegendre"):
        errs = {}
        for n in grid:
            if errs and min(errs.values()) <= tol / 4:  # well converged: larger n tell nothing new
                break
            if rule == "captum_trapezoid":  # captum's weights, reproduced exactly: ours·(n−1)/n
                phi = A.integrated_gradients(model, x, t, steps=n, batch_size=2000) * (n - 1) / n
            else:
                phi = A.integrated_gradients(model, x, t, steps=n, rule=rule, batch_size=2000)
            errs[n] = err(phi)
        out["errors"][rule] = errs
        out["steps_needed"][rule] = next((n for n in errs if errs[n] <= tol), None)
    comp = lambda phi: M.relative_error(A.completeness_error(model, x, t, phi), model, x, t, None).median().item()
    phi50 = {r: A.integrated_gradients(model, x, t, steps=50, rule=r) for r in A.RULES}
    out["completeness_at_50"] = {"captum_trapezoid": comp(phi50["trapezoid"] * 49 / 50),
                                 **{r: comp(v) for r, v in phi50.items()}}
    tr, gl = out["steps_needed"]["trapezoid"], out["steps_needed"]["gausslegendre"]
    out["speedup_gl_vs_trapezoid"] = tr / gl if tr and gl else None
    ct = out["steps_needed"]["captum_trapezoid"]
    out["speedup_gl_vs_captum"] = ct / gl if ct and gl else None
    if timing and tr and gl:
        s = interleaved({"trapezoid": lambda: A.integrated_gradients(model, x, t, steps=tr, batch_size=2000),
                         "gausslegendre": lambda: A.integrated_gradients(model, x, t, steps=gl,
                                                                         rule="gausslegendre", batch_size=2000)}, 2)
        out["seconds_at_tol"] = s
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="fewer repeats and images (a CI-sized check)")
    p.add_argument("--skip-rules", action="store_true", help="only the speed comparisons (parts 1 and 2)")
    p.add_argument("--out", default=str(ROOT / "runs" / "benchmarks" / "bench_attributions.json"))
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    repeats = 2 if a.quick else a.repeats
    torch.manual_seed(0)
    env = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "captum": metadata.version("captum"), "shap": metadata.version("shap"),
           "repeats": repeats}
    print("#", ", ".join(f"{k}={v}" for k, v in env.items()))

    cnn = models.build("small_cnn", 10, 1, 28, width=16).eval()
    x = images(8 if a.quick else 32, 1, 28)
    t = A.logits(cnn, x).argmax(1)
    res = {"environment": env}
    res["ig"] = bench_ig(cnn, x, t, 50, repeats)
    r = res["ig"]
    print(f"IG vs captum (small_cnn, {r['images']} images, 50 steps): captum best {r['captum_best_s']:.3f} s at "
          f"internal_batch_size {r['captum_best_batch']}; ours at defaults {r['ours_default_s']:.3f} s (automatic "
          f"batch {r['ours_default_batch']}): ratio {r['ratio_default_vs_captum_best']:.2f} (CPU time "
          f"{r['cpu_ratio_default_vs_captum_best']:.2f}); ours at captum's batch {r['ratio_same_batch']:.2f}, "
          f"ours best "
          f"(batch {r['ours_best_batch']}) {r['ratio_best_vs_best']:.2f}; max rel diff vs captum·n/(n−1) "
          f"{r['max_rel_diff_vs_captum_corrected']:.1e}; median completeness rel err ours "
          f"{r['completeness_rel_err_median']['ours']:.1e} vs captum {r['completeness_rel_err_median']['captum']:.1e}")
    print("  all times (s):", {k: round(v, 3) for k, v in r["times"].items()})

    small = models.build("small_cnn", 10, 1, 8, width=8).eval()  # the smoke profile's size
    for name, (m, size) in {"small_cnn_28": (cnn, 28), "small_cnn_8": (small, 8)}.items():
        xe, bg = images(8, 1, size), images(72, 1, size)[8:]
        res[f"eg_{name}"] = r = bench_eg(m, xe, A.logits(m, xe).argmax(1), bg, 50 if a.quick else 200, repeats)
        print(f"EG vs shap.GradientExplainer ({name}, {r['images']} images, {r['samples']} samples): shap best "
              f"{r['shap_s']:.3f} s (batch_size {r['shap_best_batch']}), ours at defaults {r['ours_s']:.3f} s "
              f"(automatic batch {r['ours_default_batch']}): ratio {r['ratio']:.3f}, CPU-time ratio "
              f"{r['cpu_ratio']:.3f}; map correlation {r['map_correlation']:.3f}")

    grid = (4, 8, 16, 32, 64, 128, 256)
    resnet = models.build("resnet18_cifar", 10, 3, 16).eval()  # 16×16 inputs keep the 1000-step references cheap
    homog = models.build("resnet18_cifar", 10, 3, 16, bias=False, normalize=False).eval()
    xr = images(1, 3, 16)
    cases = {"small_cnn": (cnn, x[:8], grid, True), "resnet18_cifar": (resnet, xr, grid, False),
             # bias-free, no normalisation layer: F(αx) = αF(x), so the IG integrand is constant along the path
             "resnet18_cifar_homogeneous": (homog, xr, grid[:-2], False)}
    if a.quick:
        cases = {"small_cnn": (cnn, x[:4], grid[:4], False)}
    if a.skip_rules:
        cases = {}
    for name, (m, xx, g, timing) in cases.items():
        tt = A.logits(m, xx).argmax(1)
        res[f"rules_{name}"] = r = bench_rules(m, xx, tt, g, timing=timing)
        print(f"steps to within {r['tolerance']:.0%} of a 1000-step reference ({name}): {r['steps_needed']}; "
              f"Gauss-Legendre speed-up vs trapezoid {r['speedup_gl_vs_trapezoid']}, vs captum "
              f"{r['speedup_gl_vs_captum']}; seconds at tolerance {r.get('seconds_at_tol')}")
        print("  median completeness rel err at 50 steps:", {k: f"{v:.1e}" for k, v in r["completeness_at_50"].items()})
        print("  errors:", json.dumps({k: {n: f"{e:.1e}" for n, e in v.items()} for k, v in r["errors"].items()}))
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
