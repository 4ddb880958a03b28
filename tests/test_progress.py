"""Progress output stays bounded: one summary line per stage outside a terminal, refresh-capped bars on one."""

import sys

from lib import progress


def test_pipeline_kernels_get_one_line_per_stage(monkeypatch, capsys):
    monkeypatch.setenv(progress.ENV, "lines")
    assert list(progress.tqdm(range(1000), desc="stage")) == list(range(1000))
    bar = progress.tqdm(total=50, desc="epoch 1/3", unit="steps")
    for _ in range(50):
        bar.update()
    bar.set_postfix(loss="0.123")
    bar.close()
    bar.close()  # idempotent, as tqdm's
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("stage: 1000 it in") and out[1].startswith("epoch 1/3: 50 steps in")
    assert out[1].endswith("(loss=0.123)") and len(out) == 2
    assert list(progress.tqdm(range(3), disable=True)) == [0, 1, 2] and capsys.readouterr().out == ""


def test_live_bars_on_a_terminal_refresh_at_most_twice_a_second(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress.tqdm(total=3, desc="x")
    assert bar.mininterval == progress.MININTERVAL >= 0.5
    bar.close()
    assert progress.kernel_env()[progress.ENV] == "lines"


def test_relay_passes_complete_kernel_lines_on_as_they_come():
    said = []
    relay = progress.Relay(lambda line, **k: said.append(line), prefix="  ", width=10)
    relay.write("epoch 1/3: 5")
    assert said == []  # an incomplete line waits for its end
    relay.write("0 steps\n\nnext\rbar 2\n" + "x" * 30 + "\n")
    assert said == ["  epoch 1/3:", "  next", "  bar 2", "  " + "x" * 10]
