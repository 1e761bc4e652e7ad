"""Plain-text tables of a bench result (the CLI prints them)."""

from __future__ import annotations

from typing import Any


def _si(x: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def format_result(result: dict[str, Any]) -> str:
    """Summary lines, the ceilings and the per-component roofline table."""
    cfg, m = result["config"], result["model"]
    lines = [
        f"{cfg['preset']} {cfg['mode']}  B={cfg['batch_size']}  {cfg['precision']}  "
        f"D={m['embedding_dim']}  tables={len(m['table_sizes'])} "
        f"({result['embedding_megabytes']:.0f} MiB)  ids/sample={sum(result['bag_sizes'])}  "
        f"data={result['data']}  threads={result['machine']['threads']}  "
        f"device={result['machine']['device_name']}",
        f"end to end: {result['samples_per_s']:,.0f} samples/s median "
        f"(min {result['samples_per_s_min']:,.0f}, max {result['samples_per_s_max']:,.0f}); "
        f"step {result['step_ms']['median']:.2f} ms; sum of components "
        f"{result['component_sum_ms']:.2f} ms",
    ]
    c = result.get("ceilings") or {}
    if c:
        peaks = ", ".join(f"{k.split('_')[1]} {v:,.0f}" for k, v in c.items()
                          if k.startswith("matmul_"))
        lines.append(f"ceilings: matmul GFLOP/s {peaks}; stream {c['stream_gbps']:.1f} GB/s; "
                     f"random {c['gather_row_bytes']:.0f}-byte-row gather "
                     f"{c['gather_gbps']:.1f} GB/s"
                     + (f" (huge pages: {result['machine']['huge_pages']})"
                        if "huge_pages" in result["machine"] else ""))
    lines += _peak_lines(result)
    header = (f"{'component':<18}{'ms':>9}{'min':>9}{'max':>9}{'share':>7}{'FLOPs':>9}"
              f"{'bytes':>9}{'GFLOP/s':>9}{'GB/s':>7}  {'bound':<16}{'of bound':>8}")
    lines += ["", header, "-" * len(header)]
    total = result["component_sum_ms"] or 1.0
    for name, e in result["components"].items():
        row = (f"{name:<18}{e['ms']:>9.3f}{e['ms_min']:>9.3f}{e['ms_max']:>9.3f}"
               f"{100 * e['ms'] / total:>6.1f}%")
        if "bound" in e:
            row += (f"{_si(e['flops']):>9}{_si(e['bytes']):>9}{e['achieved_gflops']:>9.1f}"
                    f"{e['achieved_gbps']:>7.1f}  {e['bound']:<16}"
                    f"{100 * e['fraction_of_bound']:>7.1f}%")
        elif name in ("data", "to_device"):
            row += f"{'':>34}  {'n/a (not a kernel)':<16}"
        lines.append(row)
    if "limiter" in result:
        lim = result["components"][result["limiter"]]
        lines += ["", f"largest component: {result['limiter']} "
                      f"({100 * lim['ms'] / total:.0f}% of component time, {lim['bound']}, "
                      f"{100 * lim['fraction_of_bound']:.0f}% of its bound); model step at "
                      f"{100 * result['fraction_of_roofline']:.0f}% of the roofline time "
                      f"({result['roofline_step_ms']:.2f} ms ideal)"]
    lines += _layer_lines(result)
    return "\n".join(lines)


def _peak_lines(result: dict[str, Any]) -> list[str]:
    """The step as a fraction of the matmul peak measured in the same run."""
    peak = result.get("peak")
    if not peak:
        return []
    cfg = result["config"]
    what = "forward + backward" if cfg["mode"] == "train" else "forward"
    return [f"peak: {peak['matmul_flops_per_sample'] / 1e6:.3f} MFLOP/sample of dense-layer "
            f"matmuls ({what}) x {result['samples_per_s']:,.0f} samples/s = "
            f"{peak['achieved_gflops']:.0f} GFLOP/s = {peak['fraction_of_peak']:.2f} of the "
            f"{cfg['precision']} matmul peak ({peak['peak_gflops']:.0f} GFLOP/s)"
            + (f", {peak['model_fraction_of_peak']:.2f} for the model's components (no data)"
               if peak.get("model_fraction_of_peak") else "")
            + f"; the same GEMMs alone: {peak['gemm_fraction_of_peak']:.2f} (per layer below)"]


def _layer_lines(result: dict[str, Any]) -> list[str]:
    """One row per dense layer: its bare GEMMs' time and fraction of the peak."""
    layers = result.get("layers")
    if not layers:
        return []
    train = result["config"]["mode"] == "train"
    header = (f"{'layer':<22}{'K->N':>11}{'fwd ms':>9}{'of peak':>8}"
              + (f"{'bwd ms':>9}{'of peak':>8}" if train else "")
              + f"  {'bound':<16}{'shape':<16}")
    precision = result["config"]["precision"]
    of_peak = (f"fraction of the {precision} matmul peak" if precision != "int8" else
               "int8 layers: fraction of the int8 GEMM peak; each MLP's last layer, float in "
               "int8 models: of the fp32 peak")
    lines = ["", f"dense layers as bare GEMMs, B={result['config']['batch_size']} "
                 f"({of_peak}):", header, "-" * len(header)]
    for r in layers:
        row = (f"{r['name']:<22}{str(r['fan_in']) + '->' + str(r['fan_out']):>11}"
               f"{r['fwd_ms']:>9.3f}{r['fwd_fraction']:>8.2f}")
        if train:
            row += f"{r['bwd_ms']:>9.3f}{r['bwd_fraction']:>8.2f}"
        lines.append(row + f"  {r['bound']:<16}{r['shape']:<16}")
    worst = min(layers, key=lambda r: r.get("bwd_fraction", r["fwd_fraction"]))
    slowest = max(layers, key=lambda r: r["fwd_ms"] + r.get("bwd_ms", 0.0))
    lines += ["", f"most time: {slowest['name']} ({slowest['fan_in']}->{slowest['fan_out']}); "
                  f"furthest from the peak: {worst['name']} ({worst['fan_in']}->"
                  f"{worst['fan_out']}, {worst['shape']})"]
    return lines
