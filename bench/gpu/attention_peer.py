"""PyTorch peer for bench/gpu/bench_attention.cpp: SDPA (flash backend where it applies) at
the same shapes, bf16, on the same GPU, timed with CUDA events (median after warm-up).

    python3 bench/gpu/attention_peer.py [--ours FILE]

FILE holds bench_gpu_attention's output; its `RESULT name fwd fwd+bwd` lines are matched by
name and the ratio peer_ms / our_ms is printed (> 1: ours is faster).
Peer layouts: q, k, v as [B, H, T, dh] contiguous (SDPA's own layout: the peer's best case).
Causal shapes use is_causal=True with the flash backend (GQA through enable_gqa, which the
flash backend accepts in torch >= 2.5; else SDPA picks its own backend and we say which).
The sliding-window shape uses flex_attention (torch.compile'd, Triton) with a sliding-window
block mask: SDPA's flash backend has no window argument.
"""
import argparse

import torch
import torch.nn.functional as F

from peer_common import median_ms, read_ours

SHAPES = [  # name, B, T, H, Hkv, dh, window (as in bench_attention.cpp)
    ("ladder1B_B4_T4096_H16_d128_causal", 4, 4096, 16, 16, 128, 0),
    ("olmo7B_B1_T8192_H30_d128_causal", 1, 8192, 30, 30, 128, 0),
    ("B4_T4096_H32_d64_causal", 4, 4096, 32, 32, 64, 0),
    ("olmo3_B1_T8192_H32_d128_window4096", 1, 8192, 32, 32, 128, 4096),
    ("gqa_B4_T4096_H32_Hkv8_d128_causal", 4, 4096, 32, 8, 128, 0),
]



def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ours", help="bench_gpu_attention output")
    args = ap.parse_args()
    ours = read_ours(args.ours)

    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    from torch.nn.attention import SDPBackend, sdpa_kernel
    rows = []
    for name, B, T, H, Hkv, dh, window in SHAPES:
        torch.manual_seed(0)
        q = torch.randn(B, H, T, dh, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(B, Hkv, T, dh, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(B, Hkv, T, dh, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        do = torch.randn(B, H, T, dh, device="cuda", dtype=torch.bfloat16)
        if window > 0:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention

            def sliding(b, h, qi, kj):
                return (kj <= qi) & (kj > qi - window)

            mask = create_block_mask(sliding, None, None, T, T, device="cuda")
            flex = torch.compile(flex_attention)
            peer = "flex_attention (compiled)"

            def fwd():
                return flex(q, k, v, block_mask=mask, enable_gqa=H != Hkv)
        else:
            peer = "SDPA flash"

            def fwd():
                with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=H != Hkv)

        def fwd_bwd():
            o = fwd()
            torch.autograd.backward(o, do)

        try:
            with torch.no_grad():
                f_ms = median_ms(fwd, 3, 20)
            fb_ms = median_ms(fwd_bwd, 3, 20)
        except Exception as e:  # say why a peer did not run rather than stop the table
            print(f"{name}: peer {peer} failed: {type(e).__name__}: {str(e)[:200]}")
            continue
        rows.append((name, peer, f_ms, fb_ms))
        print(f"PEER {name} {f_ms:.4f} {fb_ms:.4f} ({peer})", flush=True)

    print()
    print(f"{'shape':38s} {'peer':26s} {'peer fwd':>9s} {'ours fwd':>9s} {'ratio':>6s} "
          f"{'peer f+b':>9s} {'ours f+b':>9s} {'ratio':>6s}")
    for name, peer, f_ms, fb_ms in rows:
        of, ofb = ours.get(name, (float("nan"), float("nan")))
        print(f"{name:38s} {peer:26s} {f_ms:9.3f} {of:9.3f} {f_ms / of:6.2f} {fb_ms:9.3f} {ofb:9.3f} "
              f"{fb_ms / ofb:6.2f}")
    print("ratio = peer ms / ours ms (> 1: ours faster)")


if __name__ == "__main__":
    main()
