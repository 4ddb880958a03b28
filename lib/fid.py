"""Fréchet distances between image sets (Boychev 2023 §2.5; Tables 2, 3, 5, 6).

FID uses pytorch-fid's InceptionV3 with its FID weights, read from a local file only: this module
never touches the network. For small grayscale data (Fashion-MNIST, digits) Inception features are
a poor fit, so the same Fréchet distance is computed in the penultimate features of an
independently trained classifier (`domain_extractor`) and labelled `FD-<extractor>`, never "FID".
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from lib import checkpoints, profiles
from lib.data import check_images
from lib.device import exact_fp32
from lib.models import eval_mode
from lib.progress import tqdm
from lib.train import train

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
# SHA-256 of pytorch-fid's FID weights. Not computable offline here: it agrees with the 6726825d
# prefix that torch hub's naming convention puts into the file name, and it is the digest that
# several public projects pin for this very file (95,628,359 bytes). Callers loading a stand-in
# file pass their own `sha256`.
FID_WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
EXTRACTOR_KEYS = {"arch", "arch_kwargs", "seed"}


# ---------------------------------------------------------------- Inception with local weights only

def fid_weights_url() -> str:
    from pytorch_fid.inception import FID_WEIGHTS_URL

    return FID_WEIGHTS_URL


def default_weights_path() -> Path:
    """Where torch hub (and so pytorch-fid) caches the weights: <torch hub dir>/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_FILE


def weights_available(weights: str | Path | None = None) -> bool:
    return Path(weights or default_weights_path()).is_file()


def inception(dims=(2048,), weights: str | Path | None = None, *, sha256: str = FID_WEIGHTS_SHA256,
              device="cpu"):
    """pytorch-fid's `InceptionV3` returning the blocks of `dims` (64, 192, 768, 2048), in eval mode.

    weights: the FID weights file; None looks in the torch hub cache. The file's SHA-256 must equal
    `sha256`, and it is read with `torch.load(weights_only=True)`. Never downloads.
    """
    from pytorch_fid import inception as pfi

    unknown = [d for d in dims if d not in pfi.InceptionV3.BLOCK_INDEX_BY_DIM]
    if unknown or not dims:
        raise ValueError(f"dims must be a non-empty tuple of {sorted(pfi.InceptionV3.BLOCK_INDEX_BY_DIM)}, got {dims}")
    state = _load_weights(Path(weights) if weights else default_weights_path(), sha256)
    blocks = sorted({pfi.InceptionV3.BLOCK_INDEX_BY_DIM[d] for d in dims})
    # pytorch-fid's constructor fetches the weights by URL: hand it the verified local state instead.
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: state):
        try:
            net = pfi.InceptionV3(blocks)
        except RuntimeError as e:
            raise ValueError(f"the weights file does not fit pytorch-fid's FID Inception ({str(e)[:200]}); "
                             f"use {FID_WEIGHTS_FILE} from {fid_weights_url()}") from e
    net.dims = tuple(sorted(dims))
    return net.to(device).eval()


def _load_weights(path: Path, sha256: str) -> dict:
    if not path.is_file():
        raise FileNotFoundError(
            f"FID Inception weights not found at {path}: download {FID_WEIGHTS_FILE} from {fid_weights_url()} "
            f"on a machine with network access and put it at {default_weights_path()} (the torch hub cache) "
            f"or pass its path as `weights`.")
    digest = sha256_file(path)
    if digest != sha256.lower():
        raise ValueError(f"{path} has SHA-256 {digest}, expected {sha256}: it is not the FID Inception file "
                         f"{FID_WEIGHTS_FILE} (corrupt or different); delete it and download "
                         f"{fid_weights_url()} again.")
    return torch.load(path, map_location="cpu", weights_only=True)


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------- domain extractor (small grayscale data)

def domain_extractor(profile: dict, spec: dict, run_dir: str | Path, *, device="cpu", data_root="data",
                     progress: bool = True):
    """The classifier whose R(x) replaces Inception features on `profile`'s dataset: trained (once, then
    cached under run_dir/models/fd_extractor-<hash>) on the same data as the profile's `standard` model,
    with the architecture, seed and training overrides in `spec` (e.g. {arch: small_cnn,
    arch_kwargs: {width: 32}, seed: 1}). Both the seed and the architecture must differ from the
    models under test, so the features are independent of them.
    """
    unknown = set(spec) - EXTRACTOR_KEYS - set(profiles.TRAIN_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown fd extractor settings {sorted(unknown)}; use arch, arch_kwargs, seed "
                         "or training settings")
    base = profiles.model_config(profile, "standard")
    cfg = {**base, **spec, "mode": "standard"}
    # a feature extractor needs no robustness evaluation: eps 0 makes val/test PGD a no-op (clean accuracy)
    cfg["eval"] = {**cfg["eval"], "eps": 0.0, "steps": 0, "val_steps": 0}
    if cfg["seed"] == base["seed"] or (cfg["arch"], cfg["arch_kwargs"]) == (base["arch"], base["arch_kwargs"]):
        raise ValueError("the fd extractor must differ from the standard model in both seed and architecture "
                         "(set `seed` and `arch`/`arch_kwargs` in the profile's fid.extractor)")
    out_dir = Path(run_dir) / "models" / f"fd_extractor-{profiles.config_hash(cfg)}"
    if checkpoints.is_complete(out_dir):
        return checkpoints.load_model(out_dir, device)
    return train(cfg, out_dir, device=device, data_root=data_root, progress=progress,
                 meta_extra={"profile": profile["name"], "key": "fd_extractor"})


# ---------------------------------------------------------------- features and distances

def extractor_name(extractor) -> str:
    """'inception-2048', 'inception-192', or '<arch>-w<width>' for a robinterp classifier."""
    if _is_inception(extractor):
        return "inception-" + "+".join(str(d) for d in getattr(extractor, "dims", (2048,)))
    arch = getattr(extractor, "meta", {}).get("arch", {})
    width = arch.get("kwargs", {}).get("width")
    return f"{arch.get('name', type(extractor).__name__)}" + (f"-w{width}" if width else "")


def distance_label(extractor) -> str:
    """'FID' for Inception pool features, otherwise 'FD-<extractor>' (never 'FID')."""
    name = extractor_name(extractor)
    return "FID" if name == "inception-2048" else f"FD-{name}"


@exact_fp32
def activations(images, extractor, batch_size: int = 50, *, device=None, quantize: bool = True,
                progress: bool = True) -> np.ndarray:
    """Features of every image: (N, D) float64.

    images: an (N,C,H,W) tensor in [0,1], or a dataset of (image, label).
    extractor: `inception(...)` (grayscale is repeated to 3 channels; the network resizes to 299×299
    bilinearly and pools each block to 1×1, exactly as pytorch-fid) or a robinterp classifier (R(x)).
    quantize: round to 8 bits first, as pytorch-fid sees images it reads from PNG files.
    """
    device = device or next(extractor.parameters()).device
    inc = _is_inception(extractor)
    out = []
    n = len(images)
    with torch.no_grad(), eval_mode(extractor):
        for s in tqdm(range(0, n, batch_size), desc="activations", disable=not progress, leave=False):
            x = _slice(images, s, min(n, s + batch_size)).to(device).float()
            check_images(x, "images")
            if quantize:
                x = torch.round(x * 255) / 255
            if inc:
                x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
                feats = [torch.nn.functional.adaptive_avg_pool2d(f, 1).flatten(1) for f in extractor(x)]
                f = torch.cat(feats, 1)
            else:
                f = extractor.features(x)
            out.append(f.double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def statistics(acts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D,D) of (N, D) activations, as pytorch-fid (np.cov, N−1)."""
    if len(acts) < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 images per set, got {len(acts)}")
    return acts.mean(0), np.cov(acts, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """‖μ₁−μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^{1/2}) for symmetric PSD Σ.

    Tr((Σ₁Σ₂)^{1/2}) = Σᵢ √λᵢ(Bᵀ Σ₂ B) for any B with B Bᵀ = Σ₁, because Σ₁Σ₂ is similar to that
    PSD matrix. B is the Cholesky factor, or V·diag(√w) from an eigendecomposition when Σ₁ is
    singular (fewer images than dimensions). One symmetric eigenvalue solve replaces scipy's
    general `sqrtm`: faster, real, and no singular-product fallback needed.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shapes do not match: mu {mu1.shape} / {mu2.shape}, sigma {s1.shape} / {s2.shape}")
    s1 = (s1 + s1.T) / 2
    try:
        b = np.linalg.cholesky(s1)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(s1)
        b = v * np.sqrt(np.clip(w, 0, None))
    m = b.T @ s2 @ b
    lam = np.linalg.eigvalsh((m + m.T) / 2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


def fid(a, b, extractor, *, batch_size: int = 50, device=None, progress: bool = True) -> float:
    """Fréchet distance of two image sets in `extractor`'s features (FID for `inception()`)."""
    sa = statistics(activations(a, extractor, batch_size, device=device, progress=progress))
    sb = statistics(activations(b, extractor, batch_size, device=device, progress=progress))
    return frechet_distance(*sa, *sb)


def feature_distance(a, b, extractor, *, batch_size: int = 50, device=None) -> np.ndarray:
    """Per-pair L2 distance of features, (N,): with `inception(dims=(192,))` the block-1 distance of
    Boychev's Tables 3 and 6 (original vs inverted image). a, b: paired (N,C,H,W) in [0,1]."""
    if len(a) != len(b):
        raise ValueError(f"feature_distance compares pairs: got {len(a)} and {len(b)} images")
    fa = activations(a, extractor, batch_size, device=device, progress=False)
    fb = activations(b, extractor, batch_size, device=device, progress=False)
    return np.linalg.norm(fa - fb, axis=1)


def frechet_of(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of two (N, D) activation sets."""
    return frechet_distance(*statistics(a), *statistics(b))


def per_class_fd(acts: np.ndarray, y, ref: np.ndarray, ref_y, classes) -> np.ndarray:
    """(K,) Fréchet distance of each class's activations to the reference activations of that class."""
    y, ref_y = np.asarray(y), np.asarray(ref_y)
    return np.array([frechet_of(acts[y == c], ref[ref_y == c]) for c in classes])


def make_extractor(section: dict, profile: dict, run_dir, *, dims=(2048,), device="cpu", data_root="data",
                   progress: bool = True):
    """The feature extractor a profile's `fid:` section asks for.

    section["features"]: "inception" (FID weights required: a clear error if missing), "domain"
    (`domain_extractor` with section["extractor"]) or "auto" (inception when its weights are present).
    """
    kind = section.get("features", "auto")
    if kind not in ("inception", "domain", "auto"):
        raise ValueError(f"fid.features must be inception, domain or auto, got {kind!r}")
    if kind == "auto":
        kind = "inception" if weights_available(section.get("weights")) else "domain"
    if kind == "inception":
        return inception(dims, section.get("weights"), sha256=section.get("sha256") or FID_WEIGHTS_SHA256,
                         device=device)
    return domain_extractor(profile, section["extractor"], run_dir, device=device, data_root=data_root,
                            progress=progress)


def _is_inception(extractor) -> bool:
    return type(extractor).__name__ == "InceptionV3" and hasattr(extractor, "blocks")


def _slice(images, start: int, stop: int) -> torch.Tensor:
    if torch.is_tensor(images):
        return images[start:stop]
    if hasattr(images, "batch"):
        return images.batch(torch.arange(start, stop))[0]
    return torch.stack([images[i][0] for i in range(start, stop)])
