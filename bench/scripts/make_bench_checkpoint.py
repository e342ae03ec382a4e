"""A random float32 checkpoint in one of the bench shapes (the shapes `bench/benches/compare.rs`
writes: Llama and Qwen3-MoE at hidden 1024, 8 layers, vocabulary 32000), for the speed scripts
that need no Rust harness build (`vs_llama_cpp.sh`). Weights N(0, 0.02), norms 1, experts in
the published per-expert layout. Not a reference: bench input only.

    python bench/scripts/make_bench_checkpoint.py llama|qwen3_moe OUT_DIR
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

COMMON = {
    "vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2816,
    "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 4,
    "hidden_act": "silu", "max_position_embeddings": 2048, "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False, "initializer_range": 0.02,
    "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
}
CONFIGS = {
    "llama": dict(COMMON, model_type="llama", architectures=["LlamaForCausalLM"],
                  rope_theta=10000.0),
    # Qwen3-30B-A3B's structure at the bench size (as compare.rs's qwen3_moe shape).
    "qwen3_moe": dict(COMMON, model_type="qwen3_moe", architectures=["Qwen3MoeForCausalLM"],
                      head_dim=128, rope_theta=1000000.0, attention_bias=False,
                      use_sliding_window=False, sliding_window=None, max_window_layers=8,
                      decoder_sparse_step=1, mlp_only_layers=[], moe_intermediate_size=512,
                      num_experts_per_tok=4, num_experts=16, norm_topk_prob=True),
}


def main(kind, out):
    cfg = CONFIGS[kind]
    rng = np.random.default_rng(0)
    h, v, layers = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim", h // heads)

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)

    t = {"model.embed_tokens.weight": w(v, h), "model.norm.weight": np.ones(h, np.float32),
         "lm_head.weight": w(v, h)}
    for l in range(layers):
        p = f"model.layers.{l}."
        t[p + "input_layernorm.weight"] = np.ones(h, np.float32)
        t[p + "post_attention_layernorm.weight"] = np.ones(h, np.float32)
        t[p + "self_attn.q_proj.weight"] = w(heads * d, h)
        t[p + "self_attn.k_proj.weight"] = w(kv * d, h)
        t[p + "self_attn.v_proj.weight"] = w(kv * d, h)
        t[p + "self_attn.o_proj.weight"] = w(h, heads * d)
        if kind == "qwen3_moe":
            t[p + "self_attn.q_norm.weight"] = np.ones(d, np.float32)
            t[p + "self_attn.k_norm.weight"] = np.ones(d, np.float32)
            t[p + "mlp.gate.weight"] = w(cfg["num_experts"], h)
            i = cfg["moe_intermediate_size"]
            for e in range(cfg["num_experts"]):
                q = f"{p}mlp.experts.{e}."
                t[q + "gate_proj.weight"] = w(i, h)
                t[q + "up_proj.weight"] = w(i, h)
                t[q + "down_proj.weight"] = w(h, i)
        else:
            i = cfg["intermediate_size"]
            t[p + "mlp.gate_proj.weight"] = w(i, h)
            t[p + "mlp.up_proj.weight"] = w(i, h)
            t[p + "mlp.down_proj.weight"] = w(h, i)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    save_file(t, os.path.join(out, "model.safetensors"))
    print(f"wrote {out}: {sum(a.size for a in t.values()) / 1e6:.1f}M parameters")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
