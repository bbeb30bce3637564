"""The plot: launch time against host count, every contender on one chart per job."""

from __future__ import annotations

from pathlib import Path

from bench.report import LAUNCH_CONTENDERS
from bench.results import Results

PANELS = (("launch-light", "light job (--runner python, sleeping script)"), ("launch-torchrun", "torchrun job"))


def plot_launch(results: Results, path: Path) -> bool:
    """Draw ``path`` (PNG); False when there is nothing to draw."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    panels = [(m, title) for m, title in PANELS if results.host_counts(m)]
    if not panels:
        return False
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.8), squeeze=False)
    for ax, (measure, title) in zip(axes[0], panels, strict=True):
        for contender in LAUNCH_CONTENDERS:
            points = [(n, results.summary(measure, contender, n, "wall_s")) for n in results.host_counts(measure)]
            drawn = [(n, s) for n, s in points if s is not None]
            if not drawn:
                continue
            xs = [n for n, _ in drawn]
            medians = [s.median for _, s in drawn]
            errors = [[s.median - s.low for _, s in drawn], [s.high - s.median for _, s in drawn]]
            failed = [n for n, s in points if s is None and results.failures(measure, contender, n)]
            label = contender + (f" (failed at {', '.join(map(str, failed))} hosts)" if failed else "")
            style = "--" if contender == "floor" else "-"
            ax.errorbar(xs, medians, yerr=errors, label=label, marker="o", linestyle=style, capsize=3)
        counts = results.host_counts(measure)
        ax.set_xscale("log", base=2)
        ax.set_xticks(counts, [str(n) for n in counts])
        ax.set_xlabel("hosts")
        ax.set_ylabel("seconds until the command returns (median, min-max)")
        ax.set_title(f"Launch, {title}")
        ax.grid(True, alpha=0.3)
        ax.legend()
    machine = results.machine
    figure.suptitle(
        f"{machine.get('cores')} cores, {machine.get('cpu')}; hosts are network namespaces on the same machine",
        fontsize=9,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
