"""Our alignment-theory code vs the library/reference ways of computing the same numbers, in one run.

    .venv/bin/python benchmarks/bench_alignment.py [--repeats 3] [--threads 1] [--run-dir runs/default]

1. Linearized robustness ρ̃ (all classes): `lib.boundary.linearized_robustness` (one forward, class
   chunks of a vmapped backward, running minimum) vs torch.func `vmap(jacrev(f))` (the full per-sample
   Jacobian, the library way) vs a Python loop of one backward per class (the reference-code way).
   small_cnn (width 16), 256 Fashion-MNIST-sized images, 10 classes; then 1000 classes on 32 images,
   where the full Jacobian is materialised by torch.func but only one chunk by ours.
   Time: minimum over interleaved repeats (robust to a busy machine). Agreement: max relative difference.
2. The one nearest-boundary search `lib.boundary.boundary_search` in its modes: Etmann's (radii ρ̃·2^k,
   margin-PGD also towards the ρ̃ class, bisection over ε to rtol), Wang's (the ε list of the attributions
   profile, CE-PGD, segment bisection) and Wang's list + bisection over ε; on a 10-class affine model, where
   the exact distance is known, and on the trained default-profile models under --run-dir (radius ratio to
   Etmann's mode). With --old REV, the two searches it replaced (`min_norm_attack`, the old `boundary_search`
   of lib/boundary.py at git revision REV) are timed on the same inputs: old vs new.
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import time
import types
from importlib import metadata
from pathlib import Path

import torch
from torch.func import functional_call, jacrev, vmap

from lib import boundary, models, profiles
from lib.experiment import Context

ROOT = Path(__file__).resolve().parent.parent


def images(n: int) -> torch.Tensor:
    try:
        from lib.data import load

        ds = load("fashion_mnist", "test", ROOT / "data")
        return torch.stack([ds[i][0] for i in range(n)])
    except (FileNotFoundError, ValueError):
        return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def interleaved(fns: dict, repeats: int) -> dict:
    best = {k: math.inf for k in fns}
    out = {}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            out[k] = f()
            best[k] = min(best[k], time.perf_counter() - t)
    return best, out


def rho_jacrev(model, x):
    """ρ̃ from the full Jacobian (N, K, d) by torch.func."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def f(xi):
        return functional_call(model, (params, buffers), (xi[None],))[0]

    with torch.no_grad(), models.eval_mode(model):
        logits = model(x)
    jac = vmap(jacrev(f))(x).flatten(2)  # (N, K, d)
    pred = logits.argmax(1)
    rows = torch.arange(len(x))
    diff = jac[rows, pred][:, None] - jac
    ratio = (logits[rows, pred][:, None] - logits) / diff.norm(dim=2)
    ratio[rows, pred] = math.inf
    return ratio.min(1).values


def rho_loop(model, x):
    """ρ̃ with one backward per class (the reference-code way), retained graph."""
    with models.eval_mode(model), torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        logits = model(xg)
        pred = logits.argmax(1)
        top = logits.gather(1, pred[:, None]).squeeze(1)
        best = torch.full((len(x),), math.inf)
        for j in range(logits.shape[1]):
            (g,) = torch.autograd.grad((top - logits[:, j]).sum(), xg, retain_graph=True)
            r = (top - logits[:, j]).detach() / g.flatten(1).norm(dim=1)
            best = torch.where(pred == j, best, torch.minimum(best, r))
    return best


def rel(a, b):
    return float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())


def bench_linearized(repeats: int) -> list[str]:
    lines = []
    for k, n in ((10, 256), (1000, 32)):
        torch.manual_seed(0)
        model = models.build("small_cnn", k, 1, 28, width=16).eval()
        x = images(n)
        fns = {"ours": lambda m=model, x=x: boundary.linearized_robustness(m, x),
               "torch.func jacrev": lambda m=model, x=x: rho_jacrev(m, x)}
        fns["loop over classes"] = lambda m=model, x=x: rho_loop(m, x)
        t, out = interleaved(fns, repeats)
        d = x[0].numel()
        chunk = max(1, min(k, boundary.CHUNK_BYTES["cpu"] // (4 * n * d)))
        for name in fns:
            lines.append(f"| ρ̃, {k} classes, {n} images | {name} | {t[name] * 1000:.0f} ms | "
                         f"{t[name] / t['ours']:.2f} | {rel(out[name], out['ours']):.1e} | "
                         f"{(chunk if name == 'ours' else k if 'jacrev' in name else 1) * n * d * 4 / 2**20:.1f} MiB |")
    return lines


class Affine(torch.nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.w, self.b = torch.nn.Parameter(w), torch.nn.Parameter(b)

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def old_module(rev: str):
    """lib/boundary.py as it was at git revision `rev`, as a module (None when git cannot show it)."""
    try:
        src = subprocess.run(["git", "show", f"{rev}:lib/boundary.py"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    mod = types.ModuleType("old_boundary")
    exec(compile(src, f"{rev}:lib/boundary.py", "exec"), mod.__dict__)
    return mod


def searches(eps_list, etmann: dict, old) -> dict:
    """name -> f(model, x, pred) -> distances (N,) (inf/NaN where failed)."""
    out = {
        "new: Etmann mode (ρ̃·2^k, bisection)": lambda m, x, p: boundary.boundary_search(m, x, p, **etmann).distance,
        "new: Wang mode (ε list)": lambda m, x, p: boundary.boundary_search(m, x, p, eps_list=eps_list, steps=10,
                                                                            **boundary.WANG).distance,
        "new: Wang ε list + bisection": lambda m, x, p: boundary.boundary_search(
            m, x, p, eps_list=eps_list, steps=10,
            **{**boundary.WANG, "bisect_steps": etmann["bisect_steps"]}, rtol=etmann["rtol"]).distance,
    }
    if old is not None:
        kw = {k: etmann[k] for k in ("steps", "bisect_steps", "rtol")}
        out["old: min_norm_attack"] = lambda m, x, p: old.min_norm_attack(m, x, p, line_steps=etmann["refine_steps"],
                                                                          **kw).radius
        out["old: boundary_search (ε list)"] = lambda m, x, p: old.boundary_search(m, x, p, eps_list=eps_list,
                                                                                   steps=10).distance
    return out


def bench_radius(repeats: int, run_dir: Path | None, old_rev: str | None) -> list[str]:
    g = torch.Generator().manual_seed(1)
    model = Affine(torch.randn(10, 64, generator=g), torch.randn(10, generator=g))
    x = (0.5 + 0.05 * torch.randn(256, 1, 8, 8, generator=g)).clamp(0.05, 0.95)
    exact = boundary.linearized_robustness(model, x)  # exact for affine models (tested against the closed form)
    pred = model(x).argmax(1)
    sec = profiles.load("default")
    etmann = sec["alignment"]["boundary"]
    old = old_module(old_rev) if old_rev else None
    fns = searches([0.0125 * 2**i for i in range(8)], etmann, old)
    t, out = interleaved({k: (lambda f=f: f(model, x, pred)) for k, f in fns.items()}, repeats)
    ref = next(iter(t))
    lines = [f"| radius, affine 10 classes, 256 images | {k} | {t[k] * 1000:.0f} ms | {t[k] / t[ref]:.2f} "
             f"| vs exact: max {rel(v, exact):.1e}, mean {float(((v - exact) / exact).mean()):.1e} | |"
             for k, v in out.items()]
    if run_dir is None:
        return lines
    fns = searches(sec["attributions"]["boundary"]["eps"], etmann, old)
    xs = images(256)
    for key in ("standard", "robust"):
        try:
            net = Context("default", "cpu", run_dir).model(key)
        except FileNotFoundError:
            continue
        with torch.no_grad():
            p = net(xs).argmax(1)
        t, out = interleaved({k: (lambda f=f, net=net, p=p: f(net, xs, p)) for k, f in fns.items()}, 1)
        for k, v in out.items():
            ratio = (v / out[ref]).nanmedian()
            lines.append(f"| radius, default `{key}`, 256 images | {k} | {t[k] * 1000:.0f} ms | {t[k] / t[ref]:.2f} | "
                         f"median radius / Etmann mode {ratio:.3f}, "
                         f"success {float(torch.isfinite(v).float().mean()):.2f} | |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--run-dir", type=Path, default=ROOT / "runs" / "default",
                    help="where trained default-profile models live (optional)")
    ap.add_argument("--old", default=None, help="git revision whose lib/boundary.py holds the two old searches")
    ap.add_argument("--radius-only", action="store_true", help="skip the ρ̃ rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch {metadata.version('torch')}, "
          f"min of {args.repeats} interleaved repeats\n")
    print("| task | method | time | ratio to ours | agreement | Jacobian memory |")
    print("|---|---|---|---|---|---|")
    for line in (([] if args.radius_only else bench_linearized(args.repeats))
                 + bench_radius(args.repeats, args.run_dir, args.old)):
        print(line, flush=True)


if __name__ == "__main__":
    main()
