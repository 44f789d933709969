"""Draws docs/benchmarks.png from the saved JSON results: AP vs GMACs and CPU latency vs GMACs.

Usage: python -m benchmarks.plot [--results benchmarks/results] [--out docs/benchmarks.png]

The inputs are what `benchmarks.accuracy_budget` and `benchmarks.cpu_inference` saved,
so the figure redraws without rerunning them.
"""

import argparse
import os

from matplotlib.figure import Figure  # the object API, not pyplot: no GUI backend to pick

from benchmarks.results import RESULTS_DIR, load_results

DEFAULT_OUT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "benchmarks.png"
)
MARKERS = {"eager": "s", "tf.function": "o", "XLA": "^", "Model Garden (tf.function)": "x"}


def _label_points(axes, points):
    for name, x, y in points:
        axes.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)


def accuracy_panel(axes, results):
    settings, rows = results["settings"], results["rows"]
    for metric, marker in (("AP", "o"), ("AP50", "D")):
        axes.scatter([r["gmacs"] for r in rows], [r[metric] for r in rows], marker=marker, label=metric)
    _label_points(axes, [(r["model"], r["gmacs"], r["AP"]) for r in rows])
    axes.set(
        xlabel=f"GMACs per image at {settings['size']} px",
        ylabel="COCO AP on val",
        title=f"Same budget from scratch: {settings['steps']} steps x batch {settings['batch']}",
        xlim=(0, 1.2 * max(r["gmacs"] for r in rows)),
        ylim=(0, max([0.05] + [1.15 * r["AP50"] for r in rows])),
    )
    axes.legend(fontsize=8)


def latency_panel(axes, results):
    """Raw outputs at the smallest batch measured, one series per mode (+ Model Garden's tf.function)."""
    ours = [r for r in results["rows"]["ours"] if r["output"] == "raw" and "ms_per_image" in r]
    batch = min(r["batch"] for r in ours)
    ours = [r for r in ours if r["batch"] == batch]
    gmacs = {r["model"]: r["gmacs"] for r in ours}
    series = {mode: [r for r in ours if r["mode"] == mode] for mode in ("eager", "tf.function", "XLA")}
    series["Model Garden (tf.function)"] = [
        {**r, "gmacs": gmacs[r["model"]]}
        for r in results["rows"]["model_garden"]
        if r.get("batch") == batch and r.get("mode") == "tf.function" and "ms_per_image" in r
    ]
    for label, rows in series.items():
        if rows:
            axes.scatter(
                [r["gmacs"] for r in rows],
                [r["ms_per_image"] for r in rows],
                marker=MARKERS[label],
                label=label,
            )
    _label_points(axes, [(r["model"], r["gmacs"], r["ms_per_image"]) for r in series["tf.function"]])
    size = results["settings"]["size"]
    axes.set(
        xlabel=f"GMACs per image at {size} px",
        ylabel="ms per image (median)",
        title=f"CPU inference, raw outputs, batch {batch}, {size} px",
    )
    axes.set_xlim(0, 1.2 * max(gmacs.values()))
    axes.set_ylim(bottom=0)
    axes.legend(fontsize=8)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS_DIR))
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    figure = Figure(figsize=(11, 4.5))
    left, right = figure.subplots(1, 2)
    accuracy_panel(left, load_results("accuracy_budget", args.results))
    latency_panel(right, load_results("cpu_inference", args.results))
    figure.suptitle("RetinaNet: SpineNet vs R50-FPN (BENCHMARKS.md)")
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
