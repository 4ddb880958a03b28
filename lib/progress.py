"""Bounded progress bars: a live bar on a terminal or in an interactive notebook (refreshed at most
twice a second), one summary line per stage everywhere else (papermill, logs, CI). Imports nothing
from lib.

    from lib.progress import tqdm          # drop-in for `from tqdm.auto import tqdm`

The pipeline starts notebook kernels with ROBINTERP_PROGRESS=lines (`kernel_env`), so an executed
notebook holds one line per stage, never a bar's every refresh; `Relay` passes those lines on to the
pipeline's terminal or CI log as they are printed.
"""

from __future__ import annotations

import os
import sys
import time

MININTERVAL = 0.5  # seconds between refreshes of a live bar
ENV = "ROBINTERP_PROGRESS"  # "lines": summary lines only; "off": nothing; unset: live bars where interactive


def interactive() -> bool:
    """True on a terminal, or in a Jupyter kernel that the pipeline did not start."""
    if os.environ.get(ENV, "") in ("lines", "off"):
        return False
    return sys.stderr.isatty() or "ipykernel" in sys.modules


class Lines:
    """A tqdm stand-in that prints one line when it closes: '<desc>: <n> <unit> in <t> s (postfix)'."""

    def __init__(self, iterable=None, desc: str = "", total=None, initial: int = 0, unit: str = "it",
                 quiet: bool = False):
        self.iterable, self.desc, self.total, self.n, self.unit = iterable, desc, total, initial, unit
        self.quiet, self.closed, self.postfix, self.t0 = quiet, False, {}, time.time()

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.n += 1
        finally:
            self.close()

    def __len__(self) -> int:
        return len(self.iterable) if self.iterable is not None else (self.total or 0)

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, **kw) -> None:
        self.postfix = kw

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if not self.quiet:
            tail = (" (" + ", ".join(f"{k}={v}" for k, v in self.postfix.items()) + ")") if self.postfix else ""
            print(f"{self.desc or 'done'}: {self.n} {self.unit} in {time.time() - self.t0:.1f} s{tail}", flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def tqdm(iterable=None, *, desc: str = "", total=None, disable: bool = False, initial: int = 0, unit: str = "it",
         **kwargs):
    """`tqdm.auto.tqdm` where interactive (mininterval MININTERVAL), else a `Lines` summary; silent if disabled."""
    if disable or os.environ.get(ENV) == "off":
        return Lines(iterable, desc, total, initial, unit, quiet=True)
    if interactive():
        from tqdm.auto import tqdm as live

        kwargs.setdefault("mininterval", MININTERVAL)
        return live(iterable, desc=desc, total=total, initial=initial, unit=unit, **kwargs)
    return Lines(iterable, desc, total, initial, unit)


class Relay:
    """A write-only text sink (papermill's `stdout_file`) that passes each complete line to `log`, indented by
    `prefix` and cut at `width` characters: a kernel's stage lines reach the terminal and CI as they happen."""

    def __init__(self, log=print, prefix: str = "", width: int = 160):
        self.log, self.prefix, self.width, self.buffer = log, prefix, width, ""

    def write(self, text: str) -> int:
        self.buffer += text.replace("\r", "\n")
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            if line.strip():
                self.log(f"{self.prefix}{line[:self.width]}", flush=True)
        return len(text)

    def flush(self) -> None:
        pass


def kernel_env() -> dict:
    """Environment for notebook kernels the pipeline starts: summary lines, and a refresh cap for any
    third-party tqdm bar (tqdm reads TQDM_* variables as its defaults)."""
    return {ENV: os.environ.get(ENV, "lines"), "TQDM_MININTERVAL": os.environ.get("TQDM_MININTERVAL", "1")}
