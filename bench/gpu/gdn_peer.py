"""PyTorch peer for bench/gpu/bench_gdn.cpp: the chunked (WY/UT) Gated DeltaNet forward
written in PyTorch, eager, fp32 (as our kernel's arithmetic), batched over (batch, head)
with a loop over chunks, at the same shape, timed with CUDA events (median after warm-up).
It first checks itself against the token-by-token recurrence in float64 on a small problem
and prints the relative error, so that a wrong peer cannot pass unnoticed.

The same function with its two pieces (per-chunk preparation, one chunk's step) under
torch.compile, forward and forward + backward (autograd), against ours (compiled_peer).

Third peer, when flash-linear-attention (FLA) imports (brought as source: PYTHONPATH=.peer):
its Triton chunk_gated_delta_rule, forward and forward + backward (dq, dk, dv, dbeta, dg from a
random dO), bf16 q/k/v/beta and fp32 log decays, in FLA's own [B, T, H, d] layout, at the same
shape. Its forward and gradients are first compared on a short problem with the float64 chunked
peer above (autograd through it for the gradients), so the #640 guard bypass (see
peer_common.fla_bypass_hopper_guard) shows how wrong its gradients are on this Triton.

    PYTHONPATH=.peer python3 bench/gpu/gdn_peer.py [--ours FILE] [--skip-fla | --skip-torch]   (FILE: bench_gpu_gdn's output)
"""
import argparse
import time

import torch

from peer_common import fla_bypass_hopper_guard, fla_describe, median_ms, read_ours


def gdn_prepare(q, k, v, beta, g, C):
    """Everything of the chunked forward that is per chunk (all chunks at once): q, k split into
    chunks, U, W (triangular solves), P = Q K^T o decay, gam = cumsum(g), Gam = exp(gam)."""
    B, H, T, dk = q.shape
    n = T // C
    q, k, v = (x.reshape(B, H, n, C, -1) for x in (q, k, v))
    beta, g = beta.reshape(B, H, n, C), g.reshape(B, H, n, C)
    gam = g.cumsum(-1)
    Gam = gam.exp()
    lower = torch.tril(torch.ones(C, C, dtype=torch.bool, device=q.device))
    strict = torch.tril(lower, -1)
    diff = gam[..., :, None] - gam[..., None, :]
    decay = torch.where(lower, diff, torch.full_like(diff, float("-inf"))).exp()
    A = torch.where(strict, beta[..., :, None] * (k @ k.transpose(-1, -2)) * decay, torch.zeros_like(diff))
    M = A + torch.eye(C, device=q.device, dtype=q.dtype)
    U = torch.linalg.solve_triangular(M, beta[..., None] * v, upper=False, unitriangular=True)
    W = torch.linalg.solve_triangular(M, (beta * Gam)[..., None] * k, upper=False, unitriangular=True)
    P = (q @ k.transpose(-1, -2)) * decay
    return q, k, U, W, P, gam, Gam


def gdn_step(S, U, W, q, k, P, gam, Gam):
    """One chunk: its output from the entering state S [B, H, dv, dk], and the next state."""
    Delta = U - W @ S.transpose(-1, -2)
    o = q.shape[-1] ** -0.5 * (Gam[..., None] * (q @ S.transpose(-1, -2)) + P @ Delta)
    dend = (gam[..., -1:] - gam).exp()
    return Gam[..., -1, None, None] * S + Delta.transpose(-1, -2) @ (dend[..., None] * k), o


def gdn_chunk_forward(q, k, v, beta, g, C=64, prepare=gdn_prepare, step=gdn_step):
    """q, k [B, H, T, dk] (L2-normalised), v [B, H, T, dv], beta, g [B, H, T]; T % C == 0.
    prepare / step: gdn_prepare / gdn_step or their torch.compile'd versions."""
    B, H, T, dk = q.shape
    q, k, U, W, P, gam, Gam = prepare(q, k, v, beta, g, C)
    S = q.new_zeros(B, H, v.shape[-1], dk)
    outs = []
    for i in range(T // C):
        S, o = step(S, U[:, :, i], W[:, :, i], q[:, :, i], k[:, :, i], P[:, :, i], gam[:, :, i], Gam[:, :, i])
        outs.append(o)
    return torch.stack(outs, 2).reshape(B, H, T, -1)


def gdn_recurrent(q, k, v, beta, g):
    B, H, T, dk = q.shape
    S = q.new_zeros(B, H, v.shape[-1], dk)
    o = torch.empty_like(v)
    for t in range(T):
        S = g[:, :, t].exp()[..., None, None] * S
        u = v[:, :, t] - (S @ k[:, :, t, :, None]).squeeze(-1)
        S = S + beta[:, :, t, None, None] * u[..., None] * k[:, :, t, None, :]
        o[:, :, t] = dk ** -0.5 * (S @ q[:, :, t, :, None]).squeeze(-1)
    return o


def inputs(B, H, T, dk, dv, dtype):
    q = torch.nn.functional.normalize(torch.randn(B, H, T, dk, device="cuda", dtype=dtype), dim=-1)
    k = torch.nn.functional.normalize(torch.randn(B, H, T, dk, device="cuda", dtype=dtype), dim=-1)
    v = torch.randn(B, H, T, dv, device="cuda", dtype=dtype)
    beta = 2 * torch.sigmoid(torch.randn(B, H, T, device="cuda", dtype=dtype))
    g = -0.5 * torch.nn.functional.softplus(torch.randn(B, H, T, device="cuda", dtype=dtype))
    return q, k, v, beta, g



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours")
    ap.add_argument("--skip-fla", action="store_true", help="only the PyTorch peers")
    ap.add_argument("--skip-torch", action="store_true", help="only the FLA peer (no PyTorch chunked peers)")
    ap.add_argument("--fla-kernels", action="store_true",
                    help="also FLA's time per kernel (torch.profiler over its fwd+bwd), to set beside ours per kernel")
    args = ap.parse_args()
    ours = read_ours(args.ours)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    if args.skip_torch:
        fla_peer(ours, kernels=args.fla_kernels)
        return
    torch.manual_seed(0)
    x = inputs(1, 2, 128, 32, 48, torch.float64)
    ref, got = gdn_recurrent(*x), gdn_chunk_forward(*x)
    print(f"self-check: chunked vs recurrent (float64) rel err {((got - ref).norm() / ref.norm()).item():.2e}")
    with torch.no_grad():
        x = inputs(4, 30, 4096, 96, 192, torch.float32)
        ms = median_ms(lambda: gdn_chunk_forward(*x))
    print(f"{'shape':30s} {'peer ms':>9s} {'ours ms':>9s} {'ratio':>6s}")
    for name in ("gdn_fwd_B4_T4096_bf16", "gdn_fwd_B4_T4096_fp32"):
        o = ours.get(name, (float("nan"),))[0]
        print(f"{name:30s} {ms:9.3f} {o:9.3f} {ms / o:6.2f}")
    print("peer: PyTorch eager fp32 chunked forward; ratio = peer ms / ours ms (> 1: ours faster)")
    try:
        compiled_peer(ours, x)
    except Exception:  # noqa: BLE001
        import traceback
        traceback.print_exc()
        print("torch.compile peer failed (traceback above)")
    if args.skip_fla:
        return
    try:
        fla_peer(ours, kernels=args.fla_kernels)
    except Exception:  # noqa: BLE001 (the eager figures above stand on their own)
        import traceback
        traceback.print_exc()
        print("FLA peer failed (traceback above)")


def compiled_peer(ours, x):
    """The same chunked GDN with gdn_prepare and gdn_step under torch.compile (the 64-chunk loop
    stays in Python, as a graph break would put it anyway), forward and forward + backward
    (autograd, random dO), eager and compiled, fp32, against ours (bf16 storage)."""
    cprep, cstep = torch.compile(gdn_prepare), torch.compile(gdn_step)
    t0 = time.time()
    with torch.no_grad():
        gdn_chunk_forward(*x, prepare=cprep, step=cstep)
    torch.cuda.synchronize()
    print(f"\ntorch.compile peer ({time.time() - t0:.0f} s to compile the forward)")
    with torch.no_grad():
        fwd_c = median_ms(lambda: gdn_chunk_forward(*x, prepare=cprep, step=cstep))
    xg = [t.clone().requires_grad_() for t in x]
    d_o = torch.randn_like(x[2])

    def fwd_bwd(prep, st):
        for t in xg:
            t.grad = None
        gdn_chunk_forward(*xg, prepare=prep, step=st).backward(d_o)

    fb_e = median_ms(lambda: fwd_bwd(gdn_prepare, gdn_step), warmup=1, reps=5)
    t0 = time.time()
    fwd_bwd(cprep, cstep)
    torch.cuda.synchronize()
    print(f"({time.time() - t0:.0f} s to compile the backward)")
    fb_c = median_ms(lambda: fwd_bwd(cprep, cstep), warmup=1, reps=5)
    o_f = ours.get("gdn_fwd_B4_T4096_bf16", (float("nan"),))[0]
    o_fb = ours.get("gdn_fwd_B4_T4096_bf16_fwdbwd", (float("nan"),))[0]
    print(f"{'B4 T4096 H30 dk96 dv192, peer fp32':38s} {'peer ms':>9s} {'ours ms':>9s} {'ratio':>6s}")
    for name, ms, o in (("eager fwd+bwd", fb_e, o_fb), ("torch.compile fwd", fwd_c, o_f),
                        ("torch.compile fwd+bwd", fb_c, o_fb)):
        print(f"{name:38s} {ms:9.3f} {o:9.3f} {ms / o:6.2f}")
    print("ratio = peer ms / ours ms (> 1: ours faster); ours: bf16 storage")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def fla_peer(ours, B=4, H=30, T=4096, dk=96, dv=192, kernels=False):
    desc = fla_describe()
    if desc is None:
        print("FLA peer skipped (flash-linear-attention not importable)")
        return
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    note = fla_bypass_hopper_guard()
    t0 = time.time()
    print(f"\nFLA peer: {desc}, chunk_gated_delta_rule, chunk 64")
    if note:
        print(note)

    def to_fla(x):  # [B, H, T, ...] -> [B, T, H, ...], contiguous
        return x.transpose(1, 2).contiguous()

    # self-check on a small problem against the float64 chunked peer (autograd for the gradients)
    torch.manual_seed(1)
    x64 = [t.requires_grad_() for t in inputs(1, H, 256, dk, dv, torch.float64)]
    ref = gdn_chunk_forward(*x64)
    do = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, x64, do)
    for dt in (torch.bfloat16,):  # the timed dtype (each extra dtype costs its own Triton autotuning)
        try:
            xf = [to_fla(t.detach().to(dt if i < 4 else torch.float32)).requires_grad_() for i, t in enumerate(x64)]
            o, _ = chunk_gated_delta_rule(*xf[:3], g=xf[4], beta=xf[3], scale=dk ** -0.5)
            grads = torch.autograd.grad(o, xf, to_fla(do).to(o.dtype))
            errs = " ".join(f"d{n} {rel(gr.transpose(1, 2), rg):.1e}"
                            for n, gr, rg in zip(("q", "k", "v", "beta", "g"), grads, ref_grads))
            print(f"[{time.time() - t0:4.0f} s] self-check vs float64 chunked peer (B1 H30 T256), FLA {str(dt)[6:]} q/k/v/beta: "
                  f"rel err out {rel(o.transpose(1, 2), ref):.1e}; {errs}")
        except Exception as e:  # noqa: BLE001 (report and go on to the timing)
            print(f"self-check with FLA {str(dt)[6:]} inputs failed: {type(e).__name__}: {e}")

    torch.manual_seed(0)
    q, k, v, beta, g = (to_fla(t) for t in inputs(B, H, T, dk, dv, torch.float32))
    q, k, v, beta = (t.to(torch.bfloat16) for t in (q, k, v, beta))
    with torch.no_grad():
        fwd = median_ms(lambda: chunk_gated_delta_rule(q, k, v, g=g, beta=beta))
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v, g, beta)]
    do = torch.randn(B, T, H, dv, device="cuda", dtype=torch.bfloat16)

    def fwd_bwd():
        o, _ = chunk_gated_delta_rule(*leaves[:3], g=leaves[3], beta=leaves[4])
        torch.autograd.grad(o, leaves, do)

    both = median_ms(fwd_bwd)
    print(f"[{time.time() - t0:4.0f} s] (the first calls include Triton's compiling and autotuning)")
    print(f"{'FLA, B4 T4096 H30 dk96 dv192 bf16':34s} {'FLA ms':>9s} {'ours ms':>9s} {'ratio':>6s}")
    for what, ms, key in (("fwd", fwd, "gdn_fwd_B4_T4096_bf16"), ("bwd (fwd+bwd - fwd)", both - fwd,
                          "gdn_fwd_B4_T4096_bf16_bwd"), ("fwd+bwd", both, "gdn_fwd_B4_T4096_bf16_fwdbwd")):
        o = ours.get(key, (float("nan"),))[0]
        print(f"{what:34s} {ms:9.3f} {o:9.3f} {ms / o:6.2f}")
    print("ratio = FLA ms / ours ms (> 1: ours faster)" + (" -- " + note if note else ""))
    if kernels:
        kernel_table(fwd_bwd, reps=5)


def kernel_table(fn, reps):
    """GPU time per kernel of fn (after the timing above: compiled, tuned), the mean per call of
    fn over reps calls, by torch.profiler's CUDA activity, longest first."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    def gpu_us(e):  # device_time_total from torch 2.4 on, cuda_time_total before
        return getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
    rows = [(gpu_us(e) / reps, e.count / reps, e.key) for e in prof.key_averages() if gpu_us(e) > 0]
    rows.sort(reverse=True)
    print(f"\nper kernel, mean per fwd+bwd call over {reps} calls:")
    print(f"{'us':>9s} {'calls':>6s}  kernel")
    for us, n, name in rows:
        print(f"{us:9.1f} {n:6.1f}  {name[:100]}")
    print(f"{sum(r[0] for r in rows):9.1f}         total")


if __name__ == "__main__":
    main()
