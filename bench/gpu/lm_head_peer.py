"""PyTorch peer for bench/gpu/bench_lm_head.cpp: logits = x W^T (bf16), cross-entropy
(+ z-loss 1e-4, as ours) in fp32, forward+backward for dx and dW, at the same shapes, on
the same GPU, timed with CUDA events (median after warm-up). Eager PyTorch materialises
the N x V logits (bf16) and their fp32 upcast; ours never holds more than a chunk.

    python3 bench/gpu/lm_head_peer.py [--ours FILE]   (FILE: bench_gpu_lm_head's output)
"""
import argparse

import torch
import torch.nn.functional as F

from peer_common import median_ms, read_ours

SHAPES = [("ladder1B_N16384_D2048_V100352", 16384, 2048, 100352),
          ("olmo7B_N8192_D3840_V100352", 8192, 3840, 100352)]



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours")
    args = ap.parse_args()
    ours = read_ours(args.ours)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print(f"{'shape':34s} {'peer f+b':>9s} {'peak GB':>8s} {'ours f+b':>9s} {'ratio':>6s}")
    for name, N, D, V in SHAPES:
        torch.manual_seed(0)
        x = torch.randn(N, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        W = (0.02 * torch.randn(V, D, device="cuda")).to(torch.bfloat16).requires_grad_()
        t = torch.randint(0, V, (N,), device="cuda")

        def step():
            x.grad = None
            W.grad = None
            logits = (x @ W.t()).float()
            lse = torch.logsumexp(logits, dim=-1)
            loss = F.cross_entropy(logits, t) + 1e-4 * (lse ** 2).mean()
            loss.backward()

        torch.cuda.reset_peak_memory_stats()
        ms = median_ms(step)
        peak = torch.cuda.max_memory_allocated() / 1e9
        o = ours.get(name, (float("nan"),))[0]
        print(f"{name:34s} {ms:9.3f} {peak:8.1f} {o:9.3f} {ms / o:6.2f}")
        del x, W
        torch.cuda.empty_cache()
    print("ratio = peer ms / ours ms (> 1: ours faster)")


if __name__ == "__main__":
    main()
