"""Shared by the PyTorch peer scripts (bench/gpu/*_peer.py): CUDA-event median timing and
the `RESULT name value ...` lines our bench_gpu_* programs print."""
import re
import statistics

import torch


def median_ms(fn, warmup=2, reps=10):
    """Median over `reps` timed calls of fn (on the current stream), after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def read_ours(path):
    """name -> tuple of the floats on its RESULT line ({} when path is None)."""
    ours = {}
    if path:
        for line in open(path):
            m = re.match(r"RESULT (\S+)((?: \S+)+)", line)
            if m:
                ours[m.group(1)] = tuple(float(v) for v in m.group(2).split())
    return ours
