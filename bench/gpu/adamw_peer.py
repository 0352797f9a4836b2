"""PyTorch peer for bench/gpu/bench_adamw.cpp: torch.optim.AdamW(fused=True) over fp32
parameters of the same total size split into the same 250 tensors (decay on 4 of 5), plus
clip_grad_norm_(1.0) (foreach) and the bf16 copy of the weights (`copy_` per tensor, what
a bf16 forward would need), on the same GPU, timed with CUDA events (median after warm-up).

    python3 bench/gpu/adamw_peer.py [--ours FILE]   (FILE: bench_gpu_adamw's output)
"""
import argparse
import re
import statistics

import torch


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours")
    args = ap.parse_args()
    ours = float("nan")
    if args.ours:
        for line in open(args.ours):
            m = re.match(r"RESULT adamw_1p26B (\S+)", line)
            if m:
                ours = float(m.group(1))
    n, groups = 1200 << 20, 250
    sizes = [n * (i + 1) // groups - n * i // groups for i in range(groups)]
    params = [torch.zeros(s, device="cuda", requires_grad=True) for s in sizes]
    for p in params:
        p.grad = 0.01 * torch.randn(p.numel(), device="cuda")
    copies = [torch.empty(s, device="cuda", dtype=torch.bfloat16) for s in sizes]
    decay = [p for i, p in enumerate(params) if i % 5 != 0]
    no_decay = [p for i, p in enumerate(params) if i % 5 == 0]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8, fused=True)

    def step():
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        torch._foreach_copy_(copies, params)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    ts = []
    for _ in range(10):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ms = statistics.median(ts)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print(f"peer (fused AdamW + foreach clip + bf16 copy) {ms:.3f} ms, ours {ours:.3f} ms, ratio {ms / ours:.2f} "
          f"(peer ms / ours ms, > 1: ours faster)")


if __name__ == "__main__":
    main()
