"""lib.visualize: inversion, feature visualisation, class seeds and generation on tiny models."""

import pytest
import torch

from lib import data, models
from lib import visualize as V


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", "train"), data.load("digits", "test")


@pytest.fixture()
def net():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        m = models.build("small_cnn", 10, 1, 8, width=8)
    return m.train()  # the optimisers must switch to eval and restore this


def _images(ds, n, start=0):
    return ds.batch(torch.arange(start, start + n))[0]


def test_fake_relu_forward_is_relu_backward_is_identity():
    z = torch.tensor([-2.0, -0.5, 0.0, 0.5, 3.0], requires_grad=True)
    out = models.FakeReLU.apply(z)
    assert torch.equal(out, torch.relu(z))
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    out.backward(g)
    assert torch.equal(z.grad, g)  # also where z < 0, unlike ReLU


@pytest.mark.parametrize("arch", models.ARCHS)
def test_fake_relu_acts_on_the_final_relu_of_every_architecture(arch):
    """features(x, fake_relu=True): the same values; at the last ReLU before pooling the gradient w.r.t. its
    input equals the gradient w.r.t. its output (identity), where a real ReLU zeroes it at negative inputs."""
    size = {"small_cnn": 8, "resnet18_cifar": 8}.get(arch, 32)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = models.build(arch, 10, 3, size, width=4).eval()
        x = torch.rand(2, 3, size, size)
        w = torch.randn(net.head.in_features)
    relu = [m for m in net.body.modules() if isinstance(m, torch.nn.ReLU)][-1]
    grads = {}
    for fake in (False, True):
        seen = {}
        pre = relu.register_forward_pre_hook(lambda m, inp, seen=seen: seen.__setitem__("z", inp[0]))
        try:
            feats = net.features(x, fake_relu=fake)
        finally:
            pre.remove()
        seen["z"].retain_grad()
        (feats @ w).sum().backward()
        grads[fake] = (feats.detach(), seen["z"].detach(), seen["z"].grad.clone())
        net.zero_grad()
    (f0, z, g_relu), (f1, _, g_fake) = grads[False], grads[True]
    torch.testing.assert_close(f1, f0, rtol=0, atol=0)
    # upstream gradient at the ReLU's output: w spread evenly over the pooled positions (or w itself)
    upstream = (w.view(1, -1, 1, 1) / (z.shape[-1] * z.shape[-2])).expand_as(z) if z.ndim == 4 else w.expand_as(z)
    torch.testing.assert_close(g_fake, upstream)
    torch.testing.assert_close(g_relu, upstream * (z > 0))
    assert (z < 0).any() and not torch.equal(g_fake, g_relu)


def test_inversion_lowers_representation_distance_per_example(net, digits):
    _, test = digits
    targ, src = _images(test, 6), torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        r = net.features(targ)
        before = V.relative_distance(net, src, r)
    inv = V.invert_representation(net, src, targ, eps=100.0, step_size=0.05, steps=150, progress=False)
    with torch.no_grad():
        after = V.relative_distance(net, inv, r)
    assert (after < 0.5 * before).all(), (before, after)
    assert inv.min() >= 0 and inv.max() <= 1 and net.training
    # per-example objective: one example's result does not depend on the rest of the batch
    alone = V.invert_representation(net, src[2:3], targ[2:3], eps=100.0, step_size=0.05, steps=150, progress=False)
    torch.testing.assert_close(alone, inv[2:3], atol=1e-5, rtol=0)
    chunked = V.invert_representation(net, src, targ, eps=100.0, step_size=0.05, steps=150, batch_size=4,
                                      progress=False)
    torch.testing.assert_close(chunked, inv, atol=1e-5, rtol=0)


def test_generation_raises_target_logit(net, digits):
    train, _ = digits
    seeds = V.class_seeds(train, 3, 8, seed=0)
    before, _ = V.class_logits(net, seeds, 3)
    gen = V.generate_class_images(net, seeds, 3, eps=4.0, step_size=0.2, steps=30, progress=False)
    after, _ = V.class_logits(net, gen, 3)
    assert (after > before).all() and (after - before).mean() > 0.05, (before, after)
    assert (gen - seeds).flatten(1).norm(dim=1).max() <= 4.0 + 1e-4  # stays in the ε-ball
    per_example = V.generate_class_images(net, seeds, torch.full((8,), 3), eps=4.0, step_size=0.2, steps=30,
                                          progress=False)
    torch.testing.assert_close(per_example, gen)
    traj = V.generate_class_images(net, seeds, 3, eps=4.0, step_size=0.2, steps=30, progress=False, at=[0, 10, 30],
                                   batch_size=3)  # one run per chunk, snapshotted
    assert list(traj) == [0, 10, 30] and torch.equal(traj[0], seeds)
    torch.testing.assert_close(traj[30], gen, atol=1e-5, rtol=0)
    torch.testing.assert_close(traj[10], V.generate_class_images(net, seeds, 3, eps=4.0, step_size=0.2, steps=10,
                                                                 progress=False), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="0..30"):
        V.generate_class_images(net, seeds, 3, eps=4.0, step_size=0.2, steps=30, progress=False, at=[40])


def test_visualize_feature_raises_the_coordinate(net):
    seed = (0.5 + torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) / 20).clamp(0, 1)
    with torch.no_grad():
        f0 = net.features(seed)
    live = f0.min(0).values.argsort(descending=True)[:4].tolist()  # units active at every seed (ReLU)
    kw = dict(eps=100.0, step_size=0.1, steps=40, progress=False)
    one = V.visualize_feature(net, seed, live[0], **kw)
    group = V.visualize_feature(net, seed, live[1:], **kw)
    per = V.visualize_feature(net, seed, torch.tensor([live[1], live[2], live[3], live[0]]), **kw)
    with torch.no_grad():
        assert (net.features(one)[:, live[0]] > f0[:, live[0]] + 0.1).all()
        assert (net.features(group)[:, live[1:]].mean(1) > f0[:, live[1:]].mean(1) + 0.1).all()
        torch.testing.assert_close(per[3], one[3])
    with pytest.raises(ValueError, match="index"):
        V.visualize_feature(net, seed, [], eps=1.0, step_size=0.1, steps=1, progress=False)


def test_top_activating_matches_brute_force(net, digits):
    _, test = digits
    feats = V.representations(net, test, batch_size=100)
    assert feats.shape == (len(test), 32)
    res = V.top_activating(net, test, 7, 5)
    v = feats[:, 7]
    assert res.top_values[0] == v.max() and res.bottom_values[0] == v.min()
    assert (res.top_values[:-1] >= res.top_values[1:]).all()
    torch.testing.assert_close(res.top_images[0], test[int(res.top[0])][0])
    with pytest.raises(ValueError, match="out of range"):
        V.top_activating(net, test, 99, 3, feats=feats)


def test_class_seeds_carry_the_class_mean(digits):
    train, _ = digits
    means = {c: train.batch(V.class_indices(train, c))[0].mean(0) for c in (0, 1)}
    seeds = {c: V.class_seeds(train, c, 4000, seed=0) for c in (0, 1)}
    for c in (0, 1):
        own = (seeds[c].mean(0) - means[c]).abs().mean()
        other = (seeds[c].mean(0) - means[1 - c]).abs().mean()
        assert own < 0.03 and own < 0.25 * other, (own, other)
    assert seeds[0].shape == (4000, 1, 8, 8) and seeds[0].min() >= 0 and seeds[0].max() <= 1


def test_class_seeds_grain_seeding_and_singular_covariance(digits):
    train, _ = digits
    state = torch.get_rng_state()
    a = V.class_seeds(train, 2, 5, grain=4, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # global RNG untouched
    torch.testing.assert_close(a, V.class_seeds(train, 2, 5, grain=4, seed=3))
    assert not torch.equal(a, V.class_seeds(train, 2, 5, grain=4, seed=4))
    blocks = a.unfold(2, 2, 2).unfold(3, 2, 2)  # 8×8 from a 4×4 fit: constant 2×2 blocks
    assert torch.equal(blocks.amax((-1, -2)), blocks.amin((-1, -2)))
    # digits' border pixels are always 0: the raw covariance is singular; both settings must work
    x = train.batch(V.class_indices(train, 2))[0].flatten(1).double()
    assert torch.linalg.matrix_rank(torch.cov(x.T)) < x.shape[1]
    for s in (0.0, 0.01):
        assert torch.isfinite(V.class_seeds(train, 2, 5, seed=0, shrinkage=s)).all()
    with pytest.raises(ValueError, match="grain"):
        V.class_seeds(train, 2, 5, grain=20)
    with pytest.raises(ValueError, match="no images of class"):
        V.class_seeds(train, 11, 5)


@pytest.mark.slow
def test_smoke_notebook_metrics(smoke_run):
    import json

    inv = json.loads((smoke_run / "metrics" / "04_representation_inversion.json").read_text())["metrics"]
    assert inv["models"] == ["standard", "robust"]  # the smoke pgd sweep, standard first
    for key in inv["models"]:
        assert inv["relative_distance"][key]["inverted"] < inv["relative_distance"][key]["source"]
        assert inv["feature_distance"][key] < inv["feature_distance"]["source"]  # closer to the target
        # Boychev's statistic √(Σ₃ d²) = √3·RMS: between √3 and 3 times the mean per-pair distance
        ours, boy = inv["feature_distance"][key], inv["feature_distance_boychev"][key]
        assert 3 ** 0.5 * ours * (1 - 1e-9) <= boy <= 3 * ours * (1 + 1e-9)
    assert inv["n_pairs"] == 3 * inv["n_targets"]
    assert isinstance(inv["feature_distance_extractor"], str)
    gen = json.loads((smoke_run / "metrics" / "05_class_generation.json").read_text())["metrics"]
    assert gen["seeds_from"] == "train" and gen["fake_relu"] is True
    for key in ("standard", "robust"):
        assert gen["models"][key]["target logit (generated)"] > gen["models"][key]["target logit (seed)"]


def test_pick_seeds_starts_each_unit_where_it_is_active(net, digits):
    train, _ = digits
    pool = V.class_seeds(train, None, 32, seed=0, max_images=500)  # a normal fitted to all classes
    with torch.no_grad():
        acts = net.features(pool)
    coords = [0, 5, 9]
    seeds = V.pick_seeds(net, pool, coords, 2)
    assert seeds.shape == (6, 1, 8, 8)
    with torch.no_grad():
        got = net.features(seeds).view(3, 2, -1)
    for i, c in enumerate(coords):
        torch.testing.assert_close(got[i, 0, c], acts[:, c].max())


def test_class_seed_set_reuses_fitted_normals(digits):
    train, _ = digits
    normals = V.fit_class_normals(train, grain=4, classes=[1, 7])
    a, ya = V.class_seed_set(train, 3, grain=4, seed=5, classes=[1, 7])
    b, yb = V.class_seed_set(train, 3, seed=5, normals=normals)
    torch.testing.assert_close(a, b)
    assert ya.tolist() == yb.tolist() == [1, 1, 1, 7, 7, 7]
    torch.testing.assert_close(b[:3], V.class_seeds(train, 1, 3, grain=4, seed=5 * 10007 + 1))


def test_inversion_triples_follow_boychevs_protocol(digits):
    _, test = digits
    x_src, x_targ = V.inversion_pairs(test, 4, source="triple", seed=0)
    assert x_src.shape == x_targ.shape == (12, 1, 8, 8)
    targ = x_targ.view(4, 3, 1, 8, 8)
    assert all(torch.equal(t[0], t[1]) and torch.equal(t[0], t[2]) for t in targ)  # one target, three times
    src = x_src.view(4, 3, 1, 8, 8)
    noise = src[:, 2]
    assert noise.min() >= 0.5 and noise.max() <= 0.55  # 0.5 + U(0,1)/20
    for t in range(4):  # the two image sources are test images other than the target
        for j in range(2):
            hits = (test.batch(torch.arange(len(test)))[0] == src[t, j]).flatten(1).all(1)
            assert hits.any() and not torch.equal(src[t, j], targ[t, 0])
    again = V.inversion_pairs(test, 4, source="triple", seed=0)
    assert torch.equal(again[0], x_src)
    with pytest.raises(ValueError, match="source"):
        V.inversion_pairs(test, 4, source="pairs")


def test_fake_relu_moves_a_unit_that_is_dead_at_the_seed(net):
    """Without fake ReLU a unit at 0 has no gradient and PGD leaves it at 0; with it, the unit comes alive."""
    seed = (0.5 + torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) / 20).clamp(0, 1)
    with torch.no_grad():
        f0 = net.features(seed)
    dead = int(f0.max(0).values.argmin())
    assert (f0[:, dead] == 0).all()
    kw = dict(eps=100.0, step_size=0.1, steps=40, progress=False)
    plain = V.visualize_feature(net, seed, dead, **kw)
    fake = V.visualize_feature(net, seed, dead, fake_relu=True, **kw)
    with torch.no_grad():
        assert torch.equal(plain, seed) and (net.features(plain)[:, dead] == 0).all()
        assert (net.features(fake)[:, dead] > 0).all()


def test_compared_models_follow_the_pgd_sweep():
    prof = {"sweeps": {"pgd": {"robust": 1.5, "standard": 0.0, "pgd_0.5": 0.5}}}
    assert V.compared_models(prof) == ["standard", "pgd_0.5", "robust"]
    assert V.compared_models(prof, ["robust"]) == ["robust"]
    assert V.compared_models({}) == ["standard", "robust"]
    assert V.paper_values({"paper": {"standard": {"fid": 1.0}, "real": {"fid": 2.0}}}, "fid") == \
        {"standard": 1.0, "real": 2.0}
    assert V.paper_values({"paper": None}, "fid") is None


def test_inversion_study_reports_both_statistics(net, digits):
    from lib import inversion

    _, test = digits
    with torch.random.fork_rng():
        torch.manual_seed(3)
        other = models.build("small_cnn", 10, 1, 8, width=4)
    inv = {"n": 2, "source": "triple", "eps": 10.0, "step_size": 0.1, "steps": 5}
    res = inversion.invert_all({"standard": net, "robust": other}, test, inv)
    assert res.group == 3 and len(res.x_targ) == 6 and set(res.inverted) == {"standard", "robust"}
    dist = inversion.feature_distances(res, other)
    table = inversion.distance_table(dist, {"standard": 30.1})
    assert list(table.index) == ["source", "standard", "robust"]
    ratio = table["ratio Boychev / ours"]
    assert ((ratio >= 3 ** 0.5 - 1e-9) & (ratio <= 3 + 1e-9)).all()
    m = inversion.summary_metrics(res, dist, "FD-x", {"standard": 30.1})
    assert m["feature_distance_boychev"]["standard"] == pytest.approx(table.loc["standard", inversion.BOYCHEV_COLUMN])
    assert m["n_targets"] == 2 and m["models"] == ["standard", "robust"]
    assert m["per_unit"]["feature_distance"]["robust@0"] == pytest.approx(dist["pair"]["robust"].reshape(2, 3).mean(1))
    both = inversion.summary_metrics(res, dist, "FD-x", None, {"a": ("FD-x", dist),
                                                               "b": ("FD-y", inversion.feature_distances(res, net))})
    assert set(both["feature_distance_spaces"]) == {"a", "b"} and \
        both["per_unit"]["feature_distance.a"] == both["per_unit"]["feature_distance"]
    single = inversion.invert_all({"standard": net}, test, {**inv, "source": "image"})
    assert inversion.summary_metrics(single, inversion.feature_distances(single, other), "FD-x", None)[
        "feature_distance_boychev"] is None  # his statistic needs triples
