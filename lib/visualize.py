"""Feature visualisation by optimisation in pixel space (Boychev 2023 §2.3.2; MadryLab recipes).

Every optimiser here is `lib.attacks.pgd` with a custom `loss_fn` (L2, no random start, per
example): representation inversion, direct feature visualisation and class-specific image
generation differ only in the loss they maximise. `fake_relu=True` (the reference code's choice)
passes the gradient through the final ReLU of R(x) (`models.Classifier.features`). Class-conditional
seeds for generation are drawn from a multivariate normal fitted to a class's images (train by
default; the reference code used test). Datasets follow `lib.data`'s interface (`labels`, `batch`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lib.attacks import pgd
from lib.data import check_images
from lib.device import exact_fp32
from lib.models import eval_mode
from lib.progress import tqdm

SOURCES = ("image", "noise", "triple")
MAX_SEED_DIMS = 16384  # a full covariance beyond this is too large: fit at a coarse grain instead


def compared_models(profile: dict, keys=None) -> list[str]:
    """Models notebooks 04-06 compare: `keys` when given, else the profile's pgd sweep ordered by ε
    (standard → most robust), else ["standard", "robust"]."""
    if keys:
        return list(keys)
    sweep = (profile.get("sweeps") or {}).get("pgd")
    return sorted(sweep, key=sweep.get) if sweep else ["standard", "robust"]


def paper_values(profile: dict, field: str) -> dict | None:
    """{row: the paper's `field`} (e.g. fid, inversion_distance) from the profile's `paper` section, or None."""
    out = {k: v[field] for k, v in (profile.get("paper") or {}).items() if isinstance(v, dict) and field in v}
    return out or None


# ---------------------------------------------------------------- representation inversion

def relative_distance(model, x: torch.Tensor, r_targ: torch.Tensor, fake_relu: bool = False) -> torch.Tensor:
    """‖R(x) − r_targ‖ / ‖r_targ‖ per example. x: (N,C,H,W) in [0,1]; r_targ: (N,D). Returns (N,)."""
    diff = (model.features(x, fake_relu) - r_targ).flatten(1).norm(dim=1)
    return diff / r_targ.flatten(1).norm(dim=1).clamp_min(1e-12)


@exact_fp32
def invert_representation(model, x_src: torch.Tensor, x_targ: torch.Tensor, *, eps: float, step_size: float,
                          steps: int, batch_size: int | None = None, fake_relu: bool = False,
                          progress: bool = True) -> torch.Tensor:
    """Find x = x_src + δ whose representation matches R(x_targ): minimise the per-example relative
    distance ‖R(x) − R(x_targ)‖ / ‖R(x_targ)‖ (not one distance over the batch, as the reference code did).
    fake_relu: gradient through R's final ReLU (the reference code's setting).

    x_src, x_targ: (N,C,H,W) in [0,1] (the source is noise or another image). Returns (N,C,H,W) in [0,1].
    """
    check_images(x_src, "x_src")
    check_images(x_targ, "x_targ")
    if x_src.shape != x_targ.shape:
        raise ValueError(f"x_src {tuple(x_src.shape)} and x_targ {tuple(x_targ.shape)} must have the same shape")
    with torch.no_grad(), eval_mode(model):
        r_targ = _batched(lambda t: model.features(t), x_targ, batch_size)

    def run(idx):
        r = r_targ[idx]
        return pgd(model, x_src[idx], None, eps=eps, step_size=step_size, steps=steps, random_start=False,
                   loss_fn=lambda m, x, _: -relative_distance(m, x, r, fake_relu))

    return _chunked(run, len(x_src), batch_size, progress, "inversion")


def inversion_pairs(dataset, n: int, *, source: str = "image", seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(source, target) pairs for inversion. Returns x_src, x_targ: (M,C,H,W) in [0,1].

    source="image": n pairs, the source a random test image of another class; "noise": n pairs from
    `noise_seeds(kind="uniform")`; "triple" (Boychev's Tables 3/6 protocol): n targets, each repeated
    3 times with sources = two other random images and one noise image 0.5 + U(0,1)/20, M = 3n,
    grouped by target (rows 3t, 3t+1, 3t+2 share target t).
    """
    if source not in SOURCES:
        raise ValueError(f"inversion source must be one of {', '.join(SOURCES)}, got {source!r}")
    gen = torch.Generator().manual_seed(seed)
    y = dataset.labels
    targ = torch.randperm(len(dataset), generator=gen)[:n]
    if source == "triple":
        src = torch.stack([_other_images(len(dataset), int(t), 2, gen) for t in targ])  # (n, 2)
        x_targ = dataset.batch(targ.repeat_interleave(3))[0]
        noise = noise_seeds(n, dataset.shape, seed=seed, kind="uniform")
        x_src = torch.cat([dataset.batch(src.flatten())[0].view(n, 2, *dataset.shape), noise[:, None]], 1)
        return x_src.flatten(0, 1), x_targ
    x_targ = dataset.batch(targ)[0]
    if source == "noise":
        return noise_seeds(n, dataset.shape, seed=seed, kind="uniform"), x_targ
    src = torch.empty_like(targ)
    for i, t in enumerate(targ.tolist()):
        other = (y != y[t]).nonzero().flatten()
        src[i] = other[torch.randint(len(other), (1,), generator=gen)]
    return dataset.batch(src)[0], x_targ


def _other_images(n: int, t: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """k distinct random indices in range(n), none equal to t."""
    idx = torch.randperm(n - 1, generator=gen)[:k]
    return idx + (idx >= t).long()


def noise_seeds(n: int, shape, *, seed: int = 0, kind: str = "normal") -> torch.Tensor:
    """Grey images with a little noise: 0.5 + N(0,1)/20 (`normal`: MadryLab's feature-visualisation
    start) or 0.5 + U(0,1)/20 (`uniform`: Boychev's inversion noise source). Returns (n, *shape) in [0,1]."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "normal":
        return (0.5 + torch.randn(n, *shape, generator=gen) / 20).clamp(0, 1)
    if kind == "uniform":
        return 0.5 + torch.rand(n, *shape, generator=gen) / 20
    raise ValueError(f"noise kind must be 'normal' or 'uniform', got {kind!r}")


# ---------------------------------------------------------------- direct feature visualisation

@exact_fp32
def visualize_feature(model, x_seed: torch.Tensor, index, *, eps: float, step_size: float, steps: int,
                      batch_size: int | None = None, fake_relu: bool = False, progress: bool = True) -> torch.Tensor:
    """Maximise R(x)_index from x_seed by L2 PGD (fake_relu: gradient through R's final ReLU).

    x_seed: (N,C,H,W) in [0,1]. index: an int (one coordinate), a sequence of ints (maximise their mean),
    or an (N,) long tensor (one coordinate per example). Returns (N,C,H,W) in [0,1].
    """
    check_images(x_seed, "x_seed")
    idx_t = _feature_index(index, len(x_seed), x_seed.device)

    def run(rows):
        sel = idx_t[rows]
        return pgd(model, x_seed[rows], None, eps=eps, step_size=step_size, steps=steps, random_start=False,
                   loss_fn=lambda m, x, _: m.features(x, fake_relu).gather(1, sel).mean(1))

    return _chunked(run, len(x_seed), batch_size, progress, "feature vis")


def _feature_index(index, n: int, device) -> torch.Tensor:
    """(N, K) long: the coordinates whose mean each example maximises."""
    if torch.is_tensor(index) and index.ndim == 1 and len(index) == n and n > 1:
        return index.to(device).long().view(n, 1)
    idx = torch.as_tensor([index] if isinstance(index, int) else list(index), dtype=torch.long, device=device)
    if idx.ndim != 1 or len(idx) == 0:
        raise ValueError("index must be an int, a non-empty sequence of ints or an (N,) tensor of ints")
    return idx.view(1, -1).expand(n, -1)


def pick_seeds(model, pool: torch.Tensor, coords, k: int) -> torch.Tensor:
    """For each coordinate, the k images of `pool` on which R(x)_coord is largest: without fake_relu a
    unit that is 0 at its seed has zero gradient and would never move. pool: (P,C,H,W) in [0,1].
    Returns (len(coords)·k, C,H,W), grouped by coordinate."""
    check_images(pool, "pool")
    with torch.no_grad(), eval_mode(model):
        acts = model.features(pool)[:, torch.as_tensor(coords, device=pool.device).long()]
    best = acts.topk(min(k, len(pool)), dim=0).indices  # (k, len(coords))
    return pool[best.T.reshape(-1)]


def representations(model, dataset, *, batch_size: int = 256, device=None, progress: bool = False) -> torch.Tensor:
    """R(x) of every image of `dataset`: (len(dataset), D) float on the CPU."""
    device = device or next(model.parameters()).device
    out = []
    with torch.no_grad(), eval_mode(model):
        for x, _ in tqdm(_batches(dataset, batch_size), desc="representations", disable=not progress,
                         leave=False):
            out.append(model.features(x.to(device)).float().cpu())
    return torch.cat(out)


@dataclass
class TopActivating:
    """The k images of a dataset that activate coordinate `index` most (top) and least (bottom)."""

    index: int
    top: torch.Tensor            # (k,) dataset indices, highest activation first
    top_values: torch.Tensor     # (k,)
    top_images: torch.Tensor     # (k,C,H,W) in [0,1]
    bottom: torch.Tensor         # (k,) lowest activation first
    bottom_values: torch.Tensor
    bottom_images: torch.Tensor


def top_activating(model, dataset, index: int, k: int, *, feats: torch.Tensor | None = None,
                   batch_size: int = 256) -> TopActivating:
    """The k images of `dataset` (the test set) with the highest and the lowest R(x)_index.

    feats: precomputed `representations(model, dataset)` to reuse across coordinates.
    """
    if feats is None:
        feats = representations(model, dataset, batch_size=batch_size)
    if not 0 <= index < feats.shape[1]:
        raise ValueError(f"index {index} is out of range for a {feats.shape[1]}-d representation")
    k = min(k, len(feats))
    v = feats[:, index]
    top = v.topk(k).indices
    bottom = (-v).topk(k).indices
    return TopActivating(index, top, v[top], dataset.batch(top)[0], bottom, v[bottom], dataset.batch(bottom)[0])


# ---------------------------------------------------------------- class-conditional seeds and generation

@dataclass
class PixelNormal:
    """A multivariate normal over images: fitted on `shape` = (C, g, g) block means, drawn at `size`."""

    mean: torch.Tensor   # (d,) float64
    chol: torch.Tensor   # (d, d) Cholesky factor of the shrunk covariance
    shape: tuple
    size: tuple          # (H, W) of the draws

    def sample(self, n: int, seed: int = 0) -> torch.Tensor:
        """n draws, upsampled by repetition to `size` and clipped to [0,1]: (n,C,H,W). Seeded by `seed` alone."""
        gen = torch.Generator().manual_seed(seed)
        z = torch.randn(n, len(self.mean), generator=gen, dtype=torch.float64)
        draws = (self.mean + z @ self.chol.T).float().view(n, *self.shape)
        if tuple(self.shape[-2:]) != tuple(self.size):
            draws = _upsample(draws, self.size)
        return draws.clamp(0, 1)


def fit_pixel_normal(dataset, cls: int | None, *, grain: int | None = None, shrinkage: float = 0.01,
                     max_images: int | None = None, seed: int = 0) -> PixelNormal:
    """Fit a normal to the images of class `cls` of `dataset` (train, or test as the reference code); cls=None: all.

    grain: fit at grain×grain resolution (block means), as in MadryLab's recipe; None: full resolution.
    shrinkage: Σ ← (1−s)·Σ + s·(tr Σ / d)·I, so a singular covariance (constant border pixels, fewer
    images than pixels) still has a Cholesky factor.
    max_images: fit on a random subset (seeded by `seed`) of at most this many images.
    """
    idx = torch.arange(len(dataset)) if cls is None else class_indices(dataset, cls)
    if max_images and len(idx) > max_images:
        gen = torch.Generator().manual_seed(seed)
        idx = idx[torch.randperm(len(idx), generator=gen)[:max_images]].sort().values
    x = dataset.batch(idx)[0]
    low = _downsample(x, grain) if grain else x
    flat = low.flatten(1).double()
    if flat.shape[1] > MAX_SEED_DIMS:
        raise ValueError(f"a full-resolution normal over {flat.shape[1]} pixels is too large; pass grain "
                         f"(e.g. grain=8) to fit it at a coarse resolution")
    mu, chol = _fit_normal(flat, shrinkage)
    return PixelNormal(mu, chol, tuple(low.shape[1:]), tuple(x.shape[-2:]))


def class_seeds(dataset, cls: int | None, n: int, *, grain: int | None = None, seed: int = 0,
                shrinkage: float = 0.01, max_images: int | None = None) -> torch.Tensor:
    """n images drawn from a multivariate normal fitted to class `cls` of `dataset` (pass the train split);
    cls=None fits all images (data-like noise, e.g. feature-visualisation seeds). See `fit_pixel_normal`.
    Seeded by `seed` alone (global RNGs untouched). Returns (n,C,H,W) float in [0,1].
    """
    fit = fit_pixel_normal(dataset, cls, grain=grain, shrinkage=shrinkage, max_images=max_images, seed=seed)
    return fit.sample(n, seed)


def _fit_normal(flat: torch.Tensor, shrinkage: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and Cholesky factor of the shrunk covariance of (M, d) float64 rows."""
    if not 0 <= shrinkage <= 1:
        raise ValueError(f"shrinkage must lie in [0, 1], got {shrinkage}")
    mu = flat.mean(0)
    xc = flat - mu
    cov = xc.T @ xc / max(1, len(flat) - 1)
    d = cov.shape[0]
    scale = (cov.trace() / d).clamp_min(1e-8)
    cov = (1 - shrinkage) * cov + shrinkage * scale * torch.eye(d, dtype=cov.dtype)
    jitter = 1e-10 * scale
    for _ in range(8):  # shrinkage > 0 suffices in exact arithmetic; jitter guards round-off and s = 0
        chol, info = torch.linalg.cholesky_ex(cov + jitter * torch.eye(d, dtype=cov.dtype))
        if info == 0:
            return mu, chol
        jitter *= 100
    raise ValueError("the class covariance is not positive definite even after regularisation; "
                     "raise `shrinkage` or fit at a coarser `grain`")


def _downsample(x: torch.Tensor, grain: int) -> torch.Tensor:
    if grain < 1 or grain > min(x.shape[-2:]):
        raise ValueError(f"grain must be between 1 and the image size {min(x.shape[-2:])}, got {grain}")
    return F.adaptive_avg_pool2d(x, grain)


def _upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="nearest")


def fit_class_normals(dataset, *, grain: int | None = None, shrinkage: float = 0.01,
                      max_images: int | None = None, classes=None) -> dict[int, PixelNormal]:
    """`fit_pixel_normal` for every class (default: all of `dataset.classes`); fit once, draw many times."""
    classes = range(len(dataset.classes)) if classes is None else classes
    return {int(c): fit_pixel_normal(dataset, int(c), grain=grain, shrinkage=shrinkage, max_images=max_images)
            for c in tqdm(classes, desc="class normals", disable=len(classes) < 50, leave=False)}


def class_seed_set(dataset, per_class: int, *, grain: int | None = None, seed: int = 0, shrinkage: float = 0.01,
                   max_images: int | None = None, classes=None,
                   normals: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """per_class seeds of every class: draws from `normals` (from `fit_class_normals`; fitted here if None).

    Returns seeds (K·per_class, C,H,W) in [0,1] and their classes (K·per_class,), grouped by class.
    Class c draws with seed `seed·10007 + c`, so classes and seeds never share a noise stream.
    """
    if normals is None:
        normals = fit_class_normals(dataset, grain=grain, shrinkage=shrinkage, max_images=max_images, classes=classes)
    xs, ys = [], []
    for c, fit in normals.items():
        xs.append(fit.sample(per_class, seed * 10007 + c))
        ys.append(torch.full((per_class,), c, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def balanced_indices(dataset, per_class: int, *, seed: int = 0) -> torch.Tensor:
    """per_class random indices of each class (fewer where a class is smaller), grouped by class."""
    y = dataset.labels
    gen = torch.Generator().manual_seed(seed)
    out = []
    for c in y.unique().tolist():
        idx = (y == c).nonzero().flatten()
        out.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.cat(out)


@exact_fp32
def generate_class_images(model, seeds: torch.Tensor, target, *, eps: float, step_size: float, steps: int,
                          batch_size: int | None = None, fake_relu: bool = False, progress: bool = True,
                          at=None):
    """Maximise the class logit Ψ^target(seed + δ) by L2 PGD (fake_relu: gradient through R's final ReLU).

    seeds: (N,C,H,W) in [0,1]; target: an int or an (N,) tensor of classes. Returns (N,C,H,W) in [0,1]; with
    `at` (step counts ≤ steps) {t: (N,C,H,W) after t steps} from the same single run (pgd's snapshot).
    """
    check_images(seeds, "seeds")
    y = torch.as_tensor(target, dtype=torch.long, device=seeds.device).expand(len(seeds)).contiguous()
    grid = sorted({int(t) for t in at}) if at is not None else [steps]
    if grid[0] < 0 or grid[-1] > steps:
        raise ValueError(f"generation snapshots must lie in 0..{steps} steps, got {list(at)}")

    def run(idx):
        snaps = {}

        def keep(t, xa):
            if t in grid:
                snaps[t] = xa

        last = pgd(model, seeds[idx], y[idx], eps=eps, step_size=step_size, steps=steps, random_start=False,
                   loss_fn=lambda m, x, t: m.head(m.features(x, fake_relu)).gather(1, t[:, None]).squeeze(1),
                   snapshot=keep if at is not None else None)
        return torch.stack([snaps[t] for t in grid], 1) if at is not None else last[:, None]

    out = _chunked(run, len(seeds), batch_size, progress, "generation")
    return dict(zip(grid, out.unbind(1))) if at is not None else out[:, 0]


def class_logits(model, x: torch.Tensor, target, *, batch_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logit of `target`, predicted class) per image; x: (N,C,H,W) in [0,1]. Both (N,)."""
    with torch.no_grad(), eval_mode(model):
        logits = _batched(model, x, batch_size)
    y = torch.as_tensor(target, dtype=torch.long, device=logits.device).expand(len(x))
    return logits.gather(1, y[:, None]).squeeze(1), logits.argmax(1)


# ---------------------------------------------------------------- helpers

def _chunked(fn, n: int, batch_size: int | None, progress: bool, desc: str) -> torch.Tensor:
    size = batch_size or max(n, 1)
    chunks = [torch.arange(s, min(n, s + size)) for s in range(0, n, size)]
    out = [fn(idx) for idx in tqdm(chunks, desc=desc, disable=not progress or len(chunks) < 2, leave=False)]
    return torch.cat(out) if out else torch.empty(0)


def _batched(fn, x: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    size = batch_size or max(len(x), 1)
    return torch.cat([fn(x[s:s + size]) for s in range(0, len(x), size)])


def _batches(dataset, batch_size: int):
    """(x, y) batches of a `lib.data` dataset, in order."""
    n = len(dataset)
    for s in range(0, n, batch_size):
        yield dataset.batch(torch.arange(s, min(n, s + batch_size)))


def class_indices(dataset, cls: int) -> torch.Tensor:
    """Indices of the images of class `cls` in `dataset`; a clear error if there are none."""
    idx = (dataset.labels == cls).nonzero().flatten()
    if len(idx) == 0:
        raise ValueError(f"the dataset has no images of class {cls}")
    return idx
