"""``energy.png``: operations-only and with-SRAM energy side by side per scheme, on a linear
axis from zero, labelled with units."""

import matplotlib
import pytest

from host import report

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SCHEMES = [  # (name, operations-only pJ, with SRAM pJ): a tiny hybrid next to large ones
    ("fp16", 2.0e8, 2.6e8), ("fp16 (dense dataflow)", 2.0e8, 9.1e8),
    ("w4a8 (int8, T=1)", 5.0e7, 2.9e8), ("rate T=8", 6.0e7, 8.5e8),
    ("ttfs 8-bit (T=255)", 7.0e7, 4.8e8)]


class _Keep:
    """pyplot, except that ``close`` keeps the figure for the test."""

    fig = None

    def __getattr__(self, name):
        return getattr(plt, name)

    def close(self, fig):
        self.fig = fig


def test_energy_plot_compares_operations_and_memory_from_zero(tmp_path):
    rep = {"model": "tiny-llama", "tokens": 14,
           "hybrid": {"name": "hybrid", "compute_energy_pj": 2.8e5,
                      "energy_pj": {"total": 2.5e6}},
           "baselines": [{"name": n, "compute_energy_pj": c, "energy_pj": {"total": t}}
                         for n, c, t in SCHEMES]}
    keep = _Keep()
    report._energy_plot(rep, tmp_path / "energy.png", keep)
    assert (tmp_path / "energy.png").stat().st_size > 0
    ax = keep.fig.axes[0]
    try:
        assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0
        assert "µJ" in ax.get_ylabel()
        ops, mem = ax.containers[:2]
        assert [b.get_height() for b in ops] == pytest.approx(
            [0.28] + [c / 1e6 for _, c, _ in SCHEMES])
        assert [b.get_height() for b in mem] == pytest.approx(
            [2.5] + [t / 1e6 for _, _, t in SCHEMES])
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "operations only", "operations + SRAM traffic"]
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        assert ticks[0].startswith("hybrid") and len(ticks) == 6
        assert ticks[1] == "fp16 ANN\n(operands once)"  # the two FP16 memory models
        assert ticks[2] == "fp16 ANN\n(dense dataflow)"
        note = " ".join(t.get_text() for t in keep.fig.texts)  # what the bars count
        assert "SRAM" in note and "operands once" in note and "dense dataflow" in note
    finally:
        plt.close(keep.fig)
