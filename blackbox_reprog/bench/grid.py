"""The results of a suite with ``shots`` and ``answers`` axes: per pair, methods × (shots × answers).

Such a suite asks where reprogramming must pay: with a few labels per class, and an API that
answers with its top-k or its label only, does a program found from the answers beat every
baseline that needs none (a map or head fitted to the zero program's answers, nearest
neighbours on them, a network trained from scratch)? Each column is one (shots, answers); a
baseline is one row, a trained method one row per budget. The best entry of each column is in
bold (the white-box bound is no contender). The last two rows are the best black-box method's
mean minus the best baseline's, in accuracy points, positive where reprogramming paid: against
every baseline, and against the maps and heads fitted to the zero program's answers alone (the
same answers the program is found from; a network from scratch needs no model at all).
"""
from __future__ import annotations

from pathlib import Path

from .results import accuracy_text
from .suite import Cell, Method, Suite, shots_text


def columns(suite: Suite) -> list[tuple[int | None, str | None]]:
    """The (shots, answers) of each column, shots first."""
    return [(n, a) for n in (suite.shots or (None,)) for a in (suite.answers or (None,))]


def answers_text(answers: str) -> str:
    return {"scores": "scores", "probs": "probabilities", "label": "label"}.get(answers) or f"top-{answers[3:]}"


def column_title(shots: int | None, answers: str | None) -> str:
    parts = ([shots_text(shots)] if shots is not None else []) + ([answers_text(answers)] if answers else [])
    return ", ".join(parts)


def rows(suite: Suite) -> list[tuple[Method, int | None]]:
    """One row per baseline, one per (trained method, budget), in the suite's order."""
    return [(m, b) for m in suite.methods for b in ((None,) if m.baseline else suite.budgets)]


def entry_key(method: Method, budget: int | None, shots: int | None, answers: str | None) -> str:
    """The summary key of a row's entry in a column (a network trained from scratch has no answers)."""
    return Cell("", method.name, budget, 0, shots=shots,
                answers=None if method.baseline == "scratch" else answers).key


def contender(method: Method) -> bool:
    return method.settings.get("train.method") != "whitebox"


#: the baselines each margin row compares with: every one, or those reading the zero program's answers
AGAINST = {"every baseline": ("zero", "scratch"), "the best map or head on the zero program's answers": ("zero",)}


def margin(suite: Suite, table: dict, shots, answers, against: tuple[str, ...] = ("zero", "scratch")) -> float | None:
    """The best black-box mean minus the best mean of the ``against`` baselines in one column
    (None: one side is missing)."""
    def best(wanted) -> float | None:
        means = [table[m.name][entry_key(m, b, shots, answers)]["mean"] for m, b in rows(suite)
                 if wanted(m) and entry_key(m, b, shots, answers) in table[m.name]]
        return max(means) if means else None
    black_box, baseline = best(lambda m: m.black_box), best(lambda m: m.baseline in against)
    return None if black_box is None or baseline is None else black_box - baseline


def grid_sections(suite: Suite, results: dict) -> list[str]:
    """The markdown of every pair: its methods × (shots × answers) table and what was skipped."""
    status: dict = {}
    for record in results["cells"]:
        status.setdefault((record["pair"], record["method"], Cell.of(record).key), []).append(record)
    lines = ["Columns: labelled examples per class the run may use (its validation split comes out of them; "
             "at 1 or 2 shots the training examples validate), then what the model answers (`backend.output`). "
             "A baseline spends one query per training example; a trained method's budget is in its row. "
             "In bold, the best of each column; the last two rows are the best black-box method minus the best "
             "baseline, and minus the best map or head fitted to the zero program's answers (points; positive: "
             "reprogramming paid). `n/a`: the cell cannot run (below, why).", ""]
    for pair in suite.pairs:
        lines += [f"## {pair.name}", ""]
        if pair.name in results["skipped"]:
            lines += [f"Skipped: {results['skipped'][pair.name]}.", ""]
            continue
        table = results["summary"][pair.name]
        cols = columns(suite)
        lines += ["| method | " + " | ".join(column_title(n, a) for n, a in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        reasons: dict[str, list[str]] = {}
        best = {}
        for n, a in cols:
            means = [(table[m.name][entry_key(m, b, n, a)]["mean"], m.name, b) for m, b in rows(suite)
                     if contender(m) and entry_key(m, b, n, a) in table[m.name]]
            best[(n, a)] = max(means)[1:] if means else None
        for method, budget in rows(suite):
            cells = []
            for n, a in cols:
                key = entry_key(method, budget, n, a)
                entry = table[method.name].get(key)
                if entry is not None:
                    text = accuracy_text(entry, len(suite.seeds))
                    cells.append(f"**{text}**" if best[(n, a)] == (method.name, budget) else text)
                    continue
                found = status.get((pair.name, method.name, key), [])
                skipped = [r for r in found if r["status"] == "skipped"]
                for record in skipped:
                    reasons.setdefault(record["reason"], []).append(column_title(n, a))
                cells.append("n/a" if skipped else "not run" if any(r["status"] == "not run" for r in found)
                             else "failed" if any(r["status"] == "failed" for r in found) else "–")
            label = method.label + (f", {budget:,} q" if budget is not None else "")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        for title, against in (("best baseline", ("zero", "scratch")), ("best zero-program map or head", ("zero",))):
            differences = [margin(suite, table, n, a, against) for n, a in cols]
            lines.append(f"| *best black-box − {title}* | "
                         + " | ".join("–" if d is None else f"{d:+.3f}" for d in differences) + " |")
        lines.append("")
        if reasons:
            lines += [f"- `n/a` in {'; '.join(dict.fromkeys(where))}: {reason}." for reason, where in reasons.items()]
            lines.append("")
        lines += [f"![{pair.name}]({pair.name}.png)", ""]
    return lines


def margins(suite: Suite, summary: dict) -> dict:
    """Per comparison (AGAINST), pair and column title: the best black-box mean minus the best
    baseline mean (None: one is missing)."""
    return {name: {pair: {column_title(n, a): margin(suite, table, n, a, against) for n, a in columns(suite)}
                   for pair, table in summary.items()} for name, against in AGAINST.items()}


def grid_headline(results: dict) -> str:
    """One line per pair: in how many columns a black-box method beat every baseline, and the
    maps and heads on the zero program's answers."""
    lines = []
    for pair in results["summary"]:
        if pair in results["skipped"]:
            lines.append(f"{pair}: skipped ({results['skipped'][pair]})")
            continue
        parts = []
        for name, by_pair in results["margins"].items():
            found = [(d, title) for title, d in by_pair[pair].items() if d is not None]
            if found:
                d, title = max(found)
                parts.append(f"beat {name} in {sum(x > 0 for x, _ in found)} of {len(found)} columns "
                             f"(largest margin {d:+.3f} at {title})")
        lines.append(f"{pair}: a black-box method " + "; ".join(parts) if parts else
                     f"{pair}: no column with both a black-box and a baseline cell finished")
    return "\n".join(lines)


def plot_grid(suite: Suite, results: dict, pair: str, path: Path) -> None:
    """One panel per kind of answer: test accuracy against shots, a dashed line per baseline and
    a solid one (± std) per trained method at its largest budget."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = results["summary"][pair]
    panels = suite.answers or (None,)
    shots = suite.shots or (None,)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 0.8, 3.6), dpi=120, sharey=True,
                             squeeze=False)
    for ax, answers in zip(axes[0], panels):
        for index, method in enumerate(suite.methods):
            budget = None if method.baseline else max(suite.budgets)
            points = [(i, table[method.name][k]["mean"], table[method.name][k]["std"]) for i, n in enumerate(shots)
                      if (k := entry_key(method, budget, n, answers)) in table[method.name]]
            if not points:
                continue
            x, mean, std = (list(v) for v in zip(*points))
            colour = f"C{index % 10}"
            ax.plot(x, mean, marker="o", markersize=3, color=colour, linestyle="--" if method.baseline else "-",
                    label=method.label + ("" if method.baseline else f" ({budget:,} q)"))
            if not method.baseline:
                ax.fill_between(x, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=colour, alpha=0.15)
        ax.set_xticks(range(len(shots)), ["all" if n == 0 else str(n) for n in shots] if shots[0] is not None else [""])
        ax.set_xlabel("labelled examples per class")
        ax.set_title(f"{pair}: {answers_text(answers)}" if answers else pair, fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test accuracy (mean ± std, {len(suite.seeds)} seeds)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.02, 0.0), fontsize=7, frameon=False,
               ncol=2)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
