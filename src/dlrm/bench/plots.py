"""PNG charts (matplotlib, Agg backend): roofline, time breakdown, sweeps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from dlrm.bench.roofline import peak_gflops  # noqa: E402


def roofline_chart(result: dict[str, Any], path: str | Path) -> None:
    """Log-log roofline: ceilings as lines, each component's achieved GFLOP/s as a point."""
    ceilings, precision = result["ceilings"], result["config"]["precision"]
    peak = peak_gflops(ceilings, precision)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    xs = [2.0 ** k for k in range(-8, 11)]
    for bw_key, style in (("stream_gbps", "-"), ("gather_gbps", "--")):
        bw = ceilings[bw_key]
        ax.plot(xs, [min(peak, x * bw) for x in xs], style, color="black",
                label=f"{bw_key.replace('_gbps', '')} {bw:.1f} GB/s, {precision} peak "
                      f"{peak:.0f} GFLOP/s")
    for name, c in result["components"].items():
        if c.get("flops", 0) > 0 and c.get("ms", 0) > 0:
            ax.scatter(c["intensity"], c["achieved_gflops"], s=40)
            ax.annotate(name, (c["intensity"], c["achieved_gflops"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / compulsory byte)")
    ax.set_ylabel("GFLOP/s")
    ax.set_title(f"{result['config']['preset']} {result['config']['mode']} "
                 f"B={result['config']['batch_size']} {precision} on "
                 f"{result['machine']['device_name']}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def breakdown_chart(results: list[dict[str, Any]], labels: list[str], path: str | Path,
                    title: str = "time per step by component") -> None:
    """Stacked bars of ms per component, one bar per result."""
    names = list(dict.fromkeys(n for r in results for n in r["components"]))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(results) + 4), 5.5))
    bottoms = [0.0] * len(results)
    cmap = plt.get_cmap("tab20")
    for k, name in enumerate(names):
        heights = [r["components"].get(name, {}).get("ms", 0.0) for r in results]
        ax.bar(range(len(results)), heights, bottom=bottoms, label=name, color=cmap(k % 20))
        bottoms = [b + h for b, h in zip(bottoms, heights)]
    ax.scatter(range(len(results)), [r["step_ms"]["median"] for r in results], marker="_",
               s=400, color="black", zorder=3, label="fused step (end to end)")
    ax.set_xticks(range(len(results)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ms per step")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def sweep_chart(rows: list[dict[str, Any]], results: list[dict[str, Any]], vary: str,
                path: str | Path) -> None:
    """Throughput against the swept value (left) and the time breakdown per value (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    values = [str(r["value"]) for r in rows]
    left.errorbar(range(len(rows)), [r["samples_per_s"] for r in rows],
                  yerr=[[r["samples_per_s"] - r["samples_per_s_min"] for r in rows],
                        [r["samples_per_s_max"] - r["samples_per_s"] for r in rows]],
                  marker="o", capsize=3)
    left.set_xticks(range(len(rows)), values)
    left.set_xlabel(vary)
    left.set_ylabel("samples/s (end to end, median; bars min-max)")
    left.grid(True, alpha=0.3)
    names = list(dict.fromkeys(n for r in results for n in r["components"]))
    cmap = plt.get_cmap("tab20")
    bottoms = [0.0] * len(results)
    for k, name in enumerate(names):
        share = [100 * r["components"].get(name, {}).get("ms", 0.0) / r["component_sum_ms"]
                 for r in results]
        right.bar(range(len(results)), share, bottom=bottoms, label=name, color=cmap(k % 20))
        bottoms = [b + s for b, s in zip(bottoms, share)]
    right.set_xticks(range(len(results)), values)
    right.set_xlabel(vary)
    right.set_ylabel("% of component time")
    right.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
