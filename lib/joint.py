"""Joint training: N small_cnn models of one recipe family stepped together in one process.

Each member keeps exactly lib.train's semantics: its own init (torch.manual_seed(seed), then models.build),
batch order, augmentation and PGD start (lib.recipe's (seed, epoch, step) generators), SGD, lr schedule,
validation selection, state.pt and model folder, written in lib.train's format. Only the arithmetic is
shared: one grouped convolution (groups=N) and one batched matmul per layer run every member at once, so a
member equals the same model trained alone up to float32 summation order (tests/test_joint.py), and a jointly
trained model resumes bitwise after SIGKILL (same group, same ops, same order).

Members can be grouped when they agree on everything a step shares (`SHARED`): architecture, data, batch
size, epochs, mode and PGD steps/norm, evaluation. lr, momentum, weight decay, schedule, eps, step size, λ,
seed, selection and checkpoint interval stay per member.
"""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lib import attacks, checkpoints, data, models, profiles, recipe
from lib.device import exact_fp32
from lib.progress import interactive, tqdm
from lib.results import environment

ARCHS = ("small_cnn",)
SHARED = ("arch", "arch_kwargs", "dataset", "dataset_options", "batch_size", "epochs", "train_subset", "augment",
          "val_images", "eval", "mode", "norm", "steps", "amp", "channels_last", "data_on_device", "tf32")


def unsupported(cfg: dict) -> str | None:
    """Why `cfg` cannot be trained jointly (one sentence), or None when it can."""
    if cfg["arch"] not in ARCHS:
        return f"joint training supports {', '.join(ARCHS)} only; {cfg['arch']} trains one model at a time"
    if cfg["amp"] == "fp16":
        return "fp16 needs one loss scaler per model; amp fp16 trains one model at a time"
    if cfg["compile"]:
        return "torch.compile is applied to one model; compile: true trains one model at a time"
    return None


def wanted(cfg: dict, device: torch.device) -> bool:
    """The `joint` knob: true, false, or auto: joint on CUDA, one model at a time on CPU, where the grouped
    convolutions did not pay (benchmarks/README.md, "Joint training": 0.13-1.05x on the 2-core CPU under load)."""
    knob = cfg.get("joint", "auto")
    if knob not in ("auto", True, False):
        raise ValueError(f"train.joint must be auto, true or false, got {knob!r}")
    return device.type == "cuda" if knob == "auto" else knob


def groups(cfgs: list[dict], device: torch.device) -> list[list[int]]:
    """Indices of `cfgs` partitioned into joint groups (a group of one trains alone), first-seen order."""
    out: dict[str, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        key = (json.dumps({k: cfg.get(k) for k in SHARED}, sort_keys=True, default=str)
               if wanted(cfg, device) and unsupported(cfg) is None else f"alone-{i}")
        out.setdefault(key, []).append(i)
    return list(out.values())


class JointCNN(torch.nn.Module):
    """N small_cnn Classifiers as one network: x (N·B, C, H, W) in [0,1], member-major (rows k·B..(k+1)·B−1
    are member k's) -> logits (N·B, classes). The members' own parameters are concatenated on every call, so
    gradients land in each member's tensors and each member keeps its own optimiser."""

    def __init__(self, members: list[models.Classifier], channels_last: bool = True):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.channels_last = channels_last  # benchmarks/README.md: faster for the grouped layout on CPU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ms, n = self.members, len(self.members)
        b, (c, h, w) = x.shape[0] // n, x.shape[1:]
        z = x.reshape(n, b, c, h, w)
        if isinstance(ms[0].normalize, models.Normalize):
            z = (z - torch.stack([m.normalize.mean for m in ms])) / torch.stack([m.normalize.std for m in ms])
        z = z.transpose(0, 1).reshape(b, n * c, h, w)
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        for i in (0, 3):  # conv-relu-pool ×2, all members in one grouped convolution
            conv = [m.body[i] for m in ms]
            bias = torch.cat([k.bias for k in conv]) if conv[0].bias is not None else None
            z = F.max_pool2d(F.relu(F.conv2d(z, torch.cat([k.weight for k in conv]), bias, padding=1, groups=n)), 2)
        z = z.reshape(b, n, -1).transpose(0, 1)  # (N, B, D) in each member's Flatten order
        z = F.relu(_linear(z, [m.body[7] for m in ms]))
        return _linear(z, [m.head for m in ms]).reshape(n * b, -1)


def _linear(z: torch.Tensor, layers) -> torch.Tensor:
    w = torch.stack([k.weight for k in layers]).transpose(1, 2)  # (N, in, out)
    if layers[0].bias is None:
        return torch.bmm(z, w)
    return torch.baddbmm(torch.stack([k.bias for k in layers]).unsqueeze(1), z, w)


@exact_fp32
def evaluate_many(members, ds, *, eps, step_size, steps: int, norm: str = "l2", batch_size: int = 256,
                  max_images: int | None = None, device="cpu", seeds: list[int], progress: bool = False) -> list[dict]:
    """train.evaluate of every member at once, as train.evaluate returns it (clean_acc, pgd_acc in %, n, and
    per image `correct`), on the first `max_images` of `ds`. eps, step_size: one float, or one per member;
    member k's PGD starts come from its own generator seeded `seeds[k]`, batch by batch as in train.evaluate."""
    joint, k = JointCNN(list(members)), len(members)
    eps, step_size = (list(v) if isinstance(v, (list, tuple)) else [v] * k for v in (eps, step_size))
    n = len(ds) if max_images is None else min(len(ds), max_images)
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    clean, robust = [], []
    for start in tqdm(range(0, n, batch_size), desc="eval", disable=not progress, leave=False):
        x, y = ds.batch(torch.arange(start, min(n, start + batch_size)), device)
        xs, ys, b = x.repeat(k, 1, 1, 1), y.repeat(k), len(y)
        with torch.no_grad(), models.eval_mode(joint):
            clean.append((joint(xs).argmax(1) == ys).view(k, b))
        # as attacks.pgd: a member attacked at eps 0 draws no start and keeps its images
        noise = torch.cat([attacks.random_perturbation(x, e, norm, generator=g) if e else torch.zeros_like(x)
                           for e, g in zip(eps, gens)])
        xa = attacks.pgd(joint, xs, ys, eps=_rows(eps, x, b), step_size=_rows(step_size, x, b), steps=steps,
                         norm=norm, delta0=noise)
        with torch.no_grad(), models.eval_mode(joint):
            robust.append((joint(xa).argmax(1) == ys).view(k, b))
    clean, robust = torch.cat(clean, 1).int().cpu(), torch.cat(robust, 1).int().cpu()
    return [{"clean_acc": 100.0 * c.sum().item() / n, "pgd_acc": 100.0 * r.sum().item() / n, "n": n,
             "correct": {"clean": c.tolist(), "pgd": r.tolist()}} for c, r in zip(clean, robust)]


def validate_many(members, val_ds, cfgs: list[dict], device) -> list[dict]:
    """train.validate of every member: clean and PGD accuracy at the evaluation ε, and for PGD-trained members
    PGD accuracy at their own training ε (`own_pgd_acc`, step 2.5·ε/val_steps), each from its own seed."""
    ev, seeds = cfgs[0]["eval"], [c["seed"] for c in cfgs]
    kw = dict(steps=ev["val_steps"], max_images=cfgs[0]["val_images"], device=device, seeds=seeds)
    vals = evaluate_many(members, val_ds, eps=ev["eps"], step_size=ev["step_size"], norm=ev["norm"], **kw)
    own = [c["eps"] if c["mode"] == "pgd" else 0.0 for c in cfgs]
    if any(own):
        owns = evaluate_many(members, val_ds, eps=own, step_size=[2.5 * e / ev["val_steps"] for e in own],
                             norm=cfgs[0]["norm"], **kw)
        for v, o, e in zip(vals, owns, own):
            if e > 0:
                v["own_pgd_acc"] = o["pgd_acc"]
    return vals


def _rows(values: list[float], x: torch.Tensor, b: int) -> torch.Tensor:
    """(N·B,) tensor: member k's value on its B rows."""
    return torch.tensor(values, dtype=x.dtype, device=x.device).repeat_interleave(b)


class _Member:
    """One model of a group: its config, folder, model, optimiser, schedule and loop state (lib.train's)."""

    def __init__(self, cfg: dict, out_dir: Path, arch: dict, device, steps_per_epoch: int, meta: dict | None):
        self.cfg, self.out_dir, self.meta = cfg, Path(out_dir), meta or {}
        torch.manual_seed(cfg["seed"])  # as lib.train: the same init as the model trained alone
        self.model = models.build(arch["name"], arch["num_classes"], arch["in_channels"], arch["image_size"],
                                  **arch["kwargs"]).to(device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                                   weight_decay=cfg["weight_decay"], nesterov=cfg["nesterov"])
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, recipe.lr_lambda(cfg, steps_per_epoch))
        self.scaler = torch.amp.GradScaler(device.type, enabled=False)  # fp16 is not joint (unsupported)
        self.rng = recipe.get_rng()
        self.state = {"epoch": 0, "step": 0, "history": [], "best": None, "best_metric": -1.0, "seconds": 0.0}
        self.path = self.out_dir / checkpoints.STATE_FILE
        if self.path.is_file():
            saved = checkpoints.load_state(self.path)
            self.model.load_state_dict(saved["model"])
            self.opt.load_state_dict(saved["optimizer"])
            self.sched.load_state_dict(saved["scheduler"])
            self.scaler.load_state_dict(saved["scaler"])
            self.rng, self.state = saved["rng"], saved["loop"]
        self.run_loss = self.run_acc = 0.0

    def position(self) -> tuple[int, int]:
        return self.state["epoch"], self.state["step"]

    def save(self) -> None:
        checkpoints.save_state({"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                                "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(),
                                "rng": self.rng, "loop": self.state}, self.path)


def train_group(cfgs: list[dict], out_dirs: list[Path], *, device, data_root="data", progress: bool = True,
                metas: list[dict | None] | None = None) -> None:
    """Train the models of one joint group (equal `SHARED` settings; see `groups`), resuming each from its
    state.pt; members resumed at different positions are trained as separate groups."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError("joint training runs in one process and cannot run under torchrun (DDP); set "
                           "train.joint: false in the profile to train one model at a time with DDP.")
    keys = {json.dumps({k: c.get(k) for k in SHARED}, sort_keys=True, default=str) for c in cfgs}
    if len(keys) > 1 or any(unsupported(c) for c in cfgs):
        raise ValueError("train_group needs members that agree on every SHARED setting; use joint.groups first.")
    cfg0 = cfgs[0]
    train_ds, val_ds = recipe.train_data(cfg0, data_root, device)
    arch = recipe.arch_of(cfg0, train_ds)
    spe = len(train_ds) // cfg0["batch_size"]
    metas = metas or [None] * len(cfgs)
    members = [_Member(c, d, arch, device, spe, m) for c, d, m in zip(cfgs, out_dirs, metas)
               if not checkpoints.is_complete(d)]
    by_position: dict[tuple[int, int], list[_Member]] = {}
    for m in members:
        by_position.setdefault(m.position(), []).append(m)
    for group in by_position.values():
        if group[0].position() != (0, 0) and progress:
            print(f"resuming {', '.join(m.out_dir.name for m in group)} at epoch {group[0].state['epoch']} "
                  f"step {group[0].state['step']}")
        _run(group, train_ds, val_ds, arch, spe, device, data_root, progress)


def _run(group: list[_Member], train_ds, val_ds, arch, spe, device, data_root, progress) -> None:
    cfg0, ev, n = group[0].cfg, group[0].cfg["eval"], len(group)
    net = JointCNN([m.model for m in group])
    amp_dtype = {"bf16": torch.bfloat16, None: None}[cfg0["amp"]]
    t_start = time.time() - group[0].state["seconds"]
    name = f"{n} models ({group[0].out_dir.name}, ...)"
    while group[0].state["epoch"] < cfg0["epochs"]:
        epoch = group[0].state["epoch"]
        orders = [recipe.batch_order(m.cfg, epoch, len(train_ds)) for m in group]
        bar = tqdm(total=spe, initial=group[0].state["step"], desc=f"{name} epoch {epoch + 1}/{cfg0['epochs']}",
                   disable=not progress or not interactive(), leave=False, unit="steps")
        while group[0].state["step"] < spe:
            step = group[0].state["step"]
            xs, ys, gens = [], [], []
            for m, order in zip(group, orders):
                idx = order[step * cfg0["batch_size"]:(step + 1) * cfg0["batch_size"]]
                gens.append(torch.Generator(device=device).manual_seed(recipe.step_seed(m.cfg, epoch, step)))
                x, y = train_ds.batch(idx, device)
                xs.append(recipe.augment(x, cfg0["augment"], gens[-1], len(idx)))
                ys.append(y)
            losses, accs = _step(net, group, torch.cat(xs), torch.cat(ys), gens, amp_dtype)
            for m, loss, acc in zip(group, losses, accs):
                m.sched.step()
                m.run_loss, m.run_acc = 0.9 * m.run_loss + 0.1 * loss, 0.9 * m.run_acc + 0.1 * acc
                m.state["step"] += 1
                every = m.cfg["ckpt_every"]
                if every and m.state["step"] % every == 0 and m.state["step"] < spe:
                    m.state["seconds"] = time.time() - t_start
                    m.save()
            bar.update()
        bar.close()
        vals = validate_many([m.model for m in group], val_ds, [m.cfg for m in group], device)
        for m, val in zip(group, vals):
            s = m.state
            row = {"epoch": epoch + 1, "lr": m.sched.get_last_lr()[0], "train_loss": m.run_loss / (1 - 0.9 ** spe),
                   "train_acc": 100 * m.run_acc / (1 - 0.9 ** spe),
                   **{f"val_{k}": v for k, v in val.items() if k not in ("n", "correct")}}
            metric = recipe.selection_metric(m.cfg, val)
            if metric > s["best_metric"]:  # selection on val, never on test
                s["best_metric"], s["best_epoch"] = metric, epoch + 1
                s["best"] = copy.deepcopy(m.model.state_dict())
            if progress:
                print(f"{m.out_dir.name} epoch {epoch + 1}: " + ", ".join(
                    f"{k}={v:.3g}" for k, v in row.items() if k != "epoch"))
            s["history"].append(row)
            s["epoch"], s["step"], s["seconds"] = epoch + 1, 0, time.time() - t_start
            m.save()
            m.run_loss = m.run_acc = 0.0
    for m in group:
        m.model.load_state_dict(m.state["best"])
    opts = cfg0.get("dataset_options") or {}
    tests = evaluate_many([m.model for m in group], data.load(cfg0["dataset"], "test", data_root, **opts),
                          eps=ev["eps"], step_size=ev["step_size"], steps=ev["steps"], norm=ev["norm"],
                          max_images=ev.get("test_images"), device=device, seeds=[m.cfg["seed"] for m in group],
                          progress=progress)
    for m, test in zip(group, tests):
        s = m.state
        meta = {**m.meta, "config": m.cfg, "config_hash": profiles.config_hash(m.cfg), "arch": arch,
                "metrics": {"clean_acc": test["clean_acc"], "pgd_acc": test["pgd_acc"], "test_images": test["n"],
                            "best_epoch": s.get("best_epoch"), "val_metric": s["best_metric"],
                            "correct": test["correct"]},
                "history": s["history"], "train_seconds": s["seconds"], "world_size": 1,
                "environment": environment(device)}
        checkpoints.save_model(m.model, meta, m.out_dir)


def _step(net: JointCNN, group: list[_Member], x, y, gens, amp_dtype) -> tuple[list[float], list[float]]:
    """One training step of every member: x (N·B, C, H, W) member-major, y (N·B,). Returns per-member
    (loss, accuracy) as lib.train's _train_step computes them."""
    cfgs, n, b = [m.cfg for m in group], len(group), len(y) // len(group)
    cfg0 = cfgs[0]
    if cfg0["mode"] == "pgd":
        noise = torch.cat([attacks.random_perturbation(torch.empty_like(x[:b]), c["eps"], c["norm"], generator=g)
                           for c, g in zip(cfgs, gens)])
        x = attacks.pgd(net, x, y, eps=_rows([c["eps"] for c in cfgs], x, b),
                        step_size=_rows([c["step_size"] for c in cfgs], x, b),
                        steps=cfg0["steps"], norm=cfg0["norm"], delta0=noise, autocast=amp_dtype)
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        if cfg0["mode"] == "gradnorm":
            x = x.clone().requires_grad_(True)
            logits = net(x)
            ce = F.cross_entropy(logits.float(), y, reduction="none").view(n, b).sum(1)
            (g,) = torch.autograd.grad(ce.sum(), x, create_graph=True)  # per-example ∇ₓCE of its own member
            lam = torch.tensor([c["lam"] for c in cfgs], device=x.device)
            losses = ce / b + lam * g.float().pow(2).flatten(1).sum(1).view(n, b).mean(1)
        else:
            logits = net(x)
            losses = F.cross_entropy(logits.float(), y, reduction="none").view(n, b).mean(1)
    for m in group:
        m.opt.zero_grad(set_to_none=True)
    losses.sum().backward()  # member k's parameters reach only member k's loss
    for m in group:
        m.opt.step()
    values = losses.detach().cpu()
    bad = [m.out_dir.name for m, v in zip(group, values) if not torch.isfinite(v)]
    if bad:
        raise FloatingPointError(f"training loss of {', '.join(bad)} became non-finite; lower its learning rate.")
    accs = (logits.argmax(1) == y).float().view(n, b).mean(1).cpu()
    return values.tolist(), accs.tolist()

