"""PyTorch whole-model peer for bench/gpu/bench_model.cpp: HuggingFace transformers'
OlmoHybridForCausalLM built from the same hysim INI config (architecture from [model], batch and
sequence from [train]), one full training step timed with CUDA events (median after warm-up):
forward, HF's own causal-LM loss (labels = the tokens; no z-loss), backward, gradient clipping
(clip_grad_norm_, foreach) and torch.optim.AdamW(fused=True), on random tokens.

Recipes (both are what a PyTorch user would run; each is reported, and the faster one whose loss
goes down on the repeated batch is named the peer):
  autocast  fp32 parameters, gradients and AdamW state (= fp32 master weights, as ours) with
            torch.autocast(bfloat16) around forward and loss
  bf16      the whole model in bfloat16 (parameters, gradients, AdamW state), no master weights
Attention: SDPA with the flash backend forced (torch.nn.attention.sdpa_kernel), causal, NoPE.
GDN: transformers 5.17 takes flash-linear-attention's chunk_gated_delta_rule when `fla` imports at
the time its modeling module is imported (PYTHONPATH=.peer), else its torch fallback; the short
conv and the gated output norm are HF's torch code unless causal_conv1d is installed (it is not on
the GPU machine). What each entry point resolved to is printed (read from HF's wrapper closures),
and the GDN core calls per step are counted. FLA's gated GDN backward is
refused on Hopper with Triton < 3.7.1 (FLA #640): the guard is bypassed FOR TIMING ONLY and a note
says so next to the figures (peer_common.fla_bypass_hopper_guard).
`--compile` also runs the faster recipe with torch.compile applied per decoder layer (regional
compilation: one compiled graph per layer class; FLA's kernels stay graph breaks).

An OOM at batch B prints `OOM at batch B` and the recipe is retried at B/2, B/4, ... 1.

    PYTHONPATH=.peer python3 bench/gpu/model_peer.py [--config INI] [--batch B] [--seq T]
        [--steps N] [--warmup W] [--recipes autocast,bf16] [--compile] [--no-fla] [--ours FILE]

FILE holds bench_gpu_model's output; its `RESULT model_step <tokens/s> <step ms> <MFU> <peak GiB>`
line gives the ratio ours / peer tokens/s (> 1: ours faster).
"""
import argparse
import configparser
import gc
import math
import os
import time

import torch

from peer_common import bf16_gemm_peak_tflops, fla_bypass_hopper_guard, fla_describe, median_ms, read_ours

GIB = float(1 << 30)
T0 = time.time()


def stamp():
    return f"[{time.time() - T0:5.0f} s]"


# `hysim info -c <config>`: total parameters and forward + backward FLOPs per token (at the
# config's seq_len), for the configs whose figures were read off it.
HYSIM_INFO = {"olmo_hybrid_1b.ini": dict(params=1_586_614_912, flops_per_token=8_608_315_296, seq=4096)}


def read_ini(path):
    cp = configparser.ConfigParser(inline_comment_prefixes=("#", ";"))
    with open(path) as f:
        cp.read_file(f)
    return cp["model"], cp["train"]


def hf_config(m, seq_len):
    """OlmoHybridConfig with hysim's [model] architecture (key mapping as in scripts/hf_fixture.py)."""
    from transformers.models.olmo_hybrid.configuration_olmo_hybrid import OlmoHybridConfig

    def req(key, want):
        got = m.get(key, want).strip().lower()
        if got != want:
            raise SystemExit(f"{key} = {got}: HF's OlmoHybrid module has {key} = {want} only")

    # HF's fixed layout: attention blocks norm the sub-layer output before the residual add
    # (Olmo 2/3's "reordered" norm, QK-norm over the full projection width), GDN blocks are pre-norm.
    req("norm_attention", "reordered")
    req("norm_gdn", "pre")
    req("qk_norm", "true")
    d_model, n_heads, d_head = m.getint("d_model"), m.getint("n_heads"), m.getint("d_head")
    if n_heads * d_head != d_model:
        raise SystemExit("HF's attention has head_dim = d_model / n_heads")
    if abs(m.getfloat("gdn_norm_eps", 1e-5) - 1e-5) > 1e-12:
        raise SystemExit("HF's GDN output norm has eps 1e-5 fixed")
    pattern, n_layers = m.get("pattern").strip(), m.getint("n_layers")
    kinds = {"G": "linear_attention", "A": "full_attention"}
    if set(pattern) - set(kinds):
        raise SystemExit(f"pattern {pattern}: HF's OlmoHybrid has GDN (G) and full attention (A) layers only")
    pos = m.get("pos_encoding", "none").strip().lower()
    if pos == "none":  # NoPE is rope_theta = None (rope_parameters = None means default RoPE)
        rope = {"rope_type": "default", "rope_theta": None}
    elif pos == "rope":
        rope = {"rope_type": "default", "rope_theta": m.getfloat("rope_theta", 10000.0)}
    else:
        raise SystemExit(f"pos_encoding = {pos}: not mapped")
    cfg = OlmoHybridConfig(
        vocab_size=m.getint("vocab_size"),
        hidden_size=d_model,
        intermediate_size=m.getint("d_mlp"),
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=m.getint("n_kv_heads", n_heads),
        max_position_embeddings=seq_len,
        initializer_range=m.getfloat("init_std", 0.02),
        rms_norm_eps=m.getfloat("norm_eps"),
        layer_types=[kinds[pattern[i % len(pattern)]] for i in range(n_layers)],
        linear_num_key_heads=m.getint("gdn_n_heads"),
        linear_num_value_heads=m.getint("gdn_n_v_heads", m.getint("gdn_n_heads")),
        linear_key_head_dim=m.getint("gdn_d_head_k"),
        linear_value_head_dim=m.getint("gdn_d_head_v"),
        linear_conv_kernel_dim=m.getint("gdn_conv", 4),
        linear_allow_neg_eigval=m.getboolean("gdn_allow_neg_eigval", True),
        linear_a_log_min=m.getfloat("a_init_min", 0.0),
        linear_a_log_max=m.getfloat("a_init_max", 16.0),
        tie_word_embeddings=m.getboolean("tie_embeddings", False),
        use_cache=False,
        pad_token_id=None,
        bos_token_id=None,
        eos_token_id=None,
        rope_parameters=rope,
    )
    cfg.rope_parameters = rope  # as in hf_fixture.py: make sure NoPE survives the config's defaults
    cfg._attn_implementation = "sdpa"
    return cfg


def is_oom(e):
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


class Run:
    """One recipe at one batch: model, optimizer, batch, and the timed step."""

    def __init__(self, cfg, recipe, B, T, lr, wd, clip, compiled, force_flash):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from transformers.models.olmo_hybrid.modeling_olmo_hybrid import OlmoHybridForCausalLM
        torch.manual_seed(0)
        with torch.device("cuda"):
            self.model = OlmoHybridForCausalLM(cfg)
        if recipe == "bf16":
            self.model.to(torch.bfloat16)
        self.model.train()
        if compiled:
            for layer in self.model.model.layers:
                layer.compile()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.95), weight_decay=wd, fused=True)
        self.tokens = torch.randint(0, cfg.vocab_size, (B, T), device="cuda")
        self.autocast = recipe == "autocast"
        self.clip = clip
        backends = [SDPBackend.FLASH_ATTENTION] if force_flash else list(SDPBackend)
        self.sdpa = lambda: sdpa_kernel(backends)
        self.losses = []

    def step(self):
        with self.sdpa(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast):
            loss = self.model(input_ids=self.tokens, labels=self.tokens, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip, foreach=True)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.losses.append(loss.detach())


def run_recipe(cfg, recipe, B, T, args, lr, wd, clip, compiled=False):
    """Times the recipe at batch B, halving B on OOM. Returns a result dict or None."""
    name = recipe + (" + torch.compile (per layer)" if compiled else "")
    force_flash = True
    while B >= 1:
        r = None
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t0, failure = time.time(), None
        try:
            r = Run(cfg, recipe, B, T, lr, wd, clip, compiled, force_flash)
            c0 = dict(GDN_CALLS)
            ms = median_ms(r.step, warmup=args.warmup, reps=args.steps)
            losses = [x.item() for x in r.losses]
            return dict(recipe=name, B=B, ms=ms, tok_s=B * T / (ms / 1e3),
                        calls={k: (GDN_CALLS[k] - c0[k]) / len(losses) for k in c0},
                        alloc=torch.cuda.max_memory_allocated() / GIB,
                        reserved=torch.cuda.max_memory_reserved() / GIB, losses=losses,
                        trains=all(math.isfinite(x) for x in losses) and losses[-1] < losses[0] - 0.05,
                        wall=time.time() - t0, sdpa="flash (forced)" if force_flash else "PyTorch's choice")
        except Exception as e:  # noqa: BLE001 (OOM: retry smaller; anything else: report)
            failure = "oom" if is_oom(e) else f"{type(e).__name__}: {str(e)[:300]}"
            if failure != "oom":
                import traceback
                traceback.print_exc()
        r = None
        if failure == "oom":
            print(f"{stamp()} OOM at batch {B} ({name}; peak allocated {torch.cuda.max_memory_allocated() / GIB:.1f} GiB "
                  f"when it ran out)", flush=True)
            B //= 2
        elif force_flash and "kernel" in failure.lower():
            print(f"{name}: forcing SDPA's flash backend failed ({failure}); retrying with PyTorch's choice")
            force_flash = False
        else:
            print(f"{name} failed at batch {B}: {failure}", flush=True)
            return None
    return None


GDN_CALLS = {}  # module attribute name -> calls (the GDN core entry points HF's layer calls)


def kernel_bindings(hf_mod):
    """What each of HF's optional-kernel entry points in the modeling module resolved to.
    transformers >= 5.15 (5.17 on the GPU machine) decorates its torch reference functions
    (torch_chunk_gated_delta_rule, causal_conv1d_fn, ...) with
    use_kernel_func_from_hub_with_fallback(func_name, package): when the modeling module is
    imported it tries to import `package` (fla, causal_conv1d) and keeps the package's function
    if that works. The choice lives in the wrapper's closure (implementation,
    is_new_implementation); its __module__ / __name__ are the torch fallback's either way.
    Older versions bound FLA's functions as plain module globals (chunk_gated_delta_rule, ...).
    Returns {attribute: (uses the package?, implementation's module.qualname)}."""
    out = {}
    for name, obj in vars(hf_mod).items():
        code = getattr(obj, "__code__", None)
        if code is not None and "is_new_implementation" in code.co_freevars and obj.__closure__:
            cells = dict(zip(code.co_freevars, (c.cell_contents for c in obj.__closure__)))
            impl = cells.get("implementation")
            out[name] = (bool(cells["is_new_implementation"]),
                         f"{getattr(impl, '__module__', '?')}.{getattr(impl, '__qualname__', '?')}")
        elif name in ("chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule", "ShortConvolution",
                      "FusedRMSNormGated"):
            out[name] = (obj is not None, "None" if obj is None else f"{obj.__module__}.{obj.__name__}")
    return out


def force_torch_fallback(hf_mod):
    """--no-fla: every FLA-resolved entry point back to HF's own torch function."""
    for name, (uses_pkg, impl) in kernel_bindings(hf_mod).items():
        if uses_pkg and impl.startswith("fla."):
            obj = getattr(hf_mod, name)
            setattr(hf_mod, name, getattr(obj, "__wrapped__", None))  # None for the old-style globals
    if hasattr(hf_mod, "is_fast_path_available"):
        hf_mod.is_fast_path_available = False


def count_gdn_calls(hf_mod):
    """Counts the calls of each module-level GDN chunk entry point (looked up at call time by
    HF's GDN layer, or bound in its __init__, which runs after this)."""
    bound = kernel_bindings(hf_mod)
    for name in [n for n, v in vars(hf_mod).items() if "chunk_gated_delta_rule" in n and callable(v)]:
        fn = getattr(hf_mod, name)

        def wrapper(*a, __fn=fn, __name=name, **k):
            GDN_CALLS[__name] = GDN_CALLS.get(__name, 0) + 1
            return __fn(*a, **k)
        GDN_CALLS[name] = 0
        # a package kernel is a graph break for torch.compile anyway; HF's torch code stays traceable
        setattr(hf_mod, name, torch.compiler.disable(wrapper) if bound.get(name, (False,))[0] else wrapper)


def describe_gdn(gdn):
    subs = ", ".join(f"{k}={type(v).__module__}.{type(v).__name__}" for k, v in gdn.named_children()
                     if "conv" in k or "norm" in k)
    attrs = ", ".join(f"{k}={getattr(v, '__module__', '?')}.{getattr(v, '__name__', type(v).__name__)}"
                      for k, v in vars(gdn).items() if callable(v) and not k.startswith("_"))
    return f"GDN layer modules: {subs}; bound callables: {attrs or 'none'}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="experiments/configs/olmo_hybrid_1b.ini")
    ap.add_argument("--batch", type=int, help="default: [train] batch_size")
    ap.add_argument("--seq", type=int, help="default: [train] seq_len")
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--recipes", default="autocast,bf16")
    ap.add_argument("--compile", action="store_true", help="also the faster recipe with torch.compile")
    ap.add_argument("--no-fla", action="store_true", help="force HF's torch GDN fallback")
    ap.add_argument("--ours", help="bench_gpu_model output (RESULT model_step ...)")
    args = ap.parse_args()
    ours = read_ours(args.ours).get("model_step")

    m, tr = read_ini(args.config)
    B = args.batch or tr.getint("batch_size")
    T = args.seq or tr.getint("seq_len")
    lr, wd, clip = tr.getfloat("lr", 4e-4), tr.getfloat("weight_decay", 0.1), tr.getfloat("grad_clip", 1.0)

    import transformers
    import triton
    print(f"torch {torch.__version__}, triton {triton.__version__}, transformers {transformers.__version__}, "
          f"{torch.cuda.get_device_name()}")
    fla_note = desc = None
    if args.no_fla:
        print("GDN kernels: HF's torch fallback (forced by --no-fla)")
    else:
        desc = fla_describe()
        try:  # what HF imports from it; if that fails, hide fla so that HF takes its torch fallback
            import fla.modules  # noqa: F401
            import fla.ops.gated_delta_rule  # noqa: F401
        except Exception as e:  # noqa: BLE001
            print(f"flash-linear-attention does not import ({type(e).__name__}: {e}); HF's torch fallback")
            import sys
            sys.path[:] = [p for p in sys.path if not os.path.exists(os.path.join(p, "fla", "__init__.py"))]
            for k in [k for k in sys.modules if k == "fla" or k.startswith("fla.")]:
                del sys.modules[k]
            desc = None
        if desc:
            print(f"flash-linear-attention: {desc}")
            fla_note = fla_bypass_hopper_guard()
    from transformers.models.olmo_hybrid import modeling_olmo_hybrid as hf_mod
    if args.no_fla:
        force_torch_fallback(hf_mod)
    for name, (uses_pkg, impl) in kernel_bindings(hf_mod).items():
        print(f"HF kernel entry {name}: {'PACKAGE ' if uses_pkg else 'torch fallback '}{impl}")
    if desc and not any(u and i.startswith("fla.") for u, i in kernel_bindings(hf_mod).values()):
        print("WARNING: fla imports but HF did not bind any of its functions: HF's GDN runs its torch fallback")
    count_gdn_calls(hf_mod)

    cfg = hf_config(m, T)
    print(f"config {args.config}: batch {B} x seq {T}; layer_types "
          f"{''.join('G' if t == 'linear_attention' else 'A' for t in cfg.layer_types)}, "
          f"rope_parameters {cfg.rope_parameters}, attn {cfg._attn_implementation} (flash forced)")

    # architecture check on a throw-away instance
    with torch.device("cuda"):
        probe = hf_mod.OlmoHybridForCausalLM(cfg)
    n_params = sum(p.numel() for p in probe.parameters())
    gdn = next(layer.linear_attn for layer in probe.model.layers if hasattr(layer, "linear_attn"))
    print(f"parameters: {n_params:,}")
    print(describe_gdn(gdn))
    assert probe.model.rotary_emb is None or m.get("pos_encoding", "none").strip() != "none", "NoPE not taken"
    known = HYSIM_INFO.get(os.path.basename(args.config))
    if known:
        assert n_params == known["params"], f"{n_params} != hysim info's {known['params']}"
        print(f"parameter count equals hysim info's total ({known['params']:,})")
    del probe, gdn

    peak = bf16_gemm_peak_tflops()
    print(f"{stamp()} bf16 GEMM peak (torch.matmul 8192^3, this run): {peak:.1f} TFLOP/s")
    fpt = known["flops_per_token"] if known and known["seq"] == T else None
    if ours:
        print(f"ours (bench_gpu_model): {ours[0]:.0f} tokens/s, step {ours[1]:.1f} ms, MFU {100 * ours[2]:.1f}%, "
              f"peak {ours[3]:.2f} GiB" + ("  (ours did not fit)" if ours[0] == 0 else ""))

    def report(r):
        mfu = f"{100 * fpt * r['tok_s'] / (peak * 1e12):.1f}%" if fpt else "n/a"
        line = (f"{stamp()} PEER {r['recipe']}: batch {r['B']} x {T}: step {r['ms']:.1f} ms, {r['tok_s']:.0f} tokens/s, "
                f"MFU {mfu}, SDPA {r['sdpa']}, peak allocated {r['alloc']:.2f} GiB (reserved {r['reserved']:.2f}), "
                f"loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f} over {len(r['losses'])} steps "
                f"({'trains' if r['trains'] else 'DOES NOT TRAIN'}), {r['wall']:.0f} s wall")
        print(line, flush=True)
        print(f"  GDN chunk entry calls per step: {r['calls']}", flush=True)
        if ours and ours[0] > 0:
            same = "" if r["B"] == B else f" (peer at batch {r['B']}, ours at {B})"
            print(f"  ratio ours / peer tokens/s: {ours[0] / r['tok_s']:.2f}{same}", flush=True)
        if fla_note and not args.no_fla:
            print(f"  {fla_note}", flush=True)

    results = []
    for recipe in args.recipes.split(","):
        r = run_recipe(cfg, recipe.strip(), B, T, args, lr, wd, clip)
        if r:
            report(r)
            results.append(r)
    good = [r for r in results if r["trains"]] or results
    if good:
        best = max(good, key=lambda r: r["tok_s"])
        print(f"peer (faster recipe that trains): {best['recipe']}, batch {best['B']}, {best['tok_s']:.0f} tokens/s",
              flush=True)
        if args.compile:
            r = run_recipe(cfg, best["recipe"], best["B"], T, args, lr, wd, clip, compiled=True)
            if r:
                report(r)


if __name__ == "__main__":
    main()
