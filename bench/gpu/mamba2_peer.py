"""PyTorch peer for bench/gpu/bench_mamba2.cpp: the chunked SSD forward (ssd_minimal's
algorithm) written in PyTorch, eager, fp32, batched over (batch, head) with a loop over
chunks for the state passing, at the same shape, timed with CUDA events (median after
warm-up). It first checks itself against the token-by-token recurrence in float64 on a
small problem and prints the relative error.

    python3 bench/gpu/mamba2_peer.py [--ours FILE]   (FILE: bench_gpu_mamba2's output)
"""
import argparse

import torch

from peer_common import median_ms, read_ours


def ssd_chunk_forward(x, dt, A, Bm, Cm, C=64):
    """x [b, h, T, P], dt [b, h, T], A [h], Bm, Cm [b, h, T, N] (groups expanded); T % C == 0."""
    b, h, T, P = x.shape
    N, n = Bm.shape[-1], T // C
    x, Bm, Cm = (t.reshape(b, h, n, C, -1) for t in (x, Bm, Cm))
    dt = dt.reshape(b, h, n, C)
    acum = (dt * A[None, :, None, None]).cumsum(-1)
    lower = torch.tril(torch.ones(C, C, dtype=torch.bool, device=x.device))
    diff = acum[..., :, None] - acum[..., None, :]
    decay = torch.where(lower, diff, torch.full_like(diff, float("-inf"))).exp()
    M = (Cm @ Bm.transpose(-1, -2)) * decay * dt[..., None, :]
    y = M @ x
    w = (acum[..., -1:] - acum).exp() * dt
    S = x.new_zeros(b, h, P, N)
    for i in range(n):
        y[:, :, i] += acum[:, :, i, :, None].exp() * (Cm[:, :, i] @ S.transpose(-1, -2))
        S = acum[:, :, i, -1, None, None].exp() * S + x[:, :, i].transpose(-1, -2) @ (w[:, :, i, :, None] * Bm[:, :, i])
    return y.reshape(b, h, T, P)


def ssd_recurrent(x, dt, A, Bm, Cm):
    b, h, T, P = x.shape
    S = x.new_zeros(b, h, P, Bm.shape[-1])
    y = torch.empty_like(x)
    for t in range(T):
        S = (dt[:, :, t] * A[None, :]).exp()[..., None, None] * S + \
            dt[:, :, t, None, None] * x[:, :, t, :, None] * Bm[:, :, t, None, :]
        y[:, :, t] = (S @ Cm[:, :, t, :, None]).squeeze(-1)
    return y


def inputs(b, h, T, P, N, dtype):
    x = torch.randn(b, h, T, P, device="cuda", dtype=dtype)
    dt = 0.1 * torch.nn.functional.softplus(torch.randn(b, h, T, device="cuda", dtype=dtype))
    A = -torch.exp(1.0 + 0.5 * torch.randn(h, device="cuda", dtype=dtype))
    Bm = torch.randn(b, 1, T, N, device="cuda", dtype=dtype).expand(b, h, T, N) / N ** 0.5
    Cm = torch.randn(b, 1, T, N, device="cuda", dtype=dtype).expand(b, h, T, N) / N ** 0.5
    return x, dt, A, Bm, Cm



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours")
    args = ap.parse_args()
    ours = read_ours(args.ours)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    torch.manual_seed(0)
    x = inputs(1, 2, 128, 16, 8, torch.float64)
    ref, got = ssd_recurrent(*x), ssd_chunk_forward(*x)
    print(f"self-check: chunked vs recurrent (float64) rel err {((got - ref).norm() / ref.norm()).item():.2e}")
    with torch.no_grad():
        x = inputs(4, 64, 4096, 64, 128, torch.float32)
        ms = median_ms(lambda: ssd_chunk_forward(*x))
    print(f"{'shape':30s} {'peer ms':>9s} {'ours ms':>9s} {'ratio':>6s}")
    for name in ("ssd_fwd_B4_T4096_bf16", "ssd_fwd_B4_T4096_fp32"):
        o = ours.get(name, (float("nan"),))[0]
        print(f"{name:30s} {ms:9.3f} {o:9.3f} {ms / o:6.2f}")
    print("peer: PyTorch eager fp32 chunked SSD forward; ratio = peer ms / ours ms (> 1: ours faster)")


if __name__ == "__main__":
    main()
