"""One PNG for `clue-run report --plot`: scores per task beside each other, and how the runs trained.

Left: grouped bars of each system's mean score per task, with std error bars; published rows are
pale and outlined, test-split bars hatched, and every legend entry names its split ([dev] / [test]). Middle and right: the eval metric and the
train loss against epoch (tasks of different sizes line up): one colour per system (model · method) as in
the shared legend, line style by task, each seed a thin line and the mean over seeds bold.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

from . import Report, Row, Run

SIZE_IN = (12, 5)
DPI = 100  # 12×5 in at 100 dpi: a 1200×500 px picture
LINESTYLES = ("-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)), (0, (8, 2)), (0, (3, 1, 1, 1)))


def _colours(rows: list[Row]) -> dict[str, tuple]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"] if len(rows) <= 10 else matplotlib.colormaps["tab20"]
    return {row.label: cmap(i % cmap.N) for i, row in enumerate(rows)}


def _score_bars(ax, report: Report, colours: dict[str, tuple]) -> None:
    width = 0.8 / max(len(report.rows), 1)
    for i, row in enumerate(report.rows):
        xs, means, stds = [], [], []
        for j, task in enumerate(report.tasks):
            if task in row.cells:
                cell = row.cells[task]
                xs.append(j - 0.4 + width * (i + 0.5))
                means.append(cell.mean)
                stds.append(cell.std if cell.std is not None else float("nan"))  # no bar for n=1 or published
        split = row.split or ("test" if row.published else "dev")
        ax.bar(xs, means, width, yerr=stds, capsize=3, label=f"{row.label} [{split}]",
               color=colours[row.label], alpha=0.45 if row.published else 0.9,
               hatch="//" if split.startswith("test") else None, edgecolor="black" if row.published else None,
               linewidth=0.5)
    ax.set_xticks(range(len(report.tasks)), report.tasks, rotation=20 if len(report.tasks) > 4 else 0)
    ax.set_ylabel("score ×100 (mean ± std)")
    ax.set_title("Best score per task (hatched: test split; pale, outlined: published)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def _curves(ax, runs: list[Run], report: Report, colours: dict[str, tuple], key: str) -> None:
    styles = {task: LINESTYLES[i % len(LINESTYLES)] for i, task in enumerate(report.tasks)}
    labels = {(row.model, row.method): row.label for row in report.rows if not row.published}
    drawn = set()
    grouped: dict[tuple, list] = {}
    for run in runs:
        label = labels.get(run.system)
        if label is None or run.task not in styles:
            continue
        if key == "metric":
            metric = report.metrics[run.task]
            points = [(h.epoch, h.metrics[metric] * 100) for h in run.history if metric in h.metrics]
        else:
            points = [(h.epoch, h.train_loss) for h in run.history if h.train_loss is not None]
        if points:
            grouped.setdefault((label, run.task), []).append(dict(points))
    for (label, task), seeds in grouped.items():
        # Each seed thin, their mean bold (at the epochs every seed evaluated): seeds stay apart.
        for points in seeds:
            epochs = sorted(points)
            ax.plot(epochs, [points[e] for e in epochs], linestyle=styles[task], color=colours[label],
                    linewidth=0.7 if len(seeds) > 1 else 1.6, alpha=0.45 if len(seeds) > 1 else 1.0)
        common = sorted(set.intersection(*(set(p) for p in seeds)))
        if len(seeds) > 1 and common:
            ax.plot(common, [sum(p[e] for p in seeds) / len(seeds) for e in common], linestyle=styles[task],
                    color=colours[label], linewidth=2.4, marker="o", markersize=3)
        drawn.add(task)
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, "no training histories", ha="center", va="center", transform=ax.transAxes, color="grey")
        return
    import matplotlib.lines as mlines

    ax.legend(handles=[mlines.Line2D([], [], color="black", linestyle=styles[t], label=t) for t in report.tasks if t in drawn],
              fontsize=7, title="task", title_fontsize=7)


def plot_report(report: Report, runs: list[Run], path: Path) -> Path:
    """Write the picture; runs outside the report's rows (filtered out) are not drawn."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    colours = _colours(report.rows)
    fig, (bars, metric, loss) = plt.subplots(1, 3, figsize=SIZE_IN, dpi=DPI, layout="constrained",
                                             gridspec_kw={"width_ratios": [1.6, 1, 1]})
    try:
        _score_bars(bars, report, colours)
        _curves(metric, runs, report, colours, "metric")
        metric.set_ylabel(f"{'/'.join(report.eval_splits) or 'eval'} score ×100")
        metric.set_title("Evaluation during training")
        _curves(loss, runs, report, colours, "loss")
        loss.set_ylabel("train loss")
        loss.set_title("Training loss")
        # One legend for the whole figure: a system has the same colour in every panel.
        handles, labels = bars.get_legend_handles_labels()
        # Long method names (head options spelled out) would run off the fixed-size canvas: wrap them.
        labels = [textwrap.fill(label, 60) for label in labels]
        fig.legend(handles, labels, loc="outside lower center", fontsize=7, frameon=False,
                   ncol=min(3, max(len(report.rows), 1)))
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=DPI)  # no bbox_inches="tight": it would change the pixel size
    finally:
        plt.close(fig)
    return path
