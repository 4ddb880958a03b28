"""Does `visualize.pick_seeds` still help feature visualisation once the final ReLU is a fake ReLU?

    PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_feature_vis_seeds.py [--profile default] [--coords 8]

Needs the profile's trained models (notebook 01). For every model of the pgd sweep, the `--coords`
highest-variance units of R(x) are maximised with the profile's feature-vis recipe under fake_relu
{off, on} × pick {off, on} × seeds {data, noise}, and the table reports the activation reached relative
to the unit's largest test-set activation, and how many units stayed at exactly 0. A quality measure,
not a timing: the numbers do not depend on machine load.
"""

from __future__ import annotations

import argparse
import itertools

import pandas as pd

from lib import inversion, visualize
from lib.experiment import Context


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="default")
    p.add_argument("--coords", type=int, default=8)
    a = p.parse_args()
    ctx = Context(a.profile, "cpu")
    fv = ctx.section("visualize")["feature_vis"]
    nets = {k: ctx.model(k) for k in visualize.compared_models(ctx.profile)}
    train, test = ctx.dataset("train"), ctx.dataset("test")
    rows = []
    for fake, pick, seeds in itertools.product([False, True], [False, True], ["data", "noise"]):
        out = inversion.feature_vis(nets, train, test, {**fv, "pick": pick, "seeds": seeds, "n_coords": a.coords},
                                    fake_relu=fake)
        for key, m in out["metrics"].items():
            rows.append({"fake_relu": fake, "pick": pick, "seeds": seeds, "model": key,
                         "reached / test max": m["reached_over_test_max"],
                         f"stuck at 0 (of {a.coords})": m["units_stuck_at_zero"]})
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    print(df.groupby(["fake_relu", "pick", "seeds"]).mean(numeric_only=True).to_string())


if __name__ == "__main__":
    main()
