"""Independent per-model jobs in parallel single-threaded processes on a multi-core CPU (issue 18).

A small_cnn step is too small to keep two torch threads fully busy. Where a notebook does the same thing to many
models (train them, attack them, measure them), `run` hands the models to `count(...)` worker processes of one
thread each and returns the results in the order of the jobs, as the loop would have. Inside the default pipeline
on the 2-core reference machine this gained 1.08–1.21× over one process with two threads (training 1.13×, APGD
1.21×, alignment 1.16×), and lost (0.78×) on two jobs of unequal length, hence `count`'s two jobs per worker
(benchmarks/README.md, "Models side by side").

- Results equal those of the loop on one thread; against torch's default two threads they may differ in the
  last bits of float sums (a convolution's reduction order), as any change of thread count does.
- Forked on Linux (a worker starts in a fraction of a second and needs nothing re-imported; it runs one OpenMP
  thread, so the parent's thread team is never needed), spawned elsewhere or with ROBINTERP_WORKER_START=spawn
  (then a script that uses this needs the usual `if __name__ == "__main__":` guard). Each worker dies with its
  parent (Linux: PR_SET_PDEATHSIG), so a killed kernel leaves no orphan writing checkpoints; a job's exception
  is raised here with the worker's traceback. A worker prints nothing (its stdout would be the kernel's socket).
- One process (no pool) on CUDA, under torchrun, for one job, or where `setting` is 1.
"""

from __future__ import annotations

import contextlib
import io
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from typing import Callable

import torch

from lib.device import usable_cpus

_START = os.environ.get("ROBINTERP_WORKER_START", "fork" if sys.platform.startswith("linux") else "spawn")


def count(setting, device, jobs: int) -> int:
    """Worker processes for `jobs` independent jobs on `device`: `setting` ("auto"/None: one per usable CPU),
    at most one per two jobs; 1 on a GPU, inside torchrun, or when one CPU is usable. (Two jobs of unequal
    length on two one-thread workers end when the long one does, on one thread: notebook 04's two FD
    extractors took 79 s that way against 61 s one after the other on two threads.)"""
    if setting not in (None, "auto") and (isinstance(setting, bool) or not isinstance(setting, int) or setting < 1):
        raise ValueError(f"workers must be 'auto' or a positive integer, got {setting!r}.")
    if torch.device(device).type != "cpu" or "LOCAL_RANK" in os.environ or jobs < 2:
        return 1
    n = usable_cpus() if setting in (None, "auto") else setting
    return max(1, min(n, jobs // 2))  # two jobs or more per worker: one long job alone would leave a core idle


def run(fn: Callable, jobs: list[tuple], *, workers: int, on_done: Callable | None = None) -> list:
    """[fn(*args) for args in jobs], in `workers` one-thread processes when workers > 1 (fn and its
    arguments must pickle: a module-level function, tensors, models). on_done(i, result) runs here, in completion
    order, e.g. to print a line per job; what a job prints itself is returned to `on_done` through `captured`."""
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for i, args in enumerate(jobs):
            out.append(fn(*args))
            if on_done:
                on_done(i, out[-1])
        return out
    results: dict[int, object] = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(_START), initializer=_init) as pool:
        pending = {pool.submit(fn, *args): i for i, args in enumerate(jobs)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_EXCEPTION)
                for future in done:
                    i = pending.pop(future)
                    results[i] = future.result()  # a job's exception is raised here, with its traceback
                    if on_done:
                        on_done(i, results[i])
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # running jobs finish (their checkpoints stay whole)
            raise
    return [results[i] for i in range(len(jobs))]


def captured(fn: Callable, *args, **kwargs) -> tuple[object, str]:
    """(fn(*args, **kwargs), what it printed to stdout): a job's own log lines, for the parent to print."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        result = fn(*args, **kwargs)
    return result, buf.getvalue()


def _init() -> None:
    """Worker start: one torch thread, die with the parent, no terminal output (results carry what matters)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends a worker at once; the parent reports it
    devnull = open(os.devnull, "w")
    sys.stdout = sys.stderr = devnull


def map_models(fn: Callable, nets: dict, *args, workers="auto", device="cpu", progress: bool = True,
               **kwargs) -> dict:
    """{key: fn(net, *args, **kwargs)} for every model of `nets`, side by side in `count(workers, device, ...)`
    processes; one line per finished model when progress (fn's own progress bars are off in a worker)."""
    keys = list(nets)
    n = count(workers, device, len(keys))

    def done(i, result):
        if progress and n > 1:
            print(f"  {keys[i]}: {getattr(fn, '__name__', 'job')} in {result[1]:.1f} s")

    out = run(_timed, [(fn, nets[k], args, kwargs) for k in keys], workers=n, on_done=done)
    return {k: r[0] for k, r in zip(keys, out)}


def _timed(fn: Callable, net, args: tuple, kwargs: dict) -> tuple[object, float]:
    t0 = time.perf_counter()
    return fn(net, *args, **kwargs), time.perf_counter() - t0
