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
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lib import attacks, checkpoints, data, distributed, joint, models, profiles, recipe
from lib import workers as pool
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
    if checkpoints.is_complete(out_dir):  # verified: weights' SHA-256, folder and profile config hashes
        return checkpoints.load_model(out_dir, device, config=profiles.model_config(profile, key, seed))
    if not train_if_missing:
        raise FileNotFoundError(f"model {key!r} (seed {seed}) of profile {profile['name']!r} is not trained yet "
                                f"({out_dir}): "
                                f"run notebook 01 or `python -m lib.train --profile {profile['name']} "
                                f"--model {key} --run-dir {run_dir}` first.")
    cfg = profiles.model_config(profile, key, seed)
    return train(cfg, out_dir, device=device, data_root=data_root, progress=progress,
                 meta_extra={"profile": profile["name"], "key": key, "seed_index": seed,
                             "unit": profiles.unit_id(key, seed)})


def get_models(profile: dict, units, run_dir: str | Path, *, device="cpu", data_root="data",
               train_if_missing: bool = True, progress: bool = True) -> dict[str, models.Classifier]:
    """{unit id: model} for `units` ("key@i" strings or (key, i) pairs, seed index i as in profiles.units):
    finished ones loaded, the missing ones trained by `train_many` (jointly where `train.joint` allows)."""
    pairs = [profiles.split_unit(u) if isinstance(u, str) else (u[0], int(u[1])) for u in units]
    for key, _ in pairs:
        if "source" in (profile["models"].get(key) or {}):
            raise ValueError(f"model {key!r} of profile {profile['name']!r} is a published checkpoint, not a recipe; "
                             "load it with zoo.get_model.")
    dirs = [profiles.model_dir(run_dir, profile, k, seed=i) for k, i in pairs]
    missing = [(k, i) for (k, i), d in zip(pairs, dirs) if not checkpoints.is_complete(d)]
    if missing and not train_if_missing:
        k, i = missing[0]
        raise FileNotFoundError(f"model {k}@{i} of profile {profile['name']!r} is not trained yet: run notebook 01 "
                                f"or `python -m lib.train --profile {profile['name']} --model {k} --run-dir "
                                f"{run_dir}` first.")
    cfgs = [profiles.model_config(profile, k, seed=i) for k, i in pairs]
    metas = [{"profile": profile["name"], "key": k, "seed_index": i, "unit": profiles.unit_id(k, i)} for k, i in pairs]
    trained = train_many(cfgs, dirs, device=device, data_root=data_root, progress=progress, metas=metas,
                         workers=profile.get("workers", "auto"))
    return {f"{k}@{i}": m for (k, i), m in zip(pairs, trained)}


def train_many(cfgs: list[dict], out_dirs: list[Path], *, device="cpu", data_root="data", progress: bool = True,
               metas: list[dict] | None = None, workers="auto") -> list[models.Classifier]:
    """Train (or resume, or load) every config into its folder: groups of equal shared settings jointly
    (lib.joint, where each config's `joint` knob allows), the rest one by one with `train`, side by side in
    `workers` one-thread processes on a multi-core CPU (lib.workers; "auto": one per usable CPU). Returns the
    models in the order of `cfgs`, each exactly as `train` would have written it (up to float summation order)."""
    if len(cfgs) != len(out_dirs) or (metas is not None and len(metas) != len(cfgs)):
        raise ValueError("train_many needs one out_dir (and one meta, if given) per config.")
    device = resolve_device(device)
    metas = list(metas) if metas is not None else [None] * len(cfgs)
    todo = [i for i, d in enumerate(out_dirs) if not checkpoints.is_complete(d)]
    alone = []
    for group in joint.groups([cfgs[i] for i in todo], device):
        idx = [todo[g] for g in group]
        if len(idx) == 1:
            alone.append(idx[0])
            continue
        with allow_tf32(cfgs[idx[0]]["tf32"]):
            joint.train_group([cfgs[i] for i in idx], [Path(out_dirs[i]) for i in idx], device=device,
                              data_root=data_root, progress=progress, metas=[metas[i] for i in idx])
    n = pool.count(workers, device, len(alone))
    if n > 1:
        _load_once([cfgs[i] for i in alone], data_root)
        if progress:
            print(f"training {len(alone)} models in {n} processes of one thread each (profile `workers`)")
    alone.sort(key=lambda i: -recipe.cost(cfgs[i]))  # longest first: the last job to start is a short one
    pool.run(_train_alone, [(cfgs[i], Path(out_dirs[i]), str(device), data_root, progress, metas[i], n > 1)
                            for i in alone], workers=n, on_done=lambda j, log: print(log, end="") if log else None)
    return [checkpoints.load_model(d, device, config=c) for d, c in zip(out_dirs, cfgs)]  # verified against cfg


def _load_once(cfgs: list[dict], data_root) -> None:
    """Load every split of the configs' datasets here, so that an on-disk image cache (ImageNet-150) is built
    once, before the workers map it, instead of by several workers at once."""
    for name, opts in dict.fromkeys((c["dataset"], json.dumps(c.get("dataset_options") or {}, sort_keys=True))
                                    for c in cfgs):
        for split in ("train", "val", "test"):
            data.load(name, split, data_root, **json.loads(opts))


def _train_alone(cfg, out_dir, device, data_root, progress, meta, in_worker) -> str:
    """One `train` call, as a `lib.workers` job: returns what it printed (a worker's own output goes nowhere)."""
    if not in_worker:
        train(cfg, out_dir, device=device, data_root=data_root, progress=progress, meta_extra=meta)
        return ""
    return pool.captured(train, cfg, out_dir, device=device, data_root=data_root, progress=progress,
                            meta_extra=meta)[1]


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
    return checkpoints.load_model(out_dir, device, config=cfg)


def _train(cfg, out_dir, device, rank, world, data_root, progress, meta_extra) -> None:
    profile_cfg = cfg
    torch.manual_seed(cfg["seed"])
    opts = cfg.get("dataset_options") or {}
    train_ds, val_ds = recipe.train_data(cfg, data_root, device)
    arch = recipe.arch_of(cfg, train_ds)
    model = models.build(arch["name"], arch["num_classes"], arch["in_channels"], arch["image_size"],
                         **arch["kwargs"]).to(device)
    if world > 1:  # before the optimizer exists: the conversion makes new parameter tensors
        distributed.global_batchnorm(model)  # statistics of the global batch, as in one process
    channels_last = cfg["channels_last"]
    if channels_last == "auto":  # DDP's gradient buckets expect contiguous parameters: one process only
        channels_last = device.type == "cpu" and world == 1
    model = models.place(model, device, channels_last)
    cfg = {**cfg, "channels_last": channels_last}  # _train_step's copy; meta.json keeps the profile's value
    opt = torch.optim.SGD(model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                          weight_decay=cfg["weight_decay"], nesterov=cfg["nesterov"])
    if cfg["batch_size"] % world:
        raise ValueError(f"batch_size {cfg['batch_size']} must be divisible by the {world} processes")
    steps_per_epoch = len(train_ds) // cfg["batch_size"]  # drop_last: every step sees a full batch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, recipe.lr_lambda(cfg, steps_per_epoch))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg["amp"] == "fp16")
    state = {"epoch": 0, "step": 0, "history": [], "best": None, "best_metric": -1.0, "seconds": 0.0}
    state_path = out_dir / checkpoints.STATE_FILE
    if state_path.is_file():
        saved = checkpoints.load_state(state_path)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        sched.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        recipe.set_rng(saved["rng"])
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
                                    "rng": recipe.get_rng(), "loop": state}, state_path)

    t_start = time.time() - state["seconds"]
    while state["epoch"] < cfg["epochs"]:
        epoch = state["epoch"]
        order = recipe.batch_order(cfg, epoch, len(train_ds))
        bar = tqdm(total=steps_per_epoch, initial=state["step"], desc=f"{out_dir.name} epoch {epoch + 1}/"
                   f"{cfg['epochs']}", disable=not progress or rank > 0 or not interactive(), leave=False,
                   unit="steps")  # not interactive: the epoch line below is the one summary line
        run_loss = run_acc = 0.0
        while state["step"] < steps_per_epoch:
            step = state["step"]
            idx = order[step * cfg["batch_size"]:(step + 1) * cfg["batch_size"]]
            gen = torch.Generator(device=device).manual_seed(recipe.step_seed(cfg, epoch, step))
            x, y = train_ds.batch(idx[rank::world], device)  # read only this rank's share of the global batch
            x = recipe.augment(x, cfg["augment"], gen, len(idx), slice(rank, None, world))
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
            metric = recipe.selection_metric(cfg, val)
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
        meta = {**(meta_extra or {}), "config": profile_cfg, "config_hash": profiles.config_hash(profile_cfg),
                "arch": arch,
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


# ---------------------------------------------------------------- helpers

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


def _dist_setup(device: torch.device) -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    return dist.get_rank(), dist.get_world_size()


def main(argv=None) -> int:
    """A user error (bad profile or knob, missing data, corrupt checkpoint, divergence) is one sentence on stderr
    and exit code 1; Ctrl-C is one line saying that rerunning resumes."""
    try:
        return _main(argv)
    except (ValueError, OSError, FloatingPointError) as e:
        print(f"train: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("train: interrupted; rerun the same command to resume from the last checkpoint.", file=sys.stderr)
        return 130
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _main(argv) -> int:
    p = argparse.ArgumentParser(description="Train (or resume) models of a profile: one, or several together.")
    p.add_argument("--profile", required=True, help="profile name or path to a YAML file")
    p.add_argument("--model", required=True, nargs="+", help="model key(s) of the profile, e.g. standard robust")
    p.add_argument("--seed", type=int, nargs="+", default=[0], help="training-seed indices (default 0)")
    p.add_argument("--run-dir", default=None, help="default: runs/<profile>")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--data-root", default=str(DATA_DIR))
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    prof = profiles.load(a.profile)
    run_dir = a.run_dir or RUNS_DIR / prof["name"]
    units = [(k, i) for k in a.model for i in a.seed]
    kw = dict(device=a.device, data_root=a.data_root, progress=not a.no_progress)
    if len(units) == 1:  # one model: lib.train alone, DDP under torchrun
        trained = {profiles.unit_id(*units[0]): get_model(prof, units[0][0], run_dir, seed=units[0][1], **kw)}
    else:  # several: jointly where train.joint allows (lib.joint)
        trained = get_models(prof, units, run_dir, **kw)
    if int(os.environ.get("RANK", "0")) == 0:
        for (key, seed), (unit, model) in zip(units, trained.items()):
            m = model.meta["metrics"]
            print(f"{unit}: clean {m['clean_acc']:.2f}%  PGD {m['pgd_acc']:.2f}%  -> "
                  f"{profiles.model_dir(run_dir, prof, key, seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
