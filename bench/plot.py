"""Draws bench.json (written by the `bench` binary) as a PNG bar chart: one panel per metric,
Sluice and Spark side by side, values and the Sluice advantage written on the bars.

Usage: python bench/plot.py bench/results/bench.json bench/results/bench.png
"""

import json
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SLUICE = "#1f77b4"
SPARK = "#e25a1c"


def human(value, unit):
    if unit == "rows/s":
        return f"{value / 1e6:.2f}M" if value >= 1e6 else f"{value / 1e3:.0f}k"
    if unit == "ms":
        return f"{value / 1000:.1f} s" if value >= 10_000 else f"{value:.0f} ms"
    if unit == "bytes":
        mib = value / (1024 * 1024)
        return f"{mib / 1024:.2f} GiB" if mib >= 1024 else f"{mib:.0f} MiB"
    return f"{value:g}"


def scaled(value, unit):
    if unit == "rows/s":
        return value / 1e6
    if unit == "bytes":
        return value / (1024 * 1024)
    return value


AXIS = {"rows/s": "M rows/s (higher is better)", "ms": "ms (lower is better)",
        "bytes": "MiB (lower is better)"}


def main():
    source, target = sys.argv[1], sys.argv[2]
    with open(source) as f:
        report = json.load(f)
    rows = report["rows"]
    if not rows:
        sys.exit("no rows to plot")
    columns = min(3, len(rows))
    lines = (len(rows) + columns - 1) // columns
    fig, axes = plt.subplots(lines, columns, figsize=(4.6 * columns, 3.6 * lines), squeeze=False)
    for ax in axes.flat[len(rows):]:
        ax.axis("off")
    for ax, row in zip(axes.flat, rows):
        unit = row["unit"]
        names, values, colors, labels = [], [], [], []
        for name, color in (("sluice", SLUICE), ("spark", SPARK)):
            cell = row[name]
            names.append("Sluice" if name == "sluice" else "Spark")
            colors.append(color)
            if "value" in cell:
                values.append(scaled(cell["value"], unit))
                labels.append(human(cell["value"], unit))
            else:
                values.append(0)
                labels.append(cell.get("note", "n/a")[:28])
        bars = ax.bar(names, values, color=colors, width=0.6)
        top = max(values) if max(values) > 0 else 1
        ax.set_ylim(0, top * 1.25)
        for bar, label, value in zip(bars, labels, values):
            if value > 0:
                ax.text(bar.get_x() + bar.get_width() / 2, value + top * 0.02, label,
                        ha="center", va="bottom", fontsize=9)
            else:
                # No measurement: say why, in place of the bar.
                ax.text(bar.get_x() + bar.get_width() / 2, top * 0.05,
                        "\n".join(textwrap.wrap(label, 14)),
                        ha="center", va="bottom", fontsize=8, style="italic", color="#555")
        title = f"{row['scenario']}\n{row['metric']}"
        if row.get("advantage"):
            title += f"  (Sluice {row['advantage']:.1f}x better)"
        ax.set_title(title, fontsize=9.5)
        ax.set_ylabel(AXIS.get(unit, unit), fontsize=8.5)
        ax.tick_params(labelsize=9)
        ax.spines[["top", "right"]].set_visible(False)
    spark = report.get("sparkVersion") or "not run"
    fig.suptitle(f"Sluice vs Spark {spark} local[2] — {report['dataSet'].split(',')[0]}\n"
                 f"{report['machine']}", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(target, dpi=110)


if __name__ == "__main__":
    main()
