"""The conditions of a run, for the top of the report: data, training budget, threat models, attacks, seeds.

    conditions.describe(summary, profile) -> {label: sentence}

Read from the profile (what was asked) and from summary.json (what was measured: image norms, selected epochs,
overrides); lib/report.py renders it.
"""

from __future__ import annotations

from lib import profiles


def _recipes(profile: dict) -> list[str]:
    return [k for k in profile["models"] if "source" not in (profile["models"][k] or {})]


def describe(summary: dict, profile: dict) -> dict[str, str]:
    t01 = summary.get("01_training") or {}
    ev, tr = profile.get("eval", {}), {**profiles.TRAIN_DEFAULTS, **(profile.get("train") or {})}
    norm = t01.get("image_norm")
    rel = (lambda eps: f" ({100 * eps / norm:.1f} % of the mean image L2 norm {norm:.2f})") if norm else \
        (lambda eps: "")
    recipes = _recipes(profile)
    eps = []
    for k in recipes:
        cfg = profiles.model_config(profile, k)
        if cfg["mode"] == "pgd":
            eps.append(f"{k} ε {cfg['eps']:g}{rel(cfg['eps'])}, {cfg['steps']} steps of {cfg['step_size']:g}")
        elif cfg["mode"] == "gradnorm":
            eps.append(f"{k} gradient-norm λ {cfg['lam']:g}")
    units = t01.get("units") or {}
    epochs = {u: r.get("best_epoch") for u, r in units.items() if r.get("best_epoch") is not None}
    apgd = ev.get("apgd") or {}
    out = {
        "data": f"{profile['dataset']}: training on "
                f"{'the first %s' % tr['train_subset'] if tr.get('train_subset') else 'all'} train images, "
                f"{tr.get('val_images')} validation images for selection, {ev.get('test_images')} test images for "
                f"accuracy; notebooks 02–06 draw their own seeded test images (n in each row)",
        "training": f"{tr['epochs']} epochs, batch {tr['batch_size']}, SGD lr {tr['lr']:g} ({tr['schedule']}), "
                    f"momentum {tr['momentum']:g}, weight decay {tr['weight_decay']:g}, architecture "
                    f"{profile.get('arch')} {profile.get('arch_kwargs') or ''}; checkpoint selection `{tr['select']}` "
                    "(a PGD-trained model by validation PGD accuracy at its own training ε, others by clean "
                    "accuracy, unless `select` says otherwise)",
        "training threat models": "; ".join(eps) or "none",
        "evaluation": f"{ev.get('norm', 'l2').upper()} PGD ε {ev.get('eps')}{rel(ev.get('eps') or 0)}, "
                      f"{ev.get('steps')} steps of {ev.get('step_size')} from a random start"
                      + (f"; APGD-CE + APGD-T ({apgd.get('steps')} steps, {apgd.get('targets')} targets, "
                         f"{apgd.get('restarts')} restart) on the first {apgd.get('images')} test images"
                         + (f" of {', '.join(apgd['models'])}" if apgd.get("models") else "")
                         if apgd else ""),
        "seeds": f"{profile.get('seeds', 1)} training seed(s) per recipe (torch seeds {profile.get('seed', 0)}…"
                 f"{profile.get('seed', 0) + int(profile.get('seeds', 1)) - 1}); image draws seeded by the pipeline's "
                 f"--seed {summary.get('_seed', 0)}",
        "selected epochs": ", ".join(f"{u} {e}" for u, e in epochs.items()) or "not recorded",
    }
    changed = {nb: o for nb, o in (summary.get("_overrides") or {}).items() if o}
    if changed:  # notebooks that ran with the profile as written are left out
        out["overrides"] = str(changed)
    return out


def environment_lines(summary: dict, profile: dict) -> list[str]:
    env = summary.get("_environment") or {}
    v = env.get("versions", {})
    return [f"profile `{profile['name']}` (dataset {profile['dataset']}, seed {profile.get('seed', 0)})",
            f"git commit `{env.get('git_commit')}`",
            f"device {env.get('device')} ({env.get('device_name')}), {env.get('threads')} threads",
            "python " + str(env.get("python")) + ", " + ", ".join(f"{k} {x}" for k, x in v.items() if x)]
