"""The only module that draws. Paper-style figures saved as PNG and PDF."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.colors import Normalize

from lib.plotting_curves import alpha_vs_rho, fd_vs_steps, training_curves  # noqa: F401  (drawn through publish)
from lib.results import record_figure, to_jsonable

sns.set_theme(context="paper", style="whitegrid")


def savefig(fig, fig_dir: str | Path, name: str) -> list[Path]:
    """Save `fig` as fig_dir/name.png (150 dpi) and fig_dir/name.pdf; returns both paths."""
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = [fig_dir / f"{name}.png", fig_dir / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def accuracy_bars(model: list, clean_acc: list, pgd_acc: list):
    """Clean and PGD accuracy (percent) per model, side by side."""

    df = pd.DataFrame({"model": model, "clean": clean_acc, "PGD": pgd_acc}).melt(
        id_vars="model", var_name="metric", value_name="acc")
    fig, ax = plt.subplots(figsize=(1.1 * len(model) + 2.5, 3.2))
    sns.barplot(data=df, x="model", y="acc", hue="metric", ax=ax)
    for c in ax.containers:
        ax.bar_label(c, fmt="%.1f", fontsize=7)
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- publish: figures redrawable from data

def publish(draw, name: str, data: dict, fig_dir: str | Path, run_dir: str | Path):
    """Save `data` under run_dir/artefacts/<name>.{npz,json}, draw `draw(**data)`, save it as a figure.

    draw: a function of this module. data: arrays/tensors (stored in .npz) and JSON-able values.
    `lib.figures.redraw` later rebuilds every figure from the artefacts alone, without recomputing.
    The figure is recorded in run_dir/figures.json (`lib.results.record_figure`): the report embeds only those.
    """
    save_artefact(run_dir, name, draw.__name__, data)
    fig = draw(**data)
    png = savefig(fig, fig_dir, name)[0]
    record_figure(run_dir, name, png)
    return fig


def save_artefact(run_dir, name: str, draw_name: str, data: dict) -> None:
    folder = Path(run_dir) / "artefacts"
    folder.mkdir(parents=True, exist_ok=True)
    arrays, plain = {}, {}
    for k, v in data.items():
        if isinstance(v, torch.Tensor):
            v = v.detach().cpu().numpy()
        (arrays if isinstance(v, np.ndarray) else plain)[k] = v
    np.savez_compressed(folder / f"{name}.npz", **arrays)
    (folder / f"{name}.json").write_text(json.dumps({"draw": draw_name, "data": to_jsonable(plain)}, indent=1))


def load_artefact(path: str | Path) -> tuple[str, dict]:
    """(draw function name, data) of a saved artefact; arrays come back as numpy."""
    path = Path(path)
    spec = json.loads(path.with_suffix(".json").read_text())
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return spec["draw"], {**spec["data"], **arrays}


# ---------------------------------------------------------------- notebook 03: alignment theory (Etmann, Wang)

def _groups(group, groups):
    group = np.asarray(group)
    return [(name, group == i) for i, name in enumerate(groups)]


def alignment_vs_robustness(sweep: list, model: list, alpha: list, alpha_err: list, rho_lin: list,
                            rho_lin_err: list, rho_emp: list, rho_emp_err: list):
    """Etmann's "robustness vs alignment": one point per model (mean ± error), one panel per sweep kind.

    All arguments are per (sweep, model) row; rows of a sweep are in order of training strength.
    """
    kinds = list(dict.fromkeys(sweep))
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        rows = [i for i, s in enumerate(sweep) if s == kind]
        a, ae = np.asarray(alpha)[rows], np.asarray(alpha_err)[rows]
        for x, xe, label, mk in ((rho_lin, rho_lin_err, "linearized ρ̃", "o-"),
                                 (rho_emp, rho_emp_err, "empirical ρ", "s--")):
            x, xe = np.asarray(x)[rows], np.asarray(xe)[rows]
            ax.errorbar(x, a, xerr=xe, yerr=ae, fmt=mk, capsize=2, label=label, mfc="white" if "s" in mk else None)
        for i in rows:
            ax.annotate(model[i], (rho_emp[i], alpha[i]), textcoords="offset points", xytext=(4, -10), fontsize=7)
        ax.set_title(f"{kind} sweep")
        ax.set_xlabel("mean robustness (L2, pixels)")
        ax.set_ylabel("mean alignment α (± s.e.m.)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def linearization_quality(rho_lin, rho_emp, group, groups: list):
    """ρ̃ against the empirical ρ from the minimum-norm attack, per sample, log-log; dashed: ρ̃ = ρ."""
    x, y = np.asarray(rho_emp, dtype=float), np.asarray(rho_lin, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    for name, m in _groups(group, groups):
        ax.scatter(x[m & ok], y[m & ok], s=5, alpha=0.45, label=name)
    both = np.concatenate([x[ok], y[ok]])
    ax.plot([both.min(), both.max()], [both.min(), both.max()], "k--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("empirical robustness ρ(x) (min-norm attack)")
    ax.set_ylabel("linearized robustness ρ̃(x)")
    ax.legend(markerscale=3, fontsize=7)
    fig.tight_layout()
    return fig


def homogeneity_by_model(fraction, group, groups: list):
    """Etmann's "fraction of homogeneous part of logit" |⟨x,g⟩|/(|⟨x,g⟩|+|β|), distribution per model."""
    df = pd.DataFrame({"model": np.asarray(groups)[np.asarray(group)], "fraction": np.asarray(fraction)})
    fig, ax = plt.subplots(figsize=(1.1 * len(groups) + 2, 3.4))
    sns.boxplot(data=df, x="model", y="fraction", ax=ax, fliersize=1)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(r"homogeneous fraction of $\Psi^{i^*}$")
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    return fig


def bound_check(model: list, holds: list, rho_lin: list, alpha: list, angle: list, beta: list):
    """Left: fraction of samples where ρ̃ ≤ α + ‖x‖‖ḡ†−ḡ‖ + |β†|/‖g†‖. Right: mean terms (stacked) and mean ρ̃."""
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(2.2 * len(model) + 3, 3.4))
    pos = np.arange(len(model))
    a0.bar(pos, holds, color="tab:green")
    for p, h in zip(pos, holds):
        a0.text(p, h, f"{h:.3f}", ha="center", va="bottom", fontsize=7)
    a0.set_ylim(0, 1.1)
    a0.set_ylabel("fraction where the bound holds")
    bottom = np.zeros(len(model))
    for vals, label in ((alpha, "α"), (angle, "‖x‖·‖ḡ†−ḡ‖"), (beta, "|β†|/‖g†‖")):
        a1.bar(pos, vals, bottom=bottom, label=label)
        bottom = bottom + np.asarray(vals)
    a1.plot(pos, rho_lin, "kD", label="ρ̃ (left side)")
    a1.set_yscale("log")
    a1.set_ylabel("mean over samples")
    a1.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for ax in (a0, a1):
        ax.set_xticks(pos, model, rotation=20)
    fig.tight_layout()
    return fig


def boundary_cosine(cos_saliency, cos_margin, cos_direction, group, groups: list):
    """Wang's measure per model: cos(∇Ψ(x), ∇Ψ(x_b)) (SM vs BSM), cos(∇(Ψⁱ−Ψʲ)(x), ∇(Ψⁱ−Ψʲ)(x_b)),
    cos(∇Ψ(x), x − x_b)."""
    names = np.asarray(groups)[np.asarray(group)]
    measures = [(cos_saliency, "cos(∇Ψ(x), ∇Ψ(x_b))"), (cos_margin, "cos(∇(Ψⁱ−Ψʲ)(x), ∇(Ψⁱ−Ψʲ)(x_b))"),
                (cos_direction, "cos(∇Ψ(x), x − x_b)")]
    df = pd.concat([pd.DataFrame({"model": names, "cosine": np.asarray(v), "measure": m}) for v, m in measures])
    fig, ax = plt.subplots(figsize=(2.6 * len(measures) + 1, 3.6))
    sns.violinplot(data=df.dropna(), x="measure", y="cosine", hue="model", inner="quart", cut=0, ax=ax)
    ax.set_ylim(-1.05, 1.05)
    ax.set_xlabel("")
    fig.tight_layout()
    return fig


def cosine_vs_distance(rho_emp, cos_saliency, cos_margin, group, groups: list, edges: list, saliency_mean: dict,
                       margin_mean: dict):
    """Wang's cosines against boundary distance ‖x − x_b‖: samples (dots) and means in shared quantile bins (lines)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    mids = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
    for ax, cos, mean, title in ((axes[0], cos_saliency, saliency_mean, "cos(∇Ψ(x), ∇Ψ(x_b))"),
                                 (axes[1], cos_margin, margin_mean, "cos(∇(Ψⁱ−Ψʲ)(x), ∇(Ψⁱ−Ψʲ)(x_b))")):
        for i, (name, m) in enumerate(_groups(group, groups)):
            ax.scatter(np.asarray(rho_emp)[m], np.asarray(cos)[m], s=4, alpha=0.3, color=f"C{i}")
            ax.plot(mids, np.asarray(mean[name], dtype=float), "o-", color=f"C{i}", label=name)
        for e in edges:
            ax.axvline(e, color="0.85", lw=0.6, zorder=0)
        low = np.nanmin(np.concatenate([np.asarray(cos_saliency), np.asarray(cos_margin), [0.0]]))
        ax.set(title=title, xlabel="boundary distance ‖x − x_b‖ (L2, pixels)", ylim=(low - 0.05, 1.02))
    axes[0].set_ylabel("cosine")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- 04-06: feature visualisation and FID

def image_grid(images, row_labels: list, col_labels: list | None = None, title: str = ""):
    """images: (R, K, C, H, W) in [0,1] (NaN cells stay blank); one labelled row per leading index."""

    images = np.asarray(images, dtype=np.float32)
    r, k = images.shape[:2]
    side = 0.9 if images.shape[-1] <= 32 else 1.3  # inches per image
    left, head, gap = 0.9, (0.3 if title else 0) + (0.22 if col_labels is not None else 0), 0.06
    width, height = left + k * (side + gap), head + r * (side + gap) + 0.05
    fig, axes = plt.subplots(r, k, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=left / width, right=1 - 0.02 / width, bottom=0.05 / height, top=1 - head / height,
                        wspace=gap / side, hspace=gap / side)
    for i in range(r):
        for j in range(k):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            _hide_axes(ax, keep_y=j == 0)
            img = images[i, j]
            if np.isnan(img).any():
                ax.axis("off")
                continue
            if img.shape[0] == 1:
                ax.imshow(img[0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            else:
                ax.imshow(np.clip(img.transpose(1, 2, 0), 0, 1), interpolation="nearest")
            if j == 0:
                ax.set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=8)
            if i == 0 and col_labels is not None:
                ax.set_title(col_labels[j], fontsize=7, pad=3)
    if title:
        fig.suptitle(title, fontsize=9, y=1 - 0.04 / height, va="top")
    return fig


def distance_strip(model: list, values, ylabel: str, paper: list | None = None):
    """values: (M, N) per-example distances of M models; paper: M reference means (drawn as red ticks)."""

    values = np.asarray(values, dtype=float)
    df = pd.DataFrame({"model": np.repeat(model, values.shape[1]), ylabel: values.ravel()})
    fig, ax = plt.subplots(figsize=(1.3 * len(model) + 1.8, 3.2))
    sns.boxplot(data=df, x="model", y=ylabel, color="0.85", showfliers=False, ax=ax)
    sns.stripplot(data=df, x="model", y=ylabel, hue="model", size=3, legend=False, ax=ax)
    if paper is not None:
        ax.scatter(range(len(model)), paper, marker="_", s=400, color="red", zorder=5, label="paper (mean)")
        ax.legend(fontsize=7)
    ax.set_xlabel("")
    fig.tight_layout()
    return fig


def fd_per_class(classes: list, name: list, values, label: str):
    """values: (S, K) FID/FD of S image sets for K classes, as grouped bars."""

    values = np.asarray(values, dtype=float)
    if len(classes) > 20:  # many classes (ImageNet-150): each set's per-class values, sorted
        fig, ax = plt.subplots(figsize=(6, 3.4))
        for n, v in zip(name, values):
            ax.plot(np.sort(v), label=n)
        ax.set_xlabel("classes, sorted by value")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig
    df = pd.DataFrame({"class": np.tile(classes, len(name)), "set": np.repeat(name, len(classes)),
                       label: values.ravel()})
    fig, ax = plt.subplots(figsize=(min(0.3 * len(classes) * len(name) + 2.5, 12), 3.2))
    sns.barplot(data=df, x="class", y=label, hue="set", ax=ax)
    ax.tick_params(axis="x", rotation=30)
    ax.set_xlabel("")
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- notebook 02: attributions

def _hide_axes(ax, keep_y: bool) -> None:
    """An image cell without ticks: its x axis (and y axis unless it carries the row label) is not drawn at all,
    0.3-0.45 s less per saved grid of the default's size (of ~1.8 s); spines and the title stay."""
    ax.xaxis.set_visible(False)
    ax.yaxis.set_visible(keep_y)


def attribution_grid(images, maps, models: list, row_labels: list, method: str, pct: float = 99.0):
    """Paper-style grid. images: (R,C,H,W) in [0,1]; maps: (M,R,H,W) signed per-pixel attributions
    (NaN: none, e.g. no boundary point). Columns: the image, then per model its heatmap and its
    overlay on the image; diverging colormap centred at 0, each map scaled to its own `pct`
    percentile of |φ| (red: evidence for the explained class, blue: against)."""

    images, maps = np.asarray(images, dtype=float), np.asarray(maps, dtype=float)
    n_rows, n_models = images.shape[0], maps.shape[0]
    cmap = plt.get_cmap("RdBu_r")
    ncols = 1 + 2 * n_models
    fig, axes = plt.subplots(n_rows, ncols, figsize=(1.15 * ncols + 1.0, 1.15 * n_rows + 0.7), squeeze=False)
    for r in range(n_rows):
        img = images[r].transpose(1, 2, 0)
        gray = img.mean(-1)
        axes[r, 0].imshow(img if img.shape[-1] == 3 else gray, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        axes[r, 0].set_ylabel(row_labels[r], fontsize=6, rotation=0, ha="right", va="center")
        for m in range(n_models):
            a, ax_map, ax_ov = maps[m, r], axes[r, 1 + 2 * m], axes[r, 2 + 2 * m]
            if np.isnan(a).all():
                for ax in (ax_map, ax_ov):
                    ax.text(0.5, 0.5, "no boundary\npoint found", ha="center", va="center", fontsize=5,
                            transform=ax.transAxes)
                continue
            v = max(float(np.nanpercentile(np.abs(a), pct)), 1e-12)
            ax_map.imshow(a, cmap=cmap, vmin=-v, vmax=v, interpolation="nearest")
            ax_ov.imshow(gray, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            rgba = cmap(np.clip(a / v, -1, 1) * 0.5 + 0.5)
            rgba[..., 3] = np.clip(np.abs(a) / v, 0, 1) * 0.9  # transparent where |φ| is small
            ax_ov.imshow(rgba, interpolation="nearest")
    titles = ["image"] + [t for name in models for t in (name, f"{name} overlay")]
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=7)
    for (_, c), ax in np.ndenumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        _hide_axes(ax, keep_y=c == 0)
        for s in ax.spines.values():
            s.set_visible(False)
    height = fig.get_figheight()
    fig.suptitle(method, fontsize=9, y=1 - 0.08 / height)
    fig.subplots_adjust(wspace=0.04, hspace=0.06, top=1 - 0.45 / height, bottom=0.55 / height)
    cax = fig.add_axes([0.35, 0.2 / height, 0.4, 0.08 / height])
    bar = fig.colorbar(plt.cm.ScalarMappable(Normalize(-1, 1), cmap), cax=cax, orientation="horizontal")
    bar.set_label(f"φ / {pct:g}th percentile of |φ|", fontsize=6)
    bar.ax.tick_params(labelsize=6)
    return fig


ATTRIBUTION_METRICS = {"gini": "Gini of |φ|", "top5": "top-5% mass share", "coherence": "spatial coherence",
                       "positive": "positive share", "object": "mass on object"}


def attribution_metrics(model: list, method: list, **values):
    """Mean ± std over images of each metric in `values` (one value per row), per method × model."""

    df = pd.DataFrame({"model": model, "method": method, **values})
    names = list(values)
    fig, axes = plt.subplots(len(names), 1, figsize=(0.45 * df["method"].nunique() + 2.5, 2.1 * len(names)),
                             sharex=True, squeeze=False)
    for ax, col in zip(axes[:, 0], names):
        sns.barplot(data=df, x="method", y=col, hue="model", errorbar="sd", capsize=0.15, err_kws={"linewidth": 1},
                    ax=ax)
        ax.set_ylim(min(0.0, float(df[col].min())), 1)
        ax.set_xlabel("")
        ax.set_ylabel(ATTRIBUTION_METRICS.get(col, col), fontsize=8)
        if ax is not axes[0, 0]:
            ax.get_legend().remove()
    axes[-1, 0].tick_params(axis="x", rotation=45)
    fig.tight_layout()
    return fig


def concentration_panel(measure: list, method: list, eps: list, mean, lo, hi, points: list, decision: str = ""):
    """The panel: one small plot per measure (rows) × method (columns), mean with its 95 % interval against
    training ε (long format: one entry per measure, method, recipe). points: +1 the trend over units (Kendall's τ)
    points the claimed way (green), −1 the other way (red), 0 no trend (grey)."""
    df = pd.DataFrame({"measure": measure, "method": method, "eps": eps, "mean": mean, "lo": lo, "hi": hi,
                       "points": points})
    rows, cols = list(dict.fromkeys(measure)), list(dict.fromkeys(method))
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.9 * len(cols) + 0.8, 1.25 * len(rows) + 0.6),
                             sharex=True, squeeze=False)
    for (i, m), (j, k) in ((a, b) for a in enumerate(rows) for b in enumerate(cols)):
        ax, d = axes[i, j], df[(df["measure"] == m) & (df["method"] == k)].sort_values("eps")
        if len(d):
            color = {1: "tab:green", -1: "tab:red"}.get(int(d["points"].iloc[0]), "tab:gray")
            ax.fill_between(d["eps"], d["lo"], d["hi"], color=color, alpha=0.2, linewidth=0)
            ax.plot(d["eps"], d["mean"], "o-", color=color, markersize=3, linewidth=1)
        ax.tick_params(labelsize=6)
        if m == decision.partition(" · ")[0] and k == decision.partition(" · ")[2]:
            for s in ax.spines.values():
                s.set_edgecolor("black")
                s.set_linewidth(1.5)
        if i == 0:
            ax.set_title(k, fontsize=8)
        if j == 0:
            ax.set_ylabel(m.replace("_", " "), fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("training ε", fontsize=7)
    fig.suptitle(f"every measure × method over the sweep (framed: the registered decision {decision})", fontsize=8)
    fig.tight_layout()
    return fig
