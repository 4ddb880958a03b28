import pytest
import torch

from lib import attacks


def _l2(t):
    return t.flatten(1).norm(dim=1)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_stays_in_ball_and_box(digits_models, digits_batch, norm):
    model, (x, y) = digits_models["standard"], digits_batch
    eps = 0.5 if norm == "l2" else 0.05
    xa = attacks.pgd(model, x, y, eps=eps, step_size=eps / 4, steps=10, norm=norm)
    d = xa - x
    size = _l2(d) if norm == "l2" else d.flatten(1).abs().amax(1)
    assert (size <= eps * (1 + 1e-5)).all()
    assert xa.min() >= 0 and xa.max() <= 1
    assert (size > 0.5 * eps).float().mean() > 0.5  # it actually moved


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_pgd_beats_random_noise_of_same_norm(digits_models, digits_batch, norm):
    model, (x, y) = digits_models["standard"], digits_batch
    eps = 1.0 if norm == "l2" else 0.1
    gen = torch.Generator().manual_seed(0)
    xa = attacks.pgd(model, x, y, eps=eps, step_size=eps / 4, steps=10, norm=norm, generator=gen)
    noise = attacks.random_perturbation(x, eps, norm, generator=gen)
    xr = (x + noise).clamp(0, 1)
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy
        acc_adv = (model(xa).argmax(1) == y).float().mean()
        acc_rand = (model(xr).argmax(1) == y).float().mean()
        assert ce(model(xa), y) > ce(model(xr), y)
    assert acc_adv < acc_rand - 0.2


def test_per_example_eps_tensor(digits_models, digits_batch):
    model, (x, y) = digits_models["standard"], digits_batch
    eps = torch.linspace(0, 1, len(x))
    xa = attacks.pgd(model, x, y, eps=eps, step_size=eps / 4, steps=5)
    assert (_l2(xa - x) <= eps * (1 + 1e-5) + 1e-7).all()
    assert torch.equal(xa[0], x[0])


def test_targeted_raises_target_probability(digits_models, digits_batch):
    model, (x, y) = digits_models["standard"], digits_batch
    target = (y + 1) % 10
    xa = attacks.pgd(model, x, target, eps=1.0, step_size=0.25, steps=10, targeted=True)
    with torch.no_grad():
        p0 = model(x).softmax(1).gather(1, target[:, None])
        p1 = model(xa).softmax(1).gather(1, target[:, None])
    assert (p1 > p0).float().mean() > 0.9


def test_custom_loss_hook_is_maximised(digits_models, digits_batch):
    model, (x, _) = digits_models["standard"], digits_batch
    loss = lambda m, xa, _: m.features(xa)[:, 0]
    xa = attacks.pgd(model, x, None, eps=2.0, step_size=0.5, steps=10, loss_fn=loss, random_start=False)
    with torch.no_grad():
        assert (model.features(xa)[:, 0] >= model.features(x)[:, 0]).all()


def test_eps_zero_returns_input_and_mode_is_restored(digits_models, digits_batch):
    model, (x, y) = digits_models["standard"], digits_batch
    model.train()
    model.head.eval()  # a mixed state must come back exactly
    xa = attacks.pgd(model, x, y, eps=0.0, step_size=0.1, steps=5)
    assert torch.equal(xa, x)
    attacks.pgd(model, x, y, eps=0.3, step_size=0.1, steps=2)
    assert model.training and model.body.training and not model.head.training
    model.eval()


def test_bad_arguments_raise_clear_errors(digits_models, digits_batch):
    model, (x, y) = digits_models["standard"], digits_batch
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        attacks.pgd(model, x, y, eps=-0.1, step_size=0.1, steps=1)
    with pytest.raises(ValueError, match="unknown norm"):
        attacks.pgd(model, x, y, eps=0.1, step_size=0.1, steps=1, norm="l1")
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        attacks.pgd(model, bad, y, eps=0.1, step_size=0.1, steps=1)
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        attacks.pgd(model, x * 255, y, eps=0.1, step_size=0.1, steps=1)


@pytest.mark.parametrize("kwargs,named", [
    ({"eps": float("nan")}, "eps"), ({"eps": float("inf")}, "eps"), ({"step_size": -0.1}, "step_size"),
    ({"step_size": float("nan")}, "step_size"), ({"steps": -1}, "steps"), ({"steps": 2.5}, "steps")])
def test_pgd_refuses_nonfinite_or_negative_budgets(digits_models, digits_batch, kwargs, named):
    model, (x, y) = digits_models["standard"], digits_batch
    args = {"eps": 0.5, "step_size": 0.1, "steps": 2, **kwargs}
    with pytest.raises(ValueError, match=rf"^pgd: {named} must be"):
        attacks.pgd(model, x, y, **args)
    eps_t = torch.full((len(x),), 0.5)
    eps_t[3] = float("nan")  # one bad entry of a per-example budget is enough to refuse
    with pytest.raises(ValueError, match="eps must be a finite number"):
        attacks.pgd(model, x, y, eps=eps_t, step_size=0.1, steps=2)


@pytest.mark.parametrize("norm,eps", [("l2", 1.0), ("linf", 0.1)])
def test_apgd_stays_in_ball_and_is_not_weaker_than_pgd(digits_models, digits_batch, norm, eps):
    model, (x, y) = digits_models["robust"], digits_batch
    pgd = attacks.pgd(model, x, y, eps=eps, step_size=eps / 4, steps=20, norm=norm,
                      generator=torch.Generator().manual_seed(0))
    state = torch.random.get_rng_state()
    xa = attacks.apgd(model, x, y, eps=eps, norm=norm, steps=10, targets=2)
    assert torch.equal(torch.random.get_rng_state(), state)  # torchattacks reseeds; we restore
    d = xa - x
    size = _l2(d) if norm == "l2" else d.flatten(1).abs().amax(1)
    assert (size <= eps * (1 + 1e-5)).all() and xa.min() >= 0 and xa.max() <= 1
    with torch.no_grad():
        clean, acc_pgd, acc_apgd = ((model(t).argmax(1) == y).float().mean().item() for t in (x, pgd, xa))
    assert acc_apgd <= acc_pgd < clean  # the stronger attack, on a model PGD already hurts
    with torch.no_grad():
        survived = model(xa).argmax(1) == y
    assert survived.any() and (size[survived] == 0).all()  # an image neither attack fooled comes back as is


def test_apgd_targets_add_strength_and_bad_arguments_raise(digits_models, digits_batch):
    model, (x, y) = digits_models["standard"], digits_batch
    ce_only = attacks.apgd(model, x, y, eps=0.5, steps=10, targets=0)
    both = attacks.apgd(model, x, y, eps=0.5, steps=10, targets=3)
    with torch.no_grad():
        fooled_ce, fooled_both = ((model(t).argmax(1) != y) for t in (ce_only, both))
    assert (fooled_both | ~fooled_ce).all()  # APGD-T only runs on what APGD-CE left, so it never undoes it
    assert fooled_both.sum() >= fooled_ce.sum()
    with pytest.raises(ValueError, match="unknown norm"):
        attacks.apgd(model, x, y, eps=0.5, norm="l1")
    with pytest.raises(ValueError, match=r"\[0,1\]"):
        attacks.apgd(model, x * 255, y, eps=0.5)


def test_torchattacks_is_installed_without_its_requests_pin():
    import importlib.metadata

    import tomllib

    from conftest import ROOT

    pinned = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["robinterp"]["no-deps"]
    assert f"torchattacks=={importlib.metadata.version('torchattacks')}" in pinned
    assert "--no-deps" in (ROOT / "Makefile").read_text()
    requests = importlib.metadata.version("requests")
    assert int(requests.split(".")[1]) >= 31  # jupyterlab-server's floor: the pin was not applied


def test_snapshot_gives_the_iterates_of_shorter_runs(digits_models, digits_batch):
    model, (x, y) = digits_models["standard"], digits_batch
    seen = {}
    last = attacks.pgd(model, x, y, eps=1.0, step_size=0.3, steps=6, random_start=False,
                       snapshot=lambda t, xa: seen.__setitem__(t, xa))
    assert sorted(seen) == list(range(7)) and torch.equal(seen[0], x) and torch.equal(seen[6], last)
    for t in (1, 3):  # the iterate after t steps is what a t-step run returns
        torch.testing.assert_close(seen[t], attacks.pgd(model, x, y, eps=1.0, step_size=0.3, steps=t,
                                                        random_start=False), atol=1e-6, rtol=0)
    zero = {}
    attacks.pgd(model, x, y, eps=0.0, step_size=0.3, steps=2, snapshot=lambda t, xa: zero.__setitem__(t, xa))
    assert sorted(zero) == [0, 1, 2] and all(torch.equal(v, x) for v in zero.values())


def test_apgd_models_attacks_only_the_named_recipes_and_a_typo_is_refused(digits_models, tmp_path):
    from conftest import tiny_profile
    from lib import robustness

    prof = tiny_profile()
    prof["eval"]["apgd"] = {**prof["eval"]["apgd"], "images": 16, "steps": 3, "models": ["robust"]}
    units = {"standard@0": digits_models["standard"], "robust@0": digits_models["robust"]}
    by = {r["unit"]: r for r in robustness.accuracy_rows(prof, units, tmp_path, progress=False)}
    assert by["standard@0"]["apgd_acc"] is None and by["standard@0"]["apgd_images"] is None
    assert by["robust@0"]["apgd_images"] == 16 and 0 <= by["robust@0"]["apgd_acc"] <= 100
    prof["eval"]["apgd"]["models"] = ["robus"]
    with pytest.raises(ValueError, match="eval.apgd.models names robus, which profile"):
        robustness.accuracy_rows(prof, units, tmp_path, progress=False)


def test_the_apgd_rows_pgd_column_is_the_test_evaluations_own(digits_models, tmp_path):
    """robustness.evaluate reads the test evaluation's per-image clean/PGD results for the APGD images instead of
    attacking them again: the columns equal those lists' means, and APGD is the same as when PGD runs again."""
    from conftest import tiny_profile
    from lib import data, robustness

    prof = tiny_profile()
    model, test = digits_models["robust"], data.load_for(prof, "test", "data")
    settings = {**robustness.apgd_settings(prof), "images": 16, "steps": 3, "batch_size": 8}
    settings.pop("models", None)
    fresh = robustness.evaluate(model, test, settings)
    known = {"clean": [1, 0] * 10, "pgd": [0, 1, 1, 0] * 5}  # 20 >= 16 images: any 0/1 lists are read, not recomputed
    read = robustness.evaluate(model, test, settings, known=known)
    assert read["clean_acc_apgd_images"] == 100 * sum(known["clean"][:16]) / 16
    assert read["pgd_acc_apgd_images"] == 100 * sum(known["pgd"][:16]) / 16
    assert read["apgd_correct"] == fresh["apgd_correct"] and read["apgd_acc"] == fresh["apgd_acc"]
    short = robustness.evaluate(model, test, settings, known={"clean": [1] * 8, "pgd": [1] * 8})  # too few: attacks
    assert short["pgd_acc_apgd_images"] == fresh["pgd_acc_apgd_images"]
