"""The run's picture: validation accuracy against queries spent, with the start and the end."""
from __future__ import annotations

from pathlib import Path


def plot_run(run_dir: Path, summary: dict, history: list[dict]) -> Path:
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
    ax.set_xlabel("queries spent (examples sent to the model)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    model = Path(str(summary["backend"].get("path", summary["backend"]["backend"]))).stem
    ax.set_title(f"{model} → {summary['data']['name']} ({summary['method']}, seed {summary['seed']})")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = run_dir / "accuracy.png"
    fig.savefig(path)
    plt.close(fig)
    return path
