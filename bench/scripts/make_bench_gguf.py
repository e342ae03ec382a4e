"""A GGUF file of a Llama or Qwen3-MoE safetensors checkpoint with no tokenizer (the bench
checkpoints the harness and `make_bench_checkpoint.py` write), for measuring GGUF loading (`patchwork bench FILE.gguf`: peak
RSS against the file size) and for llama.cpp's `llama-bench` on the same weights.

    python bench/scripts/make_bench_gguf.py CHECKPOINT_DIR OUT.gguf

Written with the `gguf` package's writer as llama.cpp's converter lays such a file out (Llama:
q/k rows permuted for its rope; Qwen3-MoE: q/k norms, the experts stacked per layer as
`ffn_{gate,up,down}_exps`; float32 tensors); the vocabulary is placeholder pieces (`<t123>`),
since these checkpoints have none. Quantize the result with llama.cpp's `llama-quantize`
(`llama-quantize OUT.gguf OUT-Q8_0.gguf Q8_0`). Not a reference: bench input only.
"""
import json
import os
import sys

import gguf
import numpy as np
from safetensors.numpy import load_file


def permute(w, heads):
    """llama.cpp's converter's q/k row order for its interleaved rope."""
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main(src, out):
    cfg = json.load(open(os.path.join(src, "config.json")))
    kind = cfg.get("model_type")
    if kind not in ("llama", "qwen3_moe"):
        sys.exit(f"{src}: model_type {kind!r}, this script writes llama and qwen3_moe files")
    moe = kind == "qwen3_moe"
    t = load_file(os.path.join(src, "model.safetensors"))
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    w = gguf.GGUFWriter(out, "qwen3moe" if moe else "llama")
    w.add_name(os.path.basename(os.path.normpath(src)))
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    if moe:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
        w.add_expert_count(cfg["num_experts"])
        w.add_expert_used_count(cfg["num_experts_per_tok"])
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    vocab = cfg["vocab_size"]
    w.add_tokenizer_model("llama")
    w.add_token_list([f"<t{i}>" for i in range(vocab)])
    w.add_token_scores([0.0] * vocab)
    w.add_token_types([gguf.TokenType.NORMAL] * vocab)
    w.add_bos_token_id(cfg.get("bos_token_id", 1))
    w.add_eos_token_id(cfg.get("eos_token_id", 2))
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "input_layernorm.weight": "attn_norm.weight",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "self_attn.q_proj.weight": "attn_q.weight",
        "self_attn.k_proj.weight": "attn_k.weight",
        "self_attn.v_proj.weight": "attn_v.weight",
        "self_attn.o_proj.weight": "attn_output.weight",
        "mlp.gate_proj.weight": "ffn_gate.weight",
        "mlp.up_proj.weight": "ffn_up.weight",
        "mlp.down_proj.weight": "ffn_down.weight",
    }
    if moe:
        per_layer.update({
            "self_attn.q_norm.weight": "attn_q_norm.weight",
            "self_attn.k_norm.weight": "attn_k_norm.weight",
            "mlp.gate.weight": "ffn_gate_inp.weight",
        })
    for l in range(cfg["num_hidden_layers"]):
        for hf, gg in per_layer.items():
            names[f"model.layers.{l}.{hf}"] = f"blk.{l}.{gg}"
        if moe:
            for part in ("gate", "up", "down"):
                stacked = np.stack([t[f"model.layers.{l}.mlp.experts.{e}.{part}_proj.weight"]
                                    for e in range(cfg["num_experts"])])
                w.add_tensor(f"blk.{l}.ffn_{part}_exps.weight", np.ascontiguousarray(stacked))
    for hf, gg in names.items():
        if hf not in t:
            continue
        a = t[hf].astype(np.float32)
        if gg.endswith("attn_q.weight") and not moe:
            a = permute(a, heads)
        elif gg.endswith("attn_k.weight") and not moe:
            a = permute(a, kv)
        w.add_tensor(gg, np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
