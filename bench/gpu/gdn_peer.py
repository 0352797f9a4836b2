"""PyTorch peer for bench/gpu/bench_gdn.cpp: the chunked (WY/UT) Gated DeltaNet forward
written in PyTorch, eager, fp32 (as our kernel's arithmetic), batched over (batch, head)
with a loop over chunks, at the same shape, timed with CUDA events (median after warm-up).
It first checks itself against the token-by-token recurrence in float64 on a small problem
and prints the relative error, so that a wrong peer cannot pass unnoticed.

    python3 bench/gpu/gdn_peer.py [--ours FILE]   (FILE: bench_gpu_gdn's output)
"""
import argparse

import torch

from peer_common import median_ms, read_ours


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


if __name__ == "__main__":
    main()
