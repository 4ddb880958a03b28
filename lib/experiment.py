"""What a notebook builds from its parameters cell: the profile (with OVERRIDES), folders, device, models, data."""

from __future__ import annotations

from pathlib import Path

from lib import data, profiles, workers, zoo
from lib.device import resolve_device
from lib.paths import DATA_DIR, run_dirs


class Context:
    """ctx = Context(PROFILE, DEVICE, RUN_DIR, FIG_DIR, DATA_ROOT, SEED, OVERRIDES) in every notebook.

    OVERRIDES (a dict, or the JSON text papermill's `-p` passes) is deep-merged into the profile, so
    `papermill ... -p OVERRIDES '{"attributions": {"ig": {"steps": 100}}}'` changes one knob.
    """

    def __init__(self, profile: str, device: str = "auto", run_dir: str | None = None, fig_dir: str | None = None,
                 data_root: str | None = None, seed: int = 0, overrides: dict | str | None = None):
        self.overrides = profiles.parse_overrides(overrides)
        self.profile = profiles.load(profile, self.overrides)
        self.name = self.profile["name"]
        self.run_dir, self.fig_dir = run_dirs(self.name, run_dir, fig_dir)
        self.data_root = Path(data_root) if data_root else DATA_DIR
        self.device = resolve_device(device)
        self.seed = seed
        self.workers = self.profile.get("workers", "auto")  # lib.workers: per-model jobs side by side on a CPU
        for key in self.profile["models"]:  # a typo in an external entry fails here, before any work
            if zoo.is_external(self.profile, key):
                zoo.check_entry(profiles.model_config(self.profile, key), f"model {key!r} of {self.name!r}")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.fig_dir.mkdir(parents=True, exist_ok=True)

    def section(self, name: str) -> dict:
        """The profile's parameters for one notebook, e.g. ctx.section('attributions')."""
        if name not in self.profile:
            raise ValueError(f"profile {self.name!r} has no `{name}` section")
        return self.profile[name]

    def model(self, key: str, seed: int = 0):
        """Model `key` at training-seed index `seed`, trained by notebook 01 (a clear error if it has not run
        yet), or the published checkpoint its profile entry names (`source:`, lib/zoo.py)."""
        return zoo.get_model(self.profile, key, self.run_dir, seed=seed, device=self.device,
                             data_root=self.data_root, train_if_missing=False)

    def models(self, keys) -> dict:
        """{unit id ('pgd_0.5@1'): model} for every training seed of every key, in key order."""
        return {u: self.model(*profiles.split_unit(u)) for u in profiles.units(self.profile, keys)}

    def dataset(self, split: str):
        return data.load_for(self.profile, split, self.data_root)

    def map_models(self, fn, nets: dict, *args, **kwargs) -> dict:
        """{key: fn(net, *args, **kwargs)}, side by side in the profile's `workers` processes on a multi-core
        CPU (lib.workers: one thread each; one process on a GPU)."""
        return workers.map_models(fn, nets, *args, workers=self.workers, device=self.device,
                                  **kwargs)

    def __repr__(self) -> str:
        extra = f", overrides={self.overrides}" if self.overrides else ""
        return (f"Context(profile={self.name!r}, device={self.device}, run_dir={self.run_dir}, "
                f"fig_dir={self.fig_dir}{extra})")
