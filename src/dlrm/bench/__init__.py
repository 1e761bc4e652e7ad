"""`dlrm bench`: component timing, machine ceilings, roofline, sweeps.

- ``inputs``: batch generators (uniform ``random`` or power-law ``planted`` ids, multi-hot).
- ``timing``: synchronous CPU timers / CUDA events per component.
- ``ceilings``: this machine's matmul GFLOP/s, streaming GB/s, random-row-gather GB/s.
- ``roofline``: FLOPs and bytes of each component, achieved fraction of its bound.
- ``runner``: ``BenchConfig`` and ``run_bench`` (one measurement, JSON-able result); model
  shapes come from the project's one preset table (``dlrm.config.PRESETS``).
- ``sweep``: ``run_sweep`` over one varied setting, CSV rows.
- ``plots``: roofline chart, time breakdown, sweep charts (matplotlib, Agg).
- ``report``: the plain-text table the CLI prints.
- ``peers``: TorchRec's DLRM timed beside ours (optional extra ``peers``).
"""
