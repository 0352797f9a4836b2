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


def bf16_gemm_peak_tflops(n=8192):
    """torch.matmul bf16 n^3 throughput (TFLOP/s) on this GPU: the peer side's MFU denominator
    (bench_gpu_model measures the same product through cuBLASLt)."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = median_ms(lambda: torch.matmul(a, b), warmup=3, reps=20)
    return 2.0 * n ** 3 / ms / 1e9


# ---- flash-linear-attention (FLA), brought along as source (PYTHONPATH=.peer) ----

def fla_describe():
    """'fla <version> (commit ...)' or None when the package does not import."""
    import os
    try:
        import fla
    except Exception as e:  # noqa: BLE001 (any import failure means: not available)
        print(f"flash-linear-attention: not importable ({type(e).__name__}: {e})")
        return None
    commit = "unknown commit"
    stamp = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(fla.__file__))), "FLA_COMMIT")
    if os.path.exists(stamp):
        commit = "commit " + open(stamp).read().strip()
    return f"fla {getattr(fla, '__version__', '?')} ({commit}, from {os.path.dirname(fla.__file__)})"


def fla_bypass_hopper_guard():
    """FOR TIMING ONLY. FLA refuses its gated chunk backward (chunk_bwd_dqkwg, used by
    chunk_gated_delta_rule's backward) on Hopper with 3.4.0 <= Triton < 3.7.1: FLA issue #640,
    wrong gradients from that Triton range. This flips the module-level flag that guard reads, in
    memory only (FLA's files are not touched), so that the backward runs and can be timed.
    Returns the note to print next to every figure that went through it (None if no bypass was
    needed, i.e. not Hopper or a fixed Triton)."""
    import triton
    import fla.ops.common.chunk_o as co
    if not hasattr(co, "TRITON_ABOVE_3_7_1"):
        return (f"NOTE: this FLA has no #640 Hopper guard where expected (fla.ops.common.chunk_o); "
                f"nothing bypassed (Triton {triton.__version__})")
    if co.IS_NVIDIA_HOPPER and co.TRITON_ABOVE_3_4_0 and not co.TRITON_ABOVE_3_7_1:
        co.TRITON_ABOVE_3_7_1 = True
        return (f"NOTE: FLA's gated GDN backward is refused on Hopper with Triton {triton.__version__} < 3.7.1 "
                f"(FLA issue #640: wrong results); that guard was bypassed at run time FOR TIMING ONLY "
                f"(flag patched in memory, FLA's files untouched): FLA backward figures are speeds, "
                f"their gradients are not trusted")
    return None
