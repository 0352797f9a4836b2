"""PyTorch peer for bench/gpu/bench_gdn.cpp: the chunked (WY/UT) Gated DeltaNet forward
written in PyTorch, eager, fp32 (as our kernel's arithmetic), batched over (batch, head)
with a loop over chunks, at the same shape, timed with CUDA events (median after warm-up).
It first checks itself against the token-by-token recurrence in float64 on a small problem
and prints the relative error, so that a wrong peer cannot pass unnoticed.

Second peer, when flash-linear-attention (FLA) imports (brought as source: PYTHONPATH=.peer):
its Triton chunk_gated_delta_rule, forward and forward + backward (dq, dk, dv, dbeta, dg from a
random dO), bf16 q/k/v/beta and fp32 log decays, in FLA's own [B, T, H, d] layout, at the same
shape. Its forward and gradients are first compared on a short problem with the float64 chunked
peer above (autograd through it for the gradients), so the #640 guard bypass (see
peer_common.fla_bypass_hopper_guard) shows how wrong its gradients are on this Triton.

    PYTHONPATH=.peer python3 bench/gpu/gdn_peer.py [--ours FILE]   (FILE: bench_gpu_gdn's output)
"""
import argparse
import time

import torch

from peer_common import fla_bypass_hopper_guard, fla_describe, median_ms, read_ours


def gdn_chunk_forward(q, k, v, beta, g, C=64):
    """q, k [B, H, T, dk] (L2-normalised), v [B, H, T, dv], beta, g [B, H, T]; T % C == 0."""
    B, H, T, dk = q.shape
    dv, n = v.shape[-1], T // C
    scale = dk ** -0.5
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
    S = q.new_zeros(B, H, dv, dk)
    o = torch.empty_like(v)
    for i in range(n):
        Delta = U[:, :, i] - W[:, :, i] @ S.transpose(-1, -2)
        o[:, :, i] = scale * (Gam[:, :, i, :, None] * (q[:, :, i] @ S.transpose(-1, -2)) + P[:, :, i] @ Delta)
        dend = (gam[:, :, i, -1:] - gam[:, :, i]).exp()
        S = Gam[:, :, i, -1, None, None] * S + Delta.transpose(-1, -2) @ (dend[..., None] * k[:, :, i])
    return o.reshape(B, H, T, dv)


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
    args = ap.parse_args()
    ours = read_ours(args.ours)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
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
        fla_peer(ours)
    except Exception:  # noqa: BLE001 (the eager figures above stand on their own)
        import traceback
        traceback.print_exc()
        print("FLA peer failed (traceback above)")


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def fla_peer(ours, B=4, H=30, T=4096, dk=96, dv=192):
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


if __name__ == "__main__":
    main()
