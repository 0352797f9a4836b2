#!/usr/bin/env python3
"""Tiny random-weight HuggingFace OlmoHybridForCausalLM fixtures for tests/test_hf_import.cpp.

Runs on a machine with torch + transformers 5.x (the GPU machine's python3; CPU only).
For each variant (RoPE and NoPE) it builds a 4-layer GGGA model (three Gated DeltaNet
layers, then full attention), hidden 64, GQA attention, grouped GDN value heads, vocab 97,
with every parameter (norm weights included) randomised and rounded to float32 values
so that hysim's float32 checkpoints hold them exactly, runs a fixed (2, 37) token batch
in float64 and writes <out>/olmo_hybrid_tiny_<variant>.npz with

  hf/<param name>      float32, the HF state dict
  tokens               int64 [B, T]
  logits               float64 [B, T, V]: HF as shipped (its RMSNorm, RoPE, softmax and
                       GDN core compute in float32 even for a float64 model)
  logits_fp64          float64 [B, T, V]: the same model with those float32 casts made
                       float64 (an exact float64 reference)
  hidden_states_fp64   float64 [L+1, B, T, D] (debugging only; not copied into the .h5)
  config_json          the HF config as JSON text
  versions             "transformers <v> torch <v>"

scripts/npz_to_h5.py turns these into tests/fixtures/olmo_hybrid_tiny_<variant>.h5.
"""
import argparse
import contextlib
import json
import math
import os
import sys
import types

import numpy as np
import torch
import transformers
from transformers.models.olmo_hybrid import modeling_olmo_hybrid as hf_mod
from transformers.models.olmo_hybrid.configuration_olmo_hybrid import OlmoHybridConfig

B, T, VOCAB = 2, 37, 97
ROPE_THETA = 10000.0


def make_config(rope: bool) -> OlmoHybridConfig:
    cfg = OlmoHybridConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=80,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rms_norm_eps=1e-6,
        layer_types=["linear_attention"] * 3 + ["full_attention"],
        linear_num_key_heads=2,
        linear_num_value_heads=4,
        linear_key_head_dim=16,
        linear_value_head_dim=32,
        linear_conv_kernel_dim=4,
        linear_allow_neg_eigval=True,
        tie_word_embeddings=False,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
    )
    if not rope:
        # NoPE is rope_theta = null. (rope_parameters = null is NOT NoPE in transformers 5.x: the
        # config fills in the default RoPE, theta 10000, both at construction and when a
        # config.json is loaded.) The JSON written below reloads to the same model (checked).
        cfg.rope_parameters = {"rope_type": "default", "rope_theta": None}
    cfg._attn_implementation = "eager"
    return cfg


def randomise(model: torch.nn.Module, seed: int) -> None:
    """Every parameter random, at scales that keep activations O(1), rounded to float32."""
    g = torch.Generator().manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=g, dtype=torch.float64)

    def rand(shape):
        return torch.rand(shape, generator=g, dtype=torch.float64)

    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):  # A ~ U(0.5, 4)
                v = torch.log(0.5 + 3.5 * rand(p.shape))
            elif name.endswith("dt_bias"):  # dt log-uniform in [0.01, 0.5], stored as softplus^-1(dt)
                dt = torch.exp(math.log(0.01) + (math.log(0.5) - math.log(0.01)) * rand(p.shape))
                v = dt + torch.log(-torch.expm1(-dt))
            elif "norm" in name:  # every RMSNorm weight (block, final, QK, gated output norm)
                v = 0.5 + rand(p.shape)
            elif "conv1d" in name:  # [C, 1, K]
                v = randn(p.shape) / math.sqrt(p.shape[-1])
            elif "embed_tokens" in name:
                v = randn(p.shape)
            else:  # nn.Linear [out, in]
                assert p.dim() == 2, name
                v = randn(p.shape) / math.sqrt(p.shape[1])
            p.copy_(v.float().double())


class _Torch64(types.ModuleType):
    """Stands in for `torch` inside modeling_olmo_hybrid: float32 (and `float`) mean float64."""

    def __getattr__(self, name):
        if name in ("float32", "float"):
            return torch.float64
        return getattr(torch, name)


@contextlib.contextmanager
def fp64_internals(model):
    orig_torch, orig_float = hf_mod.torch, torch.Tensor.float
    rot = model.model.rotary_emb
    orig_inv_freq = None if rot is None else rot.inv_freq
    hf_mod.torch = _Torch64("torch")
    torch.Tensor.float = lambda self, *a, **k: self.to(torch.float64)
    if rot is not None:  # inv_freq was computed in float32 at construction
        dim = model.config.hidden_size // model.config.num_attention_heads
        rot.inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    try:
        yield
    finally:
        hf_mod.torch, torch.Tensor.float = orig_torch, orig_float
        if rot is not None:
            rot.inv_freq = orig_inv_freq


def run_variant(rope: bool, out_dir: str) -> None:
    name = "rope" if rope else "nope"
    cfg = make_config(rope)
    torch.manual_seed(0)
    model = hf_mod.OlmoHybridForCausalLM(cfg).double().eval()
    assert (model.model.rotary_emb is not None) == rope, "RoPE switch did not take effect"
    assert model.config._attn_implementation == "eager", model.config._attn_implementation
    randomise(model, seed=1 if rope else 2)
    tokens = torch.from_numpy(np.random.default_rng(1234).integers(0, VOCAB, size=(B, T))).long()

    with torch.no_grad():
        stock = model(input_ids=tokens, use_cache=False).logits
        with fp64_internals(model):
            out = model(input_ids=tokens, use_cache=False, output_hidden_states=True)
    exact = out.logits
    assert stock.dtype == torch.float64 and exact.dtype == torch.float64
    rel = (torch.linalg.norm(stock - exact) / torch.linalg.norm(exact)).item()
    print(f"[{name}] logits {tuple(exact.shape)} |logits|_rms={exact.pow(2).mean().sqrt().item():.4f} "
          f"rel diff stock-vs-fp64 internals = {rel:.3e}")
    assert 0 < rel < 1e-4, "the float64 patch changed nothing or too much"

    # the config JSON stored with the fixture must describe this model: reload and rerun
    config_json = cfg.to_json_string(use_diff=False)
    cfg2 = OlmoHybridConfig.from_dict(json.loads(config_json))
    cfg2._attn_implementation = "eager"
    model2 = hf_mod.OlmoHybridForCausalLM(cfg2).double().eval()
    assert (model2.model.rotary_emb is not None) == rope, "config JSON does not round-trip the RoPE setting"
    model2.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model2(input_ids=tokens, use_cache=False).logits, stock), "config JSON round trip"

    arrays = {}
    for k, v in model.state_dict().items():
        if k.endswith("inv_freq"):
            continue
        a = v.detach().cpu().numpy()
        f = a.astype(np.float32)
        assert np.array_equal(f.astype(np.float64), a), f"{k} not float32-representable"
        arrays["hf/" + k] = f
        print(f"  {k:55s} {tuple(a.shape)}")
    arrays["tokens"] = tokens.numpy().astype(np.int64)
    arrays["logits"] = stock.numpy()
    arrays["logits_fp64"] = exact.numpy()
    arrays["hidden_states_fp64"] = torch.stack(out.hidden_states).numpy()
    arrays["config_json"] = np.array(config_json)
    arrays["versions"] = np.array(f"transformers {transformers.__version__} torch {torch.__version__}")
    path = os.path.join(out_dir, f"olmo_hybrid_tiny_{name}.npz")
    np.savez(path, **arrays)
    print(f"[{name}] wrote {path} ({os.path.getsize(path)} bytes)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    args = ap.parse_args()
    # CPU only, torch fallbacks only: flash-linear-attention's kernels (if installed) need CUDA.
    hf_mod.ShortConvolution = None
    hf_mod.FusedRMSNormGated = None
    hf_mod.chunk_gated_delta_rule = None
    hf_mod.fused_recurrent_gated_delta_rule = None
    torch.set_num_threads(4)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"fla fast path: {getattr(hf_mod, 'is_fast_path_available', None)}")
    os.makedirs(args.out, exist_ok=True)
    for rope in (True, False):
        run_variant(rope, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
