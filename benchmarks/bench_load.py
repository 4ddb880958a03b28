"""Training under a fixed competing load vs quiet, and the OpenMP wait policy (issue 18, part 3).

    python benchmarks/bench_load.py                       # default profile, model pgd_0.5, both policies
    python benchmarks/bench_load.py --subset 3000 --policies spin passive

Runs `python -m lib.train --profile default --model pgd_0.5` (fresh run dir each time) in three conditions:
alone; two trainings started at once (other run dirs); alone beside two busy-loop processes. Each under the
OpenMP wait policy `spin` (the environment as it is: libgomp's default spins) or `passive`
(lib.device.QUIET_OPENMP, also given to the competing training). Slowdown = wall time / the same policy's
alone time; fair slowdown = (competing CPU-bound processes + 1) × min(threads, CPUs) / CPUs (a fair share of
the cores); the goal is slowdown <= 1.5 × fair. `--subset` shortens the schedule (train_subset, fewer val/test
images) through a temporary profile. `uptime` load is recorded before and after every run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lib import profiles  # noqa: E402
from lib.device import QUIET_OPENMP, usable_cpus  # noqa: E402

BUSY = [sys.executable, "-c", "while True: pass"]


def _profile(work: Path, subset: int | None) -> Path:
    prof = profiles.load("default")
    if subset:
        prof["train"]["train_subset"] = subset
        prof["train"]["val_images"] = min(prof["train"]["val_images"], 200)
        prof["eval"]["test_images"] = 200
    path = work / "bench_load.yaml"
    path.write_text(yaml.safe_dump(prof))
    return path


def _train_cmd(path: Path, run_dir: Path, model: str) -> list[str]:
    return [sys.executable, "-m", "lib.train", "--profile", str(path), "--model", model, "--run-dir", str(run_dir),
            "--device", "cpu", "--no-progress"]


def run(condition: str, policy: str, path: Path, work: Path, model: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for k in QUIET_OPENMP:
        env.pop(k, None)
    if policy == "passive":
        env.update(QUIET_OPENMP)
    stamp = f"{condition}-{policy}-{time.time_ns()}"
    load0 = os.getloadavg()
    busy = [subprocess.Popen(BUSY) for _ in range(2)] if condition == "busy2" else []
    n_train = 2 if condition == "two_trainings" else 1
    t0 = time.perf_counter()
    procs = [subprocess.Popen(_train_cmd(path, work / f"{stamp}-{i}", model), env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL) for i in range(n_train)]
    ends = []
    for p in procs:
        p.wait()
        ends.append(time.perf_counter() - t0)
        if p.returncode:
            raise RuntimeError(f"training failed ({condition}, {policy})")
    for b in busy:
        b.kill()
        b.wait()
    return {"condition": condition, "policy": policy, "seconds": max(ends), "each": ends, "load_before": load0,
            "load_after": os.getloadavg()}


def child_steps(steps: int, threads: int) -> None:
    """In a fresh process: `steps` PGD-5 training steps of default pgd_0.5; prints wall and CPU seconds."""
    import resource

    import torch

    from lib import models, train

    torch.set_num_threads(threads)
    cfg = profiles.model_config(profiles.load("default"), "pgd_0.5")
    torch.manual_seed(0)
    net = models.build("small_cnn", 10, 1, 28, **cfg["arch_kwargs"])
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x, y = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
    for i in range(steps + 2):  # two warm-up steps
        if i == 2:
            t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        train._train_step(net, net, x, y, cfg, opt, scaler, None, torch.Generator().manual_seed(i), 0, 1)
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall": time.perf_counter() - t0, "cpu": r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime}))


def micro(policies, threads_list, steps: int, repeats: int) -> list[dict]:
    """Step timing in fresh processes per (policy, threads), interleaved, under whatever load there is."""
    rows = []
    for rep in range(repeats):
        for policy in policies:
            for threads in threads_list:
                env = {**os.environ, "PYTHONPATH": str(ROOT)}
                for k in QUIET_OPENMP:
                    env.pop(k, None)
                if policy == "passive":
                    env.update(QUIET_OPENMP)
                load0 = os.getloadavg()[0]
                out = subprocess.run([sys.executable, __file__, "--child-steps", str(steps), "--threads", str(threads)],
                                     env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
                r = {**json.loads(out.strip().splitlines()[-1]), "policy": policy, "threads": threads, "repeat": rep,
                     "load_before": load0, "load_after": os.getloadavg()[0]}
                rows.append(r)
                print(f"{policy:8s} threads={threads}: {1000 * r['wall'] / steps:7.1f} ms/step wall, "
                      f"{1000 * r['cpu'] / steps:7.1f} ms/step CPU  (load {load0:.1f})", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child-steps", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, nargs="+", default=[usable_cpus()])
    p.add_argument("--micro", action="store_true", help="step timing per policy and thread count instead")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--model", default="pgd_0.5")
    p.add_argument("--subset", type=int, default=None, help="train_subset of a shortened schedule")
    p.add_argument("--policies", nargs="+", default=["spin", "passive"], choices=["spin", "passive"])
    p.add_argument("--conditions", nargs="+", default=["alone", "two_trainings", "busy2"])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "load.json"))
    a = p.parse_args(argv)
    if a.child_steps:
        child_steps(a.child_steps, a.threads[0])
        return 0
    if a.micro:
        rows = micro(a.policies, a.threads, a.steps, a.repeats)
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"cpus": usable_cpus(), "micro": rows}, indent=1))
        return 0
    cpus = usable_cpus()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = _profile(work, a.subset)
        for policy in a.policies:
            for condition in a.conditions:
                r = run(condition, policy, path, work, a.model)
                others = {"alone": 0, "two_trainings": 1, "busy2": 2}[condition]
                r["fair_slowdown"] = (others + 1) * min(cpus, cpus) / cpus
                rows.append(r)
                print(f"{policy:8s} {condition:14s} {r['seconds']:7.1f} s  load {r['load_before'][0]:.1f} -> "
                      f"{r['load_after'][0]:.1f}", flush=True)
    for r in rows:
        alone = next(x["seconds"] for x in rows if x["policy"] == r["policy"] and x["condition"] == "alone")
        r["slowdown"] = r["seconds"] / alone
        r["vs_fair"] = r["slowdown"] / r["fair_slowdown"]
        print(f"{r['policy']:8s} {r['condition']:14s} slowdown {r['slowdown']:.2f}x  fair {r['fair_slowdown']:.1f}x  "
              f"ratio to fair {r['vs_fair']:.2f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"cpus": cpus, "model": a.model, "subset": a.subset, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
