"""lib.workers: per-model jobs side by side in one-thread processes give what the loop gives, in its order."""

import multiprocessing
import os

import pytest
import torch

from lib import profiles, train, workers


def _square_and_threads(x):
    return x * x, torch.get_num_threads(), os.getpid()


def _fails(x):
    if x == 2:
        raise ValueError(f"job {x} failed")
    return x


def _logits(net, x):
    with torch.no_grad():
        return net(x)


def test_count_is_one_per_usable_cpu_on_a_cpu_and_one_elsewhere(monkeypatch):
    monkeypatch.setattr(workers, "usable_cpus", lambda: 4)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert workers.count("auto", "cpu", 10) == 4
    assert workers.count(None, "cpu", 6) == 3  # at least two jobs per process
    assert workers.count(None, "cpu", 3) == 1
    assert workers.count(2, "cpu", 10) == 2
    assert workers.count("auto", "cpu", 1) == 1
    assert workers.count("auto", "cuda", 10) == 1  # a GPU is not shared by forked processes
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert workers.count("auto", "cpu", 10) == 1  # under torchrun the ranks already use the cores
    for bad in (0, -1, "two", True, 1.5):
        with pytest.raises(ValueError, match="workers must be"):
            workers.count(bad, "cpu", 10)


def test_run_returns_the_loops_results_in_job_order_from_one_thread_workers():
    seen = []
    out = workers.run(_square_and_threads, [(i,) for i in range(7)], workers=2, on_done=lambda i, r: seen.append(i))
    assert [r[0] for r in out] == [i * i for i in range(7)]
    assert {r[1] for r in out} == {1}  # one torch thread per worker
    assert os.getpid() not in {r[2] for r in out} and len({r[2] for r in out}) <= 2
    assert sorted(seen) == list(range(7))
    assert workers.run(_square_and_threads, [(3,)], workers=2)[0][2] == os.getpid()  # one job: no pool


def test_a_failing_job_raises_its_own_error_here_and_leaves_no_worker_behind():
    with pytest.raises(ValueError, match="job 2 failed"):
        workers.run(_fails, [(i,) for i in range(5)], workers=2)
    assert not multiprocessing.active_children()


def test_map_models_equals_the_loop():
    torch.manual_seed(0)
    nets = {f"m{i}": torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)) for i in range(4)}
    x = torch.rand(5, 1, 4, 4)
    got = workers.map_models(_logits, nets, x, workers=2, progress=False)
    assert list(got) == list(nets)
    for k, net in nets.items():
        assert torch.equal(got[k], _logits(net, x))


def test_models_trained_side_by_side_equal_models_trained_one_by_one_on_one_thread(tmp_path):
    prof = profiles.load("smoke")
    units = ["standard@0", "standard@1", "robust@0", "robust@1"]
    side = train.get_models({**prof, "workers": 2}, units, tmp_path / "side", progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        alone = train.get_models({**prof, "workers": 1}, units, tmp_path / "alone", progress=False)
    finally:
        torch.set_num_threads(threads)
    for u in units:
        a, b = side[u].state_dict(), alone[u].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), u  # the same process on one thread: bitwise
        assert side[u].meta["metrics"]["correct"] == alone[u].meta["metrics"]["correct"]
