"""The report's figures: the training curves, and the program drawn on an example.
Matplotlib is imported only here, and only when a figure is drawn."""
from __future__ import annotations

import io
import math

import torch

from ..run.plot import chosen_point, mark_chosen, shown_name


def draw_curves(run) -> bytes | None:
    """Validation accuracy (top) and loss (bottom) against budgeted queries spent, as PNG."""
    fig = curves_figure(run)
    return None if fig is None else png_bytes(fig)


def curves_figure(run):
    """The figure ``draw_curves`` draws; None when no step was recorded.

    The top panel is ``plot_run``'s picture (accuracy.png), drawn again here because that
    function draws into a figure of its own; the reference lines and the chosen program's mark
    are only known when the run has finished."""
    if not run.metrics:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(6.4, 6.4), dpi=120, sharex=True)
    if points(run.metrics, "val_accuracy"):
        top.plot(*points(run.metrics, "val_accuracy"), marker="o", markersize=3, label="validation accuracy")
    if points(run.compared_metrics, "val_accuracy"):
        top.plot(*points(run.compared_metrics, "val_accuracy"), marker=".", linestyle="--", color="tab:purple",
                 label=f"validation accuracy, {run.result['comparison']['method']} (compared)")
    r = run.result
    if r:
        top.axhline(r["start_accuracy"], color="grey", linestyle=":", label=f"test, zero program ({r['start_accuracy']:.3f})")
        top.axhline(r["chance_accuracy"], color="lightgrey", linestyle="--",
                    label=f"majority class ({r['chance_accuracy']:.3f})")
        top.axhline(r["test_accuracy"], color="tab:green", label=f"test, chosen program ({r['test_accuracy']:.3f})")
    chosen = None if r is None else chosen_point(r, run.metrics)
    if chosen is not None:            # the lowest validation loss: not always the highest accuracy
        mark_chosen(top, chosen, r["best_validation_accuracy"], r["best_step"])
        mark_chosen(bottom, chosen, r["best_validation_loss"], r["best_step"])
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1.02)
    top.legend(loc="lower right", fontsize=7)
    top.grid(alpha=0.3)

    if points(run.metrics, "loss"):
        bottom.plot(*points(run.metrics, "loss"), linewidth=1, label="training loss (mean over the step's programs)")
    if points(run.metrics, "val_loss"):
        bottom.plot(*points(run.metrics, "val_loss"), marker="o", markersize=3, label="validation loss")
    bottom.set_xlabel("budgeted queries spent (examples sent to the model)")
    bottom.set_ylabel(f"loss ({run.config.loss.kind})")
    bottom.legend(loc="upper right", fontsize=7)
    bottom.grid(alpha=0.3)
    state = "" if run.finished else ", unfinished"
    fig.suptitle(f"{shown_name(run.config.backend.model)} → {shown_name(run.config.data.name)} "
                 f"({run.config.train.method}, seed {run.config.seed}{state})", fontsize=10)
    fig.tight_layout()
    return fig


def points(rows: list[dict], key: str) -> tuple[tuple, ...]:
    """(queries, values) of the rows that hold a finite ``key``; () when none do. Only some
    steps validate, and a skipped step's loss may be infinite or NaN."""
    kept = [(row["queries"], row[key]) for row in rows if row.get(key) is not None and math.isfinite(row[key])]
    return tuple(zip(*kept))


def png_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def base_transform(transform):
    """The transform a random subspace wraps, where the geometry (target slot, frame) lives."""
    from ..program.transforms import Subspace
    return transform.inner if isinstance(transform, Subspace) else transform


def draw_signal_program(transform, example, blank, programmed) -> bytes:
    """example (T,), blank and programmed (L,): the program waveform (the transform of a zero
    series), the example as it is, and the example as the model sees it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    base = base_transform(transform)
    fig, axes = plt.subplots(3, 1, figsize=(6.4, 6.4), dpi=120)
    axes[0].plot(blank.numpy(), linewidth=0.8, color="tab:blue")
    axes[0].set_title("the program: the model input for an all-zero series", fontsize=9)
    axes[1].plot(example.numpy(), marker=".", color="tab:orange")
    axes[1].set_title(f"one example, as it is ({len(example)} samples)", fontsize=9)
    axes[2].plot(programmed.numpy(), linewidth=0.8, color="tab:blue")
    axes[2].set_title("the same example as the model sees it (z-normalised, program around it)", fontsize=9)
    for ax in (axes[0], axes[2]):
        ax.axvspan(base.start, base.stop, color="tab:orange", alpha=0.15, label="the target's place")
        ax.set_xlim(0, base.length)
        ax.set_xlabel("model input sample")
        ax.legend(loc="upper right", fontsize=7)
    axes[1].set_xlabel("target sample")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return png_bytes(fig)


def draw_image_program(transform, example, blank, programmed) -> bytes:
    """example (C, h, w), blank and programmed (C, H, W): the program on a blank (zero) target,
    the example as it is, and the example as the model sees it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(9.6, 3.6), dpi=120)
    panels = [(blank, "the program on a blank (zero) target", (transform.low, transform.high)),
              (example, "one example, as it is", (0.0, 1.0)),            # targets are images in [0, 1]
              (programmed, "the example as the model sees it", (transform.low, transform.high))]
    for ax, (image, title, value_range) in zip(axes, panels):
        ax.imshow(displayable(image, value_range), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    return png_bytes(fig)


def displayable(image: torch.Tensor, value_range: tuple[float, float]):
    """(C, H, W) in ``value_range`` → (H, W) or (H, W, 3) in [0, 1] for imshow; a range that is
    not finite is replaced by the image's own minimum and maximum."""
    low, high = value_range
    if not (math.isfinite(low) and math.isfinite(high)) or high <= low:
        low, high = float(image.min()), float(image.max())
    scaled = ((image - low) / max(high - low, 1e-12)).clamp(0, 1)        # (C, H, W)
    if scaled.shape[0] == 3:
        return scaled.permute(1, 2, 0).numpy()                            # (H, W, 3)
    return scaled[0].numpy()                                              # (H, W) first channel
