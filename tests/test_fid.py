"""lib.fid: Fréchet distance against pytorch-fid, the local-only Inception path, the domain extractor."""

from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from pytorch_fid import inception as pfi
from pytorch_fid.fid_score import calculate_frechet_distance

from lib import data, fid, models


def _stats(rng, n, d, shift=0.0, scale=1.0):
    a = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * scale / np.sqrt(d) + shift
    return a.mean(0), np.cov(a, rowvar=False)


@pytest.mark.parametrize("n,d", [(500, 16), (300, 64), (2000, 256)])
def test_frechet_distance_matches_pytorch_fid(n, d):
    rng = np.random.default_rng(d)
    s1, s2 = _stats(rng, n, d), _stats(rng, n, d, shift=0.3, scale=1.5)
    ours = fid.frechet_distance(*s1, *s2)
    ref = calculate_frechet_distance(*s1, *s2)
    assert ours == pytest.approx(ref, rel=1e-6)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    mu, sigma = _stats(rng, 400, 32)
    assert fid.frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=1e-8)
    # commuting (diagonal) covariances: Σ (√a − √b)² + ‖μ₁ − μ₂‖²
    a, b = rng.uniform(0.1, 2, 8), rng.uniform(0.1, 2, 8)
    m1, m2 = rng.standard_normal(8), rng.standard_normal(8)
    expect = ((m1 - m2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert fid.frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expect, rel=1e-10)


def test_frechet_distance_singular_covariance():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((40, 50)), rng.standard_normal((40, 50))  # rank 39 in 50 dims
    s1, s2 = (x.mean(0), np.cov(x, rowvar=False)), (y.mean(0), np.cov(y, rowvar=False))
    d = fid.frechet_distance(*s1, *s2)
    assert np.isfinite(d) and d == pytest.approx(calculate_frechet_distance(*s1, *s2), rel=1e-6)
    # the eigendecomposition fallback (singular Σ₁) agrees with the Cholesky route on a full-rank Σ₁
    full = _stats(rng, 300, 20), _stats(rng, 300, 20, shift=1.0)
    with mock.patch("numpy.linalg.cholesky", side_effect=np.linalg.LinAlgError):
        via_eigh = fid.frechet_distance(*full[0], *full[1])
    assert via_eigh == pytest.approx(fid.frechet_distance(*full[0], *full[1]), rel=1e-10)
    with pytest.raises(ValueError, match="shapes"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def _domain_net():
    torch.manual_seed(0)
    return models.build("small_cnn", 10, 1, 8, width=4).eval()


def test_fid_of_a_set_with_itself_is_zero_and_shift_increases_it():
    net = _domain_net()
    x = torch.rand(64, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    assert fid.fid(x, x, net, batch_size=16, progress=False) == pytest.approx(0, abs=1e-6)
    assert fid.fid(x, (x * 0.5).clamp(0, 1), net, progress=False) > 1e-3
    assert fid.distance_label(net).startswith("FD-")


def _standin_state(seed=0) -> dict:
    """pytorch-fid's FID Inception architecture with random weights (no download, global RNG kept)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        net = fid.fid_inception_architecture()
        for m in net.modules():  # non-trivial BatchNorm statistics, so a wrong mapping would show
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net.state_dict()


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / fid.FID_WEIGHTS_FILE
    torch.save(_standin_state(), path)
    return path, data.file_digest(path)


def test_inception_with_standin_weights(standin):
    path, digest = standin
    with mock.patch("torch.hub.load_state_dict_from_url", side_effect=AssertionError("network call")):
        net = fid.inception(dims=(192,), weights=path, sha256=digest)
    assert isinstance(net, pfi.InceptionV3) and not net.training
    assert fid.extractor_name(net) == "inception-192" and fid.distance_label(net) == "FD-inception-192"
    state = _standin_state()
    got = net.blocks[1][0].conv.weight  # Conv2d_3b_1x1: the file's weights, not a fresh init
    assert torch.equal(got, state["Conv2d_3b_1x1.conv.weight"])
    gray = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    acts = fid.activations(gray, net, batch_size=2, progress=False)
    assert acts.shape == (3, 192) and np.isfinite(acts).all()
    rgb = fid.activations(gray.expand(-1, 3, -1, -1), net, progress=False)
    np.testing.assert_allclose(acts, rgb, rtol=1e-6)  # grayscale = the same image repeated on 3 channels
    d = fid.feature_distance(gray, gray, net)
    np.testing.assert_allclose(d, 0, atol=1e-6)


def test_inception_equals_pytorch_fids_own_network(standin):
    """Our construction (no download, no patching) computes exactly what pytorch-fid's InceptionV3 computes
    when its constructor is handed the same weights."""
    path, digest = standin
    ours = fid.inception(dims=(64, 192, 2048), weights=path, sha256=digest)
    state = torch.load(path, weights_only=True)
    with mock.patch.object(pfi, "load_state_dict_from_url", lambda *a, **k: state):
        ref = pfi.InceptionV3([0, 1, 3]).eval()
    x = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for a, b in zip(ours(x), ref(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not any(p.requires_grad for p in ours.parameters())
    assert "mock" not in (Path(fid.__file__).read_text())


def test_boychev_group_distance_closed_form():
    """One L2 norm over the stacked 3×D difference (his torch.norm(d2 - d1)); √3 × the per-pair distance when
    the three pairs are alike, and always between √3 and 3 times the mean per-pair distance."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 5, bias=False)
    net = models.Classifier(torch.nn.Identity(), torch.nn.Sequential(torch.nn.Flatten(), lin),
                            torch.nn.Linear(5, 2)).eval()
    q = lambda t: torch.round(t * 255) / 255  # 8-bit images: the extractor's quantisation is exact
    a = q(torch.rand(6, 1, 8, 8) * 0.8)
    b = q((a + 0.1 * torch.rand(6, 1, 8, 8)).clamp(0, 1))
    got = fid.group_distance(a, b, net, 3)
    with torch.no_grad():
        d1, d2 = lin(a.flatten(1)).view(2, 3, 5), lin(b.flatten(1)).view(2, 3, 5)
    expect = torch.stack([torch.norm(d2[t] - d1[t], p=2) for t in range(2)]).double().numpy()
    np.testing.assert_allclose(got, expect, rtol=1e-5)
    pair = fid.feature_distance(a, b, net).reshape(2, 3)
    assert (np.sqrt(3) * pair.mean(1) <= got * (1 + 1e-9)).all() and (got <= 3 * pair.mean(1) * (1 + 1e-9)).all()
    same = torch.cat([a[:1]] * 3), torch.cat([b[:1]] * 3)  # three identical pairs: exactly √3 × d
    np.testing.assert_allclose(fid.group_distance(*same, net, 3), np.sqrt(3) * fid.feature_distance(*same, net)[:1],
                               rtol=1e-10)
    with pytest.raises(ValueError, match="groups"):
        fid.group_distance(a[:5], b[:5], net, 3)


def test_per_class_fd_only_where_n_reaches_the_dimension():
    rng = np.random.default_rng(0)
    acts, ref = rng.standard_normal((60, 4)), rng.standard_normal((80, 4)) + 0.5
    y, ref_y = np.repeat([0, 1], 30), np.repeat([0, 1], 40)
    values, reason = fid.per_class_fd(acts, y, ref, ref_y, [0, 1])
    assert reason is None
    np.testing.assert_allclose(values, [fid.frechet_of(acts[y == c], ref[ref_y == c]) for c in (0, 1)])
    wide = rng.standard_normal((60, 40))  # 30 images per class < 40 dimensions
    values, reason = fid.per_class_fd(wide, y, rng.standard_normal((80, 40)), ref_y, [0, 1])
    assert np.isnan(values).all() and "not computed" in reason and "40" in reason


def test_extractor_accuracy():
    net = _domain_net()
    x = torch.rand(20, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        pred = net(x).argmax(1)
    y = pred.clone()
    y[:5] = (y[:5] + 1) % 10
    assert fid.accuracy(net, x, y, batch_size=7) == pytest.approx(75.0)


def test_inception_2048_is_labelled_fid(standin):
    path, digest = standin
    net = fid.inception(weights=path, sha256=digest)
    assert fid.distance_label(net) == "FID" and fid.accuracy(net, torch.rand(2, 3, 8, 8), [0, 1]) is None
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert fid.activations(x, net, progress=False).shape == (2, 2048)


def test_missing_weights_error_names_file_url_and_place(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        fid.inception(weights=tmp_path / "nothing.pth")
    msg = str(e.value)
    assert fid.FID_WEIGHTS_FILE in msg and pfi.FID_WEIGHTS_URL in msg and "checkpoints" in msg


def test_wrong_hash_is_refused(standin):
    path, _ = standin
    with pytest.raises(ValueError, match="SHA-256"):
        fid.inception(dims=(192,), weights=path)  # the official digest cannot match random weights


def test_default_weights_path_is_torch_hub_cache(tmp_path):
    with mock.patch("torch.hub.get_dir", return_value=str(tmp_path)):
        assert fid.default_weights_path() == tmp_path / "checkpoints" / fid.FID_WEIGHTS_FILE
        assert not fid.weights_available()
        with pytest.raises(FileNotFoundError, match=str(tmp_path)):
            fid.inception()


def test_domain_extractor_is_independent_cached_and_labelled(tmp_path):
    from lib import profiles

    prof = profiles.load("smoke")
    prof["train"] = {**prof["train"], "epochs": 1}
    spec = {"arch": "small_cnn", "arch_kwargs": {"width": 4}, "seed": 7}
    net = fid.domain_extractor(prof, spec, tmp_path, progress=False)
    assert net.meta["config"]["seed"] == 7 and net.meta["key"] == "fd_extractor"
    assert fid.distance_label(net) == "FD-small_cnn-w4"
    with mock.patch("lib.train.train", side_effect=AssertionError("retrained")):
        again = fid.domain_extractor(prof, spec, tmp_path, progress=False)  # cached
    assert torch.equal(again.head.weight, net.head.weight)
    base = profiles.model_config(prof, "standard")
    with pytest.raises(ValueError, match="differ"):
        fid.domain_extractor(prof, {"arch_kwargs": base["arch_kwargs"], "seed": 7}, tmp_path)
    with pytest.raises(ValueError, match="differ"):
        fid.domain_extractor(prof, {"arch_kwargs": {"width": 4}}, tmp_path)
    with pytest.raises(ValueError, match="unknown"):
        fid.domain_extractor(prof, {"widht": 4}, tmp_path)
    section = {"feature_spaces": {"std": {"features": "domain", **spec},
                                  "rob": {"features": "domain", **spec, "seed": 8, "mode": "pgd", "eps": 0.5,
                                          "step_size": 0.25, "steps": 1, "epochs": 1}}}
    spaces = fid.feature_spaces(section, prof, tmp_path, progress=False)
    assert torch.equal(spaces["std"].head.weight, net.head.weight)  # the cached extractor, reused
    info = fid.describe(spaces["rob"])
    assert info["mode"] == "pgd" and info["seed"] == 8 and info["label"] == "FD-small_cnn-w4"
    with pytest.raises(ValueError, match="no entry 'inception'"):
        fid.feature_space(section, "inception", prof, tmp_path)


@pytest.mark.slow
def test_smoke_notebook_metrics(smoke_run):
    import json

    m = json.loads((smoke_run / "metrics" / "06_fid.json").read_text())["metrics"]
    assert m["fd_name"].startswith("FD-")  # 8×8 digits: never labelled FID
    assert set(m["fd_spaces"]) == {"standard_cnn", "robust_cnn"}
    assert m["sets"] == ["real", "seeds", "standard", "robust"]
    for space in m["fd_spaces"].values():
        assert space["mode"] in ("standard", "pgd") and space["label"].startswith("FD-")
        for key in m["sets"]:
            assert space["fd"][key] > 0 and space["fd_std"][key] >= 0 and 0 <= space["accuracy"][key] <= 100
        assert space["fd"]["real"] < min(space["fd"][k] for k in m["sets"][1:])  # real images are the floor
        assert space["per_class"] is None and "n ≥ d" in space["per_class_reason"]  # 10 per class < d


def test_fd_study_measures_every_set_in_every_space():
    from lib import data, generation

    train, test = data.load("digits", "train"), data.load("digits", "test")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        nets = {k: models.build("small_cnn", 10, 1, 8, width=4).eval() for k in ("standard", "robust")}
        spaces = {"a": _domain_net(), "b": models.build("small_cnn", 10, 1, 8, width=2).eval()}
    g = {"grain": 4, "shrinkage": 0.01, "seeds_from": "test", "eps": 1.0, "step_size": 0.2, "steps": 2}
    fsec = {"seeds": [0], "per_class": 3, "budget_steps": [0, 1, 5], "kid": {"subsets": 10, "subset_size": 20}}
    study = generation.fd_study(nets, spaces, train, test, fsec, g, batch_size=200)
    assert study.sets == ["real", "seeds", "standard", "robust"] and study.n_per_set == 30
    seeds, y = generation.class_seeds(train, test, g, 3, seed=0)  # the same draws, fitted on test
    for name, ext in spaces.items():
        ref = fid.activations(test, ext, 200, progress=False)  # the study's batches: same float rounding
        expect = fid.frechet_of(fid.activations(seeds, ext, 200, progress=False), ref)
        assert study.per_seed[name]["seeds"][0] == pytest.approx(expect, rel=1e-9)
        assert study.accuracy[name]["seeds"][0] == pytest.approx(fid.accuracy(ext, seeds, y))
        assert "not computed" in study.per_class_reason[name]  # 3 per class < d
    train_seeds, _ = generation.class_seeds(train, test, {**g, "seeds_from": "train"}, 3, seed=0)
    assert not torch.equal(train_seeds, seeds)
    with pytest.raises(ValueError, match="seeds_from"):
        generation.class_seeds(train, test, {**g, "seeds_from": "val"}, 3)
    assert study.grid == [0, 1, 2]  # budget_steps capped at generation.steps, which is always in the grid
    for name in spaces:  # one trajectory: 0 steps are the seeds, generation.steps the sets measured above
        for k in nets:
            assert study.budget[name][k][0]["fd"] == pytest.approx(study.per_seed[name]["seeds"][0], rel=1e-9)
            assert study.budget[name][k][2]["fd"] == pytest.approx(study.per_seed[name][k][0], rel=1e-9)
            assert study.budget[name][k][2]["acc"] == pytest.approx(study.accuracy[name][k][0])
            assert study.budget[name][k][0]["kid"] == pytest.approx(study.kid[name]["seeds"]["kid"], rel=1e-9)
    m = generation.summary_metrics(study, test.classes)
    assert m["fd_primary"] == "a" and m["fd"] == m["fd_spaces"]["a"]["fd"] and m["models"] == ["standard", "robust"]
    assert set(m["fd_budget"]["b"]["robust"]["1"]) >= {"fd", "kid", "kid_lo", "kid_hi", "sat_low", "sat_high",
                                                       "norm", "acc"}
    assert m["per_unit"]["fd.a"]["robust@0"] == study.per_seed["a"]["robust"] and m["units"]["standard@0"] == {
        "model": "standard", "seed": 0}
    table = generation.fd_table(study, {"real": 5.0})
    assert list(table.index) == study.sets and "b: accuracy (%)" in table and table.loc["real", "paper (FID)"] == 5.0


def _kid_sets(rng, n, d, shift=0.0):
    return np.tanh(rng.standard_normal((n, d)) + shift), np.tanh(rng.standard_normal((n, d)))


def test_kid_unbiased_mmd_matches_brute_force_and_detects_a_shift():
    rng = np.random.default_rng(0)
    a, b = _kid_sets(rng, 7, 3, shift=0.5)
    k = lambda u, v: (u @ v / 3 + 1) ** 3
    same = sum(k(a[i], a[j]) + k(b[i], b[j]) for i in range(7) for j in range(7) if i != j) / 42
    cross = sum(k(a[i], b[j]) for i in range(7) for j in range(7)) / 49
    assert fid.kid(a, b, subsets=3, subset_size=7)["kid"] == pytest.approx(same - 2 * cross, rel=1e-10)
    far = fid.kid(*_kid_sets(rng, 300, 8, shift=1.0), subsets=50, subset_size=100)
    assert far["kid_lo"] > 0 and far["kid_lo"] <= far["kid"] <= far["kid_hi"]
    with pytest.raises(ValueError, match="equal D"):
        fid.kid(a, b[:, :2])


def test_kid_of_two_draws_of_one_distribution_has_expectation_zero():
    # unbiased at small n: over seeded pairs of independent draws the mean is within its standard error of 0,
    # while the biased (V-statistic) estimate, which keeps the kernel's diagonal, is positive by construction
    values = np.array([fid.kid(*_kid_sets(np.random.default_rng(s), 20, 4), subsets=1, subset_size=20)["kid"]
                       for s in range(400)])
    sem = values.std(ddof=1) / np.sqrt(len(values))
    assert abs(values.mean()) < 3 * sem and values.min() < 0 < values.max()
    a, b = _kid_sets(np.random.default_rng(1), 20, 4)
    biased_extra = (np.trace((a @ a.T / 4 + 1) ** 3) + np.trace((b @ b.T / 4 + 1) ** 3)) / 400
    assert biased_extra > 10 * sem


def test_kid_agrees_with_torch_fidelity():
    tf = pytest.importorskip("torch_fidelity.metric_kid")
    rng = np.random.default_rng(3)
    a, b = _kid_sets(rng, 150, 8, shift=0.3)
    ours = fid.kid(a, b[:120], subsets=20, subset_size=50, seed=5)
    ref = tf.kid_features_to_metric(torch.from_numpy(a), torch.from_numpy(b[:120]), kid_subsets=20,
                                    kid_subset_size=50, rng_seed=5, verbose=False)
    assert ours["kid"] == pytest.approx(ref["kernel_inception_distance_mean"], rel=1e-9)
    assert ours["kid_std"] == pytest.approx(ref["kernel_inception_distance_std"], rel=1e-9)


def test_budget_grid_saturation_and_flip_steps():
    from lib import generation

    assert generation.budget_grid({"budget_steps": [0, 5, 10, 20, 40]}, {"steps": 30}) == [0, 5, 10, 20, 30]
    assert generation.budget_grid({}, {"steps": 60}) == [0, 5, 10, 20, 40, 60]
    x = torch.zeros(2, 1, 2, 2)
    x[0, 0, 0] = 1.0  # two of eight pixels at 1, six at 0: norms √2 and 0
    assert generation.saturation(x) == pytest.approx({"sat_low": 0.75, "sat_high": 0.25, "norm": 2 ** 0.5 / 2})
    fd = lambda vals: {str(t): {"fd": v} for t, v in zip((0, 5, 10, 20), vals)}
    budget = {"standard": fd([3, 5, 4, 9]), "robust": fd([3, 4, 6, 8])}  # tie at 0, robust lower, higher, lower
    assert generation.flip_steps(budget, "standard", "robust") == [10, 20]
    assert generation.flip_steps({"standard": fd([3, 5, 5, 5]), "robust": fd([3, 4, 5, 1])},
                                 "standard", "robust") == []
