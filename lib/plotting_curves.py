"""Curves of notebooks 01, 03 and 06 (re-exported by `lib.plotting`, the one place figures come from): training
curves per recipe and seed, FD / KID against the generation budget, Etmann's mean α against mean ρ, Wang's cosine
against log distance."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from lib.stats import recipe_of


def fd_vs_steps(steps: list, labels: dict, floor: dict, fd: dict, kid: dict, kid_lo: dict, kid_hi: dict,
                sat_high: dict, verdict_steps: int | None = None):
    """Per feature space (columns): FD (top), KID with its subset interval (middle) and the share of pixels
    ≥ 0.99 (bottom) against generation steps, one line per model; dashed: real train images (FD floor);
    dotted vertical: the step count the verdict is read at. fd etc.: {space: {model: [value per step]}}."""
    names = list(fd)
    fig, axes = plt.subplots(3, len(names), figsize=(4.2 * len(names), 8), squeeze=False, sharex=True)
    for j, n in enumerate(names):
        for k in fd[n]:
            line, = axes[0, j].plot(steps, fd[n][k], marker="o", label=k)
            axes[1, j].plot(steps, kid[n][k], marker="o", color=line.get_color())
            axes[1, j].fill_between(steps, kid_lo[n][k], kid_hi[n][k], color=line.get_color(), alpha=0.15)
            axes[2, j].plot(steps, np.asarray(sat_high[n][k]) * 100, marker="o", color=line.get_color())
        axes[0, j].axhline(floor[n], ls="--", color="grey", label="real (train)")
        axes[0, j].set_title(labels[n])
        for ax, lab in zip(axes[:, j], ("FD to test", "KID to test", "pixels ≥ 0.99 (%)")):
            if verdict_steps is not None:
                ax.axvline(verdict_steps, ls=":", color="k")
            ax.set_ylabel(lab)
        axes[1, j].axhline(0, color="grey", lw=0.5)
        axes[2, j].set_xlabel("generation steps")
    axes[0, -1].legend(fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def alpha_vs_rho(alpha: dict, rho: dict, sweep_of: dict, recipe: dict):
    """Etmann's slide: mean α against mean ρ, one point per unit (model seed), one line per sweep through the
    recipes' means in order of training strength. alpha, rho: {unit: float}; sweep_of: {sweep: [recipe, ...]};
    recipe: {unit: model}."""
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for sweep, recipes in sweep_of.items():
        xs, ys = [], []
        for r in recipes:
            us = [u for u, rr in recipe.items() if rr == r and np.isfinite(rho.get(u, np.nan))]
            if not us:
                continue
            ax.scatter([rho[u] for u in us], [alpha[u] for u in us], s=14, alpha=0.6)
            xs.append(np.mean([rho[u] for u in us]))
            ys.append(np.mean([alpha[u] for u in us]))
            ax.annotate(r, (xs[-1], ys[-1]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.plot(xs, ys, marker="s", label=sweep)
    ax.set_xlabel("mean ρ (boundary distance, pixels)")
    ax.set_ylabel("mean α (alignment)")
    ax.legend(title="sweep", fontsize=7)
    fig.tight_layout()
    return fig


def training_curves(history: dict):
    """history: unit ('pgd_0.5@1') or model key -> per-epoch rows from meta.json. One panel per metric, one colour
    per recipe and one line per training seed, against the fraction of each model's schedule (recipes may train
    for different numbers of epochs, e.g. the shuffled-label model)."""

    rows = []
    for k, h in history.items():
        last = max(r["epoch"] for r in h)
        rows += [{"recipe": recipe_of(k), "unit": k, "progress": r["epoch"] / last, **r} for r in h]
    df = pd.DataFrame(rows)
    metrics = [m for m in ("train_loss", "val_clean_acc", "val_pgd_acc") if m in df]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics) + 1.5, 3.2), squeeze=False)
    axes = axes[0]
    for ax, m in zip(axes, metrics):
        sns.lineplot(data=df, x="progress", y=m, hue="recipe", units="unit", estimator=None, marker="o",
                     markersize=4, linewidth=1, alpha=0.8, ax=ax)
        ax.set_title(m.replace("_", " "))
        ax.set_xlabel("fraction of training (epoch / epochs)")
        if ax is not axes[-1]:
            ax.get_legend().remove()
        else:
            ax.legend(title="recipe (a line per seed)", bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig
