"""`make gpu-check`: what the paper profiles cost on this GPU, and whether the GPU computes what the CPU does.

    python benchmarks/gpu_check.py                     # one GPU, <= 10 min, no downloads
    python benchmarks/gpu_check.py --device cpu --quick --out /tmp/x   # the same code, tiny, on CPU (tested)

1. training-step time of cifar10 (fp32, PGD-20, batch 128), cifar10_fast (bf16, channels_last, compile) and
   imagenet150 (ResNet50 at 128², bf16, PGD-20, batch 256) for every training mode, extrapolated to each
   profile's full schedule (train-set size / batch × epochs, summed over its models; training steps only);
2. CPU vs device agreement of every attribution method and of alignment.measure, same weights, same inputs;
3. peak GPU memory of the heavy calls: ρ̃ over 150 classes, boundary search on 1000 images, AGI;
4. the whole notebook pipeline on a tiny CIFAR-format profile (generated files) on the device;
5. benchmarks/results/gpu-<device>.json and the table between the gpu-check markers of benchmarks/README.md.
Data are synthetic tensors and generated CIFAR-format files; FID features are the domain extractor (the tiny
profile), so no Inception weights are needed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib import alignment, attributions, boundary, models, pipeline, profiles, synthetic, train  # noqa: E402
from lib.device import allow_tf32, exact_fp32, resolve_device  # noqa: E402
from lib.results import environment  # noqa: E402

TRAIN_SIZE = {"cifar10": 45000, "imagenet150": 90000}  # train split after the val hold-out
README = ROOT / "benchmarks" / "README.md"
MARK = ("<!-- gpu-check:start -->", "<!-- gpu-check:end -->")


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_training(name: str, device, quick: bool) -> dict:
    """Seconds per training step of each mode in profile `name`, and the extrapolated full schedule."""
    prof = profiles.load(name)
    out = {"profile": name, "modes": {}}
    seen = {}
    for key in prof["models"]:
        cfg = profiles.model_config(prof, key)
        mode_key = (cfg["mode"], cfg["steps"])
        if mode_key not in seen:
            seen[mode_key] = _step_seconds(cfg, device, quick)
            out["modes"][f"{cfg['mode']}-{cfg['steps']}"] = seen[mode_key]
    steps = TRAIN_SIZE[prof["dataset"]] // prof["train"]["batch_size"] * prof["train"]["epochs"]
    per_model = {k: seen[(c["mode"], c["steps"])]["seconds_per_step"] * steps
                 for k, c in ((k, profiles.model_config(prof, k)) for k in prof["models"])}
    out.update(steps_per_model=steps, hours_per_model={k: v / 3600 for k, v in per_model.items()},
               hours_total=sum(per_model.values()) / 3600, quick=quick)
    return out


def _step_seconds(cfg: dict, device, quick: bool) -> dict:
    size = 128 if cfg["dataset"] == "imagenet150" else 32
    classes = 150 if cfg["dataset"] == "imagenet150" else 10
    batch = cfg["batch_size"]
    if quick:  # the same code path on CPU in seconds: a tiny CNN, tiny batch, one PGD step, no compile
        cfg = {**cfg, "steps": min(cfg["steps"], 1), "compile": False, "arch": "small_cnn", "arch_kwargs": {"width": 4}}
        batch, size = 2, 16
    model = models.build(cfg["arch"], classes, 3, size, **cfg["arch_kwargs"]).to(device)
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    net = torch.compile(model) if cfg["compile"] else model
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[cfg["amp"]]
    scaler = torch.amp.GradScaler(device.type, enabled=cfg["amp"] == "fp16")
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    n_warm, n_timed = (1, 1) if quick else (3, 10)  # warm-up includes torch.compile
    with allow_tf32(cfg["tf32"]):
        t0 = time.perf_counter()
        for i in range(n_warm + n_timed):
            if i == n_warm:
                _sync(device)
                t_warm, t0 = time.perf_counter() - t0, time.perf_counter()
            train._train_step(net, net, x, y, cfg, opt, scaler, amp, gen, 0, 1)
        _sync(device)
    return {"seconds_per_step": (time.perf_counter() - t0) / n_timed, "warmup_seconds": t_warm, "batch": batch,
            "image_size": size, "pgd_steps": cfg["steps"], "amp": cfg["amp"], "compile": cfg["compile"],
            "channels_last": cfg["channels_last"]}


def agreement(device, quick: bool) -> dict:
    """Max relative difference |a_dev − a_cpu| / |a_cpu| per attribution method and alignment quantity."""
    torch.manual_seed(0)
    net = (models.build("small_cnn", 10, 3, 16, width=4) if quick else models.build("resnet18_cifar", 10, 3, 32)).eval()
    size = 16 if quick else 32
    x = torch.rand(4 if quick else 16, 3, size, size, generator=torch.Generator().manual_seed(1))
    cfg = profiles.load("smoke")["attributions"]
    out = {}
    res = {}
    for dev in (torch.device("cpu"), device):
        m, xd = net.to(dev), x.to(dev)
        target = attributions.logits(m, xd).argmax(1)
        exp = attributions.explain(m, xd, target, cfg, background=xd.flip(0), seed=0)
        al = alignment.measure(m, xd, progress=False, steps=3, bisect_steps=3)
        res[dev.type] = ({k: v.cpu() for k, v in exp.maps.items()}, {k: v.cpu() for k, v in al.items()})
    (cpu_maps, cpu_al), (dev_maps, dev_al) = res["cpu"], res[device.type]
    for k in cpu_maps:
        out[f"attributions.{k}"] = _rel(dev_maps[k], cpu_maps[k])
    for k in cpu_al:
        out[f"alignment.{k}"] = _rel(dev_al[k], cpu_al[k])
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float | None:
    a, b = a.double().flatten(), b.double().flatten()
    ok = torch.isfinite(a) & torch.isfinite(b)
    if not ok.any():
        return None
    return float((a[ok] - b[ok]).norm() / b[ok].norm().clamp_min(1e-30))


@exact_fp32
def peak_memory(device, quick: bool) -> dict:
    """Peak allocated GiB of each heavy call at the paper profiles' sizes (None on CPU)."""
    if device.type != "cuda":
        return {"note": "peak GPU memory is measured on CUDA only"}
    n50, n1000, size = (2, 8, 64) if quick else (50, 1000, 128)
    calls = {
        "rho_lin_150_classes_resnet50_128px_batch50": lambda: alignment.linearize(
            models.build("resnet50", 150, 3, size).to(device).eval(), torch.rand(n50, 3, size, size, device=device)),
        "boundary_search_1000_images_resnet18_cifar": lambda: attributions.boundary_search(
            models.build("resnet18_cifar", 10, 3, 32).to(device).eval(), torch.rand(n1000, 3, 32, 32, device=device),
            torch.zeros(n1000, dtype=torch.long, device=device), eps_list=[0.25, 0.5, 1.0, 2.0], steps=40,
            **boundary.WANG),
        "agi_resnet50_128px_20_classes_batch64": lambda: attributions.agi(
            models.build("resnet50", 150, 3, size).to(device).eval(), torch.rand(n50, 3, size, size, device=device),
            torch.zeros(n50, dtype=torch.long, device=device), steps=20, step_size=0.05, classes=20, batch_size=256),
    }
    out = {}
    for name, call in calls.items():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        t0 = time.perf_counter()
        call()
        _sync(device)
        out[name] = {"peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
                     "seconds": time.perf_counter() - t0}
    return out


def tiny_pipeline(device, quick: bool, work: Path) -> dict:
    """Every notebook (only 01 with --quick) on generated CIFAR-format files, on the device."""
    _, md5 = synthetic.cifar(work / "data", n=60, learnable=True)
    prof = synthetic.tiny_profile("cifar10", {"checksums": md5})
    path = work / "gpu_check_cifar_format.yaml"
    path.write_text(__import__("yaml").safe_dump(prof))
    t0 = time.perf_counter()
    quick_set = {"train": {"epochs": 1}, "eval": {"test_images": 16, "steps": 2}} if quick else None
    summary = pipeline.run(str(path), only=["01"] if quick else None, device=str(device), run_dir=work / "run",
                           fig_dir=work / "figures", data_root=work / "data", overrides=quick_set,
                           log=lambda *a, **k: None)
    return {"seconds": time.perf_counter() - t0, "notebooks": sorted(summary),
            "timings_s": json.loads((work / "run" / "timings.json").read_text())}


def markdown(res: dict) -> str:
    env = res["environment"]
    gpu = env.get("device_name") or res["device"]
    lines = [f"Measured by `make gpu-check` on {gpu} ({res['date']}, torch {env.get('versions', {}).get('torch')})"
             + (" — **--quick: tiny sizes, not a measurement of the paper profiles**" if res["quick"] else "") + ".",
             "", "| profile | mode | s/step | batch | full schedule per model (h) |", "|---|---|---|---|---|"]
    for t in res["training"]:
        for mode, m in t["modes"].items():
            hours = m["seconds_per_step"] * t["steps_per_model"] / 3600
            lines.append(f"| {t['profile']} | {mode} | {m['seconds_per_step']:.3f} | {m['batch']} | {hours:.2f} |")
        n_models = len(t["hours_per_model"])
        lines.append(f"| {t['profile']} | **all {n_models} models** | | | **{t['hours_total']:.1f}** |")
    lines += ["", "| CPU vs device, relative L2 difference | value |", "|---|---|"]
    lines += [f"| {k} | {v:.2e} |" if v is not None else f"| {k} | n/a |" for k, v in res["agreement"].items()]
    lines += ["", "| heavy call | peak GiB | s |", "|---|---|---|"]
    lines += [f"| {k} | {v['peak_gib']:.2f} | {v['seconds']:.1f} |" for k, v in res["memory"].items()
              if isinstance(v, dict)]
    p = res["pipeline"]
    lines += ["", f"Tiny CIFAR-format pipeline on the device: {p['seconds']:.0f} s ({', '.join(p['notebooks'])})."]
    return "\n".join(lines)


def write_readme(text: str, readme: Path) -> None:
    body = readme.read_text() if readme.is_file() else ""
    block = f"{MARK[0]}\n{text}\n{MARK[1]}"
    if MARK[0] in body:
        body = re.sub(re.escape(MARK[0]) + ".*?" + re.escape(MARK[1]), lambda _: block, body, flags=re.S)
    else:
        body += f"\n## GPU check\n\n{block}\n"
    readme.write_text(body)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a CPU smoke run of this script)")
    p.add_argument("--out", default=None, help="folder for results and README (default: benchmarks/)")
    a = p.parse_args(argv)
    device = resolve_device(a.device)
    out_dir = Path(a.out) if a.out else ROOT / "benchmarks"
    res = {"device": str(device), "quick": a.quick, "date": time.strftime("%Y-%m-%d"),
           "environment": environment(device)}
    t0 = time.perf_counter()
    names = ("cifar10", "cifar10_fast", "imagenet150")
    res["training"] = [time_training(n, device, a.quick) for n in names]
    print(f"training steps timed ({time.perf_counter() - t0:.0f} s)", flush=True)
    res["agreement"] = agreement(device, a.quick)
    res["memory"] = peak_memory(device, a.quick)
    with tempfile.TemporaryDirectory() as work:
        res["pipeline"] = tiny_pipeline(device, a.quick, Path(work))
    res["seconds"] = time.perf_counter() - t0
    slug = re.sub(r"[^a-z0-9]+", "-", str(res["environment"].get("device_name") or device.type).lower()).strip("-")
    out = out_dir / "results" / f"gpu-{slug}{'-quick' if a.quick else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    write_readme(markdown(res), out_dir / "README.md")
    print(f"gpu-check finished in {res['seconds']:.0f} s: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
