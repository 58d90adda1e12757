"""The run's picture: validation accuracy against queries spent, with the start, the end and
the program the run chose (marked where it was validated: it is the lowest validation *loss*,
which need not be the highest validation accuracy)."""
from __future__ import annotations

from pathlib import Path

#: the gid of the artists that mark the chosen program (a star, and a line across the panel)
CHOSEN = "chosen"


def shown_name(name: str) -> str:
    """A dataset or model as a title shows it: a path by its file (or folder) name."""
    return Path(name).name if ("/" in name or "\\" in name) else name


def chosen_point(summary: dict, history: list[dict]) -> float | None:
    """Budgeted queries spent when the chosen program (result.json's ``best_step``) was
    validated; None when that step has no row (or the run validated nothing). Step 0, the zero
    program, has no row in metrics.jsonl: it was validated right after the probe and the
    label-map fit."""
    step = summary.get("best_step")
    if step is None or summary.get("best_validation_accuracy") is None:
        return None
    if step == 0:
        queries = summary["queries"]
        return queries.get("probe", 0) + queries["label-map"] + summary["data"]["validation"]
    rows = [row for row in history if row.get("step") == step]
    validated = [row for row in rows if row.get("val_loss") is not None] or rows
    return validated[-1]["queries"] if validated else None


def mark_chosen(ax, x: float, y: float, step: int) -> None:
    """A star at (x, y) and a dashed line across the panel at x: the chosen program."""
    ax.axvline(x, color="tab:green", linestyle="--", linewidth=0.8, alpha=0.6, gid=CHOSEN)
    ax.plot([x], [y], marker="*", markersize=12, color="tab:green", zorder=5, linestyle="none", gid=CHOSEN,
            label=f"chosen: step {step}, lowest validation loss")


def accuracy_figure(summary: dict, history: list[dict]):
    """The figure of accuracy.png (matplotlib, Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(row["queries"], row["val_accuracy"]) for row in history if row.get("val_accuracy") is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    if points:
        queries, accuracy = zip(*points)
        ax.plot(queries, accuracy, marker="o", markersize=3, label="validation accuracy")
    ax.axhline(summary["start_accuracy"], color="grey", linestyle=":", label=f"test, zero program ({summary['start_accuracy']:.3f})")
    ax.axhline(summary["chance_accuracy"], color="lightgrey", linestyle="--", label=f"majority class ({summary['chance_accuracy']:.3f})")
    ax.axhline(summary["test_accuracy"], color="tab:green", linestyle="-", label=f"test, chosen program ({summary['test_accuracy']:.3f})")
    chosen = chosen_point(summary, history)
    if chosen is not None:
        mark_chosen(ax, chosen, summary["best_validation_accuracy"], summary["best_step"])
    ax.set_xlabel("queries spent (examples sent to the model)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    model = Path(str(summary["backend"].get("path", summary["backend"]["backend"]))).stem
    ax.set_title(f"{model} → {shown_name(str(summary['data']['name']))} ({summary['method']}, seed {summary['seed']})")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_run(run_dir: Path, summary: dict, history: list[dict]) -> Path:
    import matplotlib.pyplot as plt

    fig = accuracy_figure(summary, history)
    path = run_dir / "accuracy.png"
    fig.savefig(path)
    plt.close(fig)
    return path
