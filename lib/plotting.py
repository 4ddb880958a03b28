"""The only module that draws. Paper-style figures saved as PNG and PDF."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

sns.set_theme(context="paper", style="whitegrid")


def savefig(fig, fig_dir: str | Path, name: str) -> list[Path]:
    """Save `fig` as fig_dir/name.png (150 dpi) and fig_dir/name.pdf; returns both paths."""
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    paths = [fig_dir / f"{name}.png", fig_dir / f"{name}.pdf"]
    fig.savefig(paths[0], dpi=150, bbox_inches="tight")
    fig.savefig(paths[1], bbox_inches="tight")
    return paths


def training_curves(history: dict[str, list[dict]]):
    """history: model key -> per-epoch rows from meta.json. One panel per metric."""
    import pandas as pd

    rows = [{"model": k, **r} for k, h in history.items() for r in h]
    df = pd.DataFrame(rows)
    metrics = [m for m in ("train_loss", "val_clean_acc", "val_pgd_acc") if m in df]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.2))
    for ax, m in zip(axes, metrics):
        sns.lineplot(data=df, x="epoch", y=m, hue="model", marker="o", ax=ax)
        ax.set_title(m.replace("_", " "))
        if ax is not axes[-1]:
            ax.get_legend().remove()
    fig.tight_layout()
    return fig


def accuracy_bars(table):
    """table: DataFrame with columns model, clean_acc, pgd_acc (percent)."""
    df = table.melt(id_vars="model", value_vars=["clean_acc", "pgd_acc"], var_name="metric", value_name="acc")
    fig, ax = plt.subplots(figsize=(1.2 * len(table) + 2, 3.2))
    sns.barplot(data=df, x="model", y="acc", hue="metric", ax=ax)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------- publish: figures redrawable from data

def publish(draw, name: str, data: dict, fig_dir: str | Path, run_dir: str | Path):
    """Save `data` under run_dir/artefacts/<name>.{npz,json}, draw `draw(**data)`, save it as a figure.

    draw: a function of this module. data: arrays/tensors (stored in .npz) and JSON-able values.
    `lib.figures.redraw` later rebuilds every figure from the artefacts alone, without recomputing.
    """
    save_artefact(run_dir, name, draw.__name__, data)
    fig = draw(**data)
    savefig(fig, fig_dir, name)
    return fig


def save_artefact(run_dir, name: str, draw_name: str, data: dict) -> None:
    import json

    import numpy as np
    import torch

    from lib.results import to_jsonable

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
    import json

    import numpy as np

    path = Path(path)
    spec = json.loads(path.with_suffix(".json").read_text())
    with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return spec["draw"], {**spec["data"], **arrays}
