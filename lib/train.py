"""Standard, PGD and gradient-norm training with exact resume, val-based selection and DDP.

    python -m lib.train --profile default --model robust --run-dir runs/default
    torchrun --nproc-per-node 4 -m lib.train --profile cifar10 --model robust --run-dir runs/cifar10

Randomness is a pure function of (seed, epoch, step): the batch order, the augmentation
and the PGD start all come from generators seeded that way, so a run killed at any step and
started again ends with bitwise the same weights, and N ranks see the same global batch as
one process: each rank reads (and augments) only its rows of it, and BatchNorm normalises over
all of it (distributed.global_batchnorm). Only rank 0 writes.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from lib import attacks, checkpoints, data, distributed, models, profiles
from lib.device import allow_tf32, exact_fp32, resolve_device
from lib.paths import DATA_DIR, RUNS_DIR
from lib.progress import interactive, tqdm
from lib.results import environment

# ---------------------------------------------------------------- public API

def get_model(profile: dict, key: str, run_dir: str | Path, *, seed: int = 0, device="cpu", data_root="data",
              train_if_missing: bool = True, progress: bool = True) -> models.Classifier:
    """Model `key` (training-seed index `seed`) of `profile`: loaded if a finished run with the same config
    exists, else trained."""
    out_dir = profiles.model_dir(run_dir, profile, key, seed)
    if checkpoints.is_complete(out_dir):
        return checkpoints.load_model(out_dir, device)
    if not train_if_missing:
        raise FileNotFoundError(f"model {key!r} (seed {seed}) of profile {profile['name']!r} is not trained yet "
                                f"({out_dir}): "
                                f"run notebook 01 or `python -m lib.train --profile {profile['name']} "
                                f"--model {key} --run-dir {run_dir}` first.")
    cfg = profiles.model_config(profile, key, seed)
    return train(cfg, out_dir, device=device, data_root=data_root, progress=progress,
                 meta_extra={"profile": profile["name"], "key": key, "seed_index": seed,
                             "unit": profiles.unit_id(key, seed)})


@exact_fp32
def evaluate(model, ds, *, eps: float, step_size: float, steps: int, norm: str = "l2", batch_size: int = 256,
             max_images: int | None = None, device="cpu", seed: int = 0, progress: bool = False) -> dict:
    """Clean and PGD accuracy in percent on the first `max_images` of `ds`, and per image (`correct`: 0/1 lists
    `clean` and `pgd`, image j = dataset index j, so every model's lists are paired)."""
    n = len(ds) if max_images is None else min(len(ds), max_images)
    gen = torch.Generator(device=device).manual_seed(seed)
    clean, robust = [], []
    for start in tqdm(range(0, n, batch_size), desc="eval", disable=not progress, leave=False):
        x, y = ds.batch(torch.arange(start, min(n, start + batch_size)), device)
        with torch.no_grad(), models.eval_mode(model):
            clean.append(model(x).argmax(1) == y)
        xa = attacks.pgd(model, x, y, eps=eps, step_size=step_size, steps=steps, norm=norm, generator=gen)
        with torch.no_grad(), models.eval_mode(model):
            robust.append(model(xa).argmax(1) == y)
    clean, robust = torch.cat(clean).int().tolist(), torch.cat(robust).int().tolist()
    return {"clean_acc": 100.0 * sum(clean) / n, "pgd_acc": 100.0 * sum(robust) / n, "n": n,
            "correct": {"clean": clean, "pgd": robust}}


def train(cfg: dict, out_dir: str | Path, *, device="cpu", data_root="data", progress: bool = True,
          meta_extra: dict | None = None) -> models.Classifier:
    """Train one model from a `profiles.model_config` dict; resume from out_dir/state.pt if present."""
    device = resolve_device(device)
    rank, world = _dist_setup(device)
    with allow_tf32(cfg["tf32"]):  # a speed option for training only; evaluation runs in exact fp32
        _train(cfg, Path(out_dir), device, rank, world, data_root, progress, meta_extra)
    if world > 1:
        dist.barrier()
    return checkpoints.load_model(out_dir, device)


def _train(cfg, out_dir, device, rank, world, data_root, progress, meta_extra) -> None:
    torch.manual_seed(cfg["seed"])
    opts = cfg.get("dataset_options") or {}
    train_ds = data.load(cfg["dataset"], "train", data_root, **opts)
    val_ds = data.load(cfg["dataset"], "val", data_root, **opts)
    if cfg["train_subset"]:
        train_ds = train_ds.subset(torch.arange(min(cfg["train_subset"], len(train_ds))))
    train_ds = _place(train_ds, device, cfg["data_on_device"])
    arch = _arch(cfg, train_ds)
    model = models.build(arch["name"], arch["num_classes"], arch["in_channels"], arch["image_size"],
                         **arch["kwargs"]).to(device)
    if world > 1:  # before the optimizer exists: the conversion makes new parameter tensors
        distributed.global_batchnorm(model)  # statistics of the global batch, as in one process
    if cfg["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                          weight_decay=cfg["weight_decay"], nesterov=cfg["nesterov"])
    if cfg["batch_size"] % world:
        raise ValueError(f"batch_size {cfg['batch_size']} must be divisible by the {world} processes")
    steps_per_epoch = len(train_ds) // cfg["batch_size"]  # drop_last: every step sees a full batch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg["amp"] == "fp16")
    state = {"epoch": 0, "step": 0, "history": [], "best": None, "best_metric": -1.0, "seconds": 0.0}
    state_path = out_dir / checkpoints.STATE_FILE
    if state_path.is_file():
        saved = checkpoints.load_state(state_path)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        _set_rng(saved["rng"])
        state = saved["loop"]
        if rank == 0:
            print(f"resuming {out_dir.name} at epoch {state['epoch']} step {state['step']}")
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    attack_model = torch.compile(model) if cfg["compile"] else model
    net = torch.compile(net) if cfg["compile"] else net
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, None: None}[cfg["amp"]]
    ev = cfg["eval"]

    def save():
        if rank == 0:
            checkpoints.save_state({"model": model.state_dict(), "optimizer": opt.state_dict(),
                                    "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                                    "rng": _get_rng(), "loop": state}, state_path)

    t_start = time.time() - state["seconds"]
    while state["epoch"] < cfg["epochs"]:
        epoch = state["epoch"]
        order = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(_seed(cfg, epoch)))
        bar = tqdm(total=steps_per_epoch, initial=state["step"], desc=f"{out_dir.name} epoch {epoch + 1}/"
                   f"{cfg['epochs']}", disable=not progress or rank > 0 or not interactive(), leave=False,
                   unit="steps")  # not interactive: the epoch line below is the one summary line
        run_loss = run_acc = 0.0
        while state["step"] < steps_per_epoch:
            step = state["step"]
            idx = order[step * cfg["batch_size"]:(step + 1) * cfg["batch_size"]]
            gen = torch.Generator(device=device).manual_seed(_seed(cfg, epoch, step))
            x, y = train_ds.batch(idx[rank::world], device)  # read only this rank's share of the global batch
            x = _augment(x, cfg["augment"], gen, len(idx), slice(rank, None, world))
            loss, acc = _train_step(net, attack_model, x, y, cfg, opt, scaler, amp_dtype, gen, rank, world)
            sched.step()
            run_loss, run_acc = 0.9 * run_loss + 0.1 * loss, 0.9 * run_acc + 0.1 * acc
            state["step"] += 1
            bar.update()
            bar.set_postfix(loss=f"{run_loss / (1 - 0.9 ** (step + 1)):.3f}",
                            acc=f"{run_acc / (1 - 0.9 ** (step + 1)):.2f}")
            if cfg["ckpt_every"] and state["step"] % cfg["ckpt_every"] == 0 and state["step"] < steps_per_epoch:
                state["seconds"] = time.time() - t_start
                save()
        bar.close()
        row = {"epoch": epoch + 1, "lr": sched.get_last_lr()[0], "train_loss": run_loss / (1 - 0.9 ** steps_per_epoch),
               "train_acc": 100 * run_acc / (1 - 0.9 ** steps_per_epoch)}
        if rank == 0:
            val = validate(model, val_ds, cfg, device)
            row.update({f"val_{k}": v for k, v in val.items() if k not in ("n", "correct")})
            metric = _selection_metric(cfg, val)
            if metric > state["best_metric"]:  # selection on val, never on test
                state["best_metric"], state["best_epoch"] = metric, epoch + 1
                state["best"] = copy.deepcopy(model.state_dict())
            if progress:
                print(f"{out_dir.name} epoch {epoch + 1}: " + ", ".join(
                    f"{k}={v:.3g}" for k, v in row.items() if k != "epoch"))
        state["history"].append(row)
        state["epoch"] += 1
        state["step"] = 0
        state["seconds"] = time.time() - t_start
        save()
        if world > 1:
            dist.barrier()
    if rank == 0 and not checkpoints.is_complete(out_dir):
        model.load_state_dict(state["best"])
        test = evaluate(model, data.load(cfg["dataset"], "test", data_root, **opts), eps=ev["eps"],
                        step_size=ev["step_size"], steps=ev["steps"], norm=ev["norm"],
                        max_images=ev.get("test_images"), device=device, seed=cfg["seed"], progress=progress)
        meta = {**(meta_extra or {}), "config": cfg, "config_hash": profiles.config_hash(cfg), "arch": arch,
                "metrics": {"clean_acc": test["clean_acc"], "pgd_acc": test["pgd_acc"], "test_images": test["n"],
                            "best_epoch": state.get("best_epoch"), "val_metric": state["best_metric"],
                            "correct": test["correct"]},
                "history": state["history"], "train_seconds": state["seconds"], "world_size": world,
                "environment": environment(device)}
        checkpoints.save_model(model, meta, out_dir)


# ---------------------------------------------------------------- one step

def _train_step(net, model, x, y, cfg, opt, scaler, amp_dtype, gen, rank, world):
    if cfg["mode"] == "pgd":
        # One noise draw for the global batch, sliced per rank: N ranks == 1 process.
        full = (x.shape[0] * world, *x.shape[1:])
        noise = attacks.random_perturbation(torch.empty(full, device=x.device), cfg["eps"], cfg["norm"],
                                            generator=gen)[rank::world]
        x = attacks.pgd(model, x, y, eps=cfg["eps"], step_size=cfg["step_size"], steps=cfg["steps"],
                        norm=cfg["norm"], delta0=noise, autocast=amp_dtype)
    if cfg["channels_last"]:
        x = x.contiguous(memory_format=torch.channels_last)
    net.train()
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        if cfg["mode"] == "gradnorm":
            x = x.clone().requires_grad_(True)
            logits = net(x)
            ce_sum = F.cross_entropy(logits.float(), y, reduction="sum")
            (g,) = torch.autograd.grad(ce_sum, x, create_graph=True)  # per-example ∇ₓCE
            loss = ce_sum / len(y) + cfg["lam"] * g.float().pow(2).flatten(1).sum(1).mean()
        else:
            logits = net(x)
            loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss.item()}; lower the learning rate (lr={cfg['lr']}).")
    return loss.item(), (logits.argmax(1) == y).float().mean().item()


def _augment(x: torch.Tensor, kind: str | None, gen: torch.Generator, n_global: int | None = None,
             share: slice = slice(None)) -> torch.Tensor:
    """crop_flip: random 4-pixel-padded crop and horizontal flip, drawn from `gen`.

    The draws are made for the `n_global` images of the global batch and their `share` applied to x,
    so a rank that holds only its rows augments them exactly as one process would."""
    if kind is None:
        return x
    if kind != "crop_flip":
        raise ValueError(f"unknown augmentation {kind!r}; use null or crop_flip")
    n, _, h, w = x.shape
    total = n_global or n
    pad = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dx, dy = (torch.randint(0, 9, (total,), generator=gen, device=x.device)[share] for _ in range(2))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = pad[torch.arange(n, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)
              [None, :, None, None], rows, cols]
    flip = torch.rand(total, generator=gen, device=x.device)[share] < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def _lr_lambda(cfg: dict, steps_per_epoch: int):
    total = max(1, cfg["epochs"] * steps_per_epoch)
    warm = cfg["warmup_epochs"] * steps_per_epoch

    def f(t: int) -> float:
        if t < warm:
            return (t + 1) / warm
        if cfg["schedule"] == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (t - warm) / max(1, total - warm)))
        if cfg["schedule"] == "step":
            return 0.1 ** sum(t >= m * steps_per_epoch for m in cfg["milestones"])
        if cfg["schedule"] == "onecycle":  # linear up to the peak at 40 %, then linearly to 0
            peak = 0.4 * total
            return t / peak if t < peak else max(0.0, (total - t) / (total - peak))
        if cfg["schedule"] == "constant":
            return 1.0
        raise ValueError(f"unknown schedule {cfg['schedule']!r}; use cosine, step, onecycle or constant")

    return f


# ---------------------------------------------------------------- helpers

def _place(ds: data.ImageTensorDataset, device: torch.device, on_device: bool) -> data.ImageTensorDataset:
    """On a GPU: the whole dataset on it (small datasets), or in pinned memory for non-blocking copies
    (up to PIN_BYTES; a larger store, such as ImageNet-150's memory-mapped cache, stays mapped)."""
    if device.type != "cuda":
        return ds
    if on_device:
        return ds.to(device)
    return ds.to(device, pin=True) if len(ds) * ds.store[0].numel() <= PIN_BYTES else ds


PIN_BYTES = 4 << 30


def _arch(cfg: dict, ds: data.ImageTensorDataset) -> dict:
    c, _, size = ds.shape
    return {"name": cfg["arch"], "num_classes": len(ds.classes), "in_channels": c,
            "image_size": size, "kwargs": dict(cfg["arch_kwargs"])}


def validate(model, val_ds, cfg: dict, device) -> dict:
    """Validation accuracy (%) that selects the checkpoint: clean, PGD at the evaluation ε (`pgd_acc`) and, for a
    PGD-trained model, PGD at its own training ε (`own_pgd_acc`, step 2.5·ε/val_steps, Madry's rule)."""
    ev = cfg["eval"]
    kw = dict(norm=ev["norm"], max_images=cfg["val_images"], device=device, seed=cfg["seed"])
    val = evaluate(model, val_ds, eps=ev["eps"], step_size=ev["step_size"], steps=ev["val_steps"], **kw)
    if cfg["mode"] == "pgd" and cfg["eps"] > 0:
        own = evaluate(model, val_ds, eps=cfg["eps"], step_size=2.5 * cfg["eps"] / ev["val_steps"],
                       steps=ev["val_steps"], **{**kw, "norm": cfg["norm"]})
        val["own_pgd_acc"] = own["pgd_acc"]
    return val


def _selection_metric(cfg: dict, val: dict) -> float:
    """Checkpoint selection on val (`select`): auto — a PGD-trained model by PGD accuracy at its own training ε
    (not at the evaluation ε, which would pick an early, less accurate checkpoint of a weakly trained model),
    every other model by clean accuracy; mean — the mean of clean and PGD accuracy (Boychev's code; PGD at the
    model's own ε when it is PGD-trained, else at the evaluation ε); pgd — PGD accuracy at the evaluation ε;
    clean."""
    robust = val.get("own_pgd_acc", val["pgd_acc"])
    kind = cfg["select"]
    if kind == "auto":
        return robust if "own_pgd_acc" in val else val["clean_acc"]
    if kind == "mean":
        return 0.5 * (val["clean_acc"] + robust)
    if kind in ("pgd", "clean"):
        return val[f"{kind}_acc"]
    raise ValueError(f"unknown checkpoint selection {cfg['select']!r}; use auto, pgd, clean or mean")


def _seed(cfg: dict, epoch: int, step: int = -1) -> int:
    return (cfg["seed"] * 1_000_003 + epoch * 100_003 + step + 1) % 2**63


def _get_rng() -> dict:
    np_state = np.random.get_state()
    py = random.getstate()
    rng = {"torch": torch.get_rng_state(), "python": list(py[1]), "python_gauss": py[2],
           "numpy": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2]),
           "numpy_gauss": [int(np_state[3]), float(np_state[4])]}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _set_rng(rng: dict) -> None:
    torch.set_rng_state(rng["torch"])
    random.setstate((3, tuple(rng["python"]), rng["python_gauss"]))
    np.random.set_state(("MT19937", rng["numpy"].numpy().astype(np.uint32), rng["numpy_pos"],
                         *rng["numpy_gauss"]))
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def _dist_setup(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Train (or resume) one model of a profile.")
    p.add_argument("--profile", required=True, help="profile name or path to a YAML file")
    p.add_argument("--model", required=True, help="model key of the profile, e.g. standard or robust")
    p.add_argument("--run-dir", default=None, help="default: runs/<profile>")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--data-root", default=str(DATA_DIR))
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    prof = profiles.load(a.profile)
    run_dir = a.run_dir or RUNS_DIR / prof["name"]
    model = get_model(prof, a.model, run_dir, device=a.device, data_root=a.data_root, progress=not a.no_progress)
    if int(os.environ.get("RANK", "0")) == 0:
        m = model.meta["metrics"]
        print(f"{a.model}: clean {m['clean_acc']:.2f}%  PGD {m['pgd_acc']:.2f}%  -> "
              f"{profiles.model_dir(run_dir, prof, a.model)}")
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
