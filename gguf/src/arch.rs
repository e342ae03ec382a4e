//! The architectures read, and each one's `config.json` made from the file's metadata (the
//! keys llama.cpp's converter writes: `{arch}.block_count`, `.embedding_length`, ...) and from
//! which tensors it holds (biases, a separate output head, which layers have experts).

use serde_json::{Map, Value, json};

use crate::file::GgufFile;
use patch_checkpoint::Result;

/// An architecture this crate reads, by its GGUF name (`general.architecture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// `llama`: q/k rows stored permuted for llama.cpp's rope.
    Llama,
    /// `qwen2`.
    Qwen2,
    /// `qwen2moe`.
    Qwen2Moe,
    /// `qwen3`.
    Qwen3,
    /// `qwen3moe`.
    Qwen3Moe,
}

impl Arch {
    /// Every architecture read, by GGUF name.
    pub const ALL: [(&'static str, Arch); 5] = [
        ("llama", Arch::Llama),
        ("qwen2", Arch::Qwen2),
        ("qwen2moe", Arch::Qwen2Moe),
        ("qwen3", Arch::Qwen3),
        ("qwen3moe", Arch::Qwen3Moe),
    ];

    /// The architecture of `file` (`general.architecture`); an error names an unsupported one
    /// and lists the supported.
    pub fn of(file: &GgufFile) -> Result<Arch> {
        let name = file
            .string("general.architecture")?
            .ok_or_else(|| file.error("metadata \"general.architecture\" is missing"))?;
        Self::ALL
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, a)| *a)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
                file.error(format!(
                    "GGUF architecture {name:?} is not supported (supported: {})",
                    known.join(", ")
                ))
            })
    }

    /// The GGUF name (the metadata keys' prefix).
    pub fn name(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, a)| *a == self)
            .map_or("", |(n, _)| n)
    }

    /// transformers' `model_type` and causal-LM class.
    pub fn model_type(self) -> (&'static str, &'static str) {
        match self {
            Arch::Llama => ("llama", "LlamaForCausalLM"),
            Arch::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
            Arch::Qwen2Moe => ("qwen2_moe", "Qwen2MoeForCausalLM"),
            Arch::Qwen3 => ("qwen3", "Qwen3ForCausalLM"),
            Arch::Qwen3Moe => ("qwen3_moe", "Qwen3MoeForCausalLM"),
        }
    }

    /// Whether llama.cpp's converter stored q/k rows permuted for its rope.
    pub fn permutes_qk(self) -> bool {
        self == Arch::Llama
    }

    fn moe(self) -> bool {
        matches!(self, Arch::Qwen2Moe | Arch::Qwen3Moe)
    }
}

/// The `config.json` transformers would have for `file`: model type and class, sizes, rope,
/// norms, experts, biases, tied head and special tokens, from the metadata and the tensors.
pub fn config(file: &GgufFile, arch: Arch) -> Result<Value> {
    let a = arch.name();
    let key = |k: &str| format!("{a}.{k}");
    let need = |k: &str| -> Result<u64> {
        file.uint(&key(k))?
            .ok_or_else(|| file.error(format!("metadata {:?} is missing", key(k))))
    };
    let (model_type, class) = arch.model_type();
    let mut c = Map::new();
    c.insert("model_type".into(), json!(model_type));
    c.insert("architectures".into(), json!([class]));
    let layers = need("block_count")?;
    let hidden = need("embedding_length")?;
    let heads = need("attention.head_count")?;
    c.insert("num_hidden_layers".into(), json!(layers));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert(
        "num_key_value_heads".into(),
        json!(file.uint(&key("attention.head_count_kv"))?.unwrap_or(heads)),
    );
    if let Some(d) = file.uint(&key("attention.key_length"))? {
        c.insert("head_dim".into(), json!(d));
    }
    if let Some(n) = file.uint(&key("feed_forward_length"))? {
        c.insert("intermediate_size".into(), json!(n));
    }
    if let Some(n) = file.uint(&key("context_length"))? {
        c.insert("max_position_embeddings".into(), json!(n));
    }
    if let Some(eps) = file.float(&key("attention.layer_norm_rms_epsilon"))? {
        // Stored as f32: the decimal transformers wrote (1e-6) comes back as the f32 nearest
        // to it; print that f32's shortest decimal, which is the original.
        c.insert("rms_norm_eps".into(), json!(shortest_f32(eps)));
    }
    if let Some(theta) = file.float(&key("rope.freq_base"))? {
        c.insert("rope_theta".into(), json!(shortest_f32(theta)));
    }
    if let Some(scaling) = rope_scaling(file, &key)? {
        c.insert("rope_scaling".into(), scaling);
    }
    let vocab = match file.uint(&key("vocab_size"))? {
        Some(v) => v,
        None => match file.array("tokenizer.ggml.tokens")? {
            Some(tokens) => tokens.len() as u64,
            None => file
                .tensor("token_embd.weight")
                .and_then(|t| t.dims.first().copied())
                .ok_or_else(|| file.error("no vocabulary size: neither metadata nor token_embd"))?
                as u64,
        },
    };
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("hidden_act".into(), json!("silu"));
    c.insert(
        "tie_word_embeddings".into(),
        json!(file.tensor("output.weight").is_none()),
    );
    let has = |suffix: &str| {
        file.tensors()
            .keys()
            .any(|n| n.starts_with("blk.") && n.ends_with(suffix))
    };
    match arch {
        Arch::Llama => {
            c.insert("attention_bias".into(), json!(has(".attn_q.bias")));
            c.insert("mlp_bias".into(), json!(has(".ffn_up.bias")));
        }
        Arch::Qwen3 | Arch::Qwen3Moe => {
            c.insert("attention_bias".into(), json!(has(".attn_q.bias")));
        }
        Arch::Qwen2Moe => {
            c.insert("qkv_bias".into(), json!(has(".attn_q.bias")));
        }
        Arch::Qwen2 => {}
    }
    if arch.moe() {
        c.insert("num_experts".into(), json!(need("expert_count")?));
        c.insert(
            "num_experts_per_tok".into(),
            json!(need("expert_used_count")?),
        );
        c.insert(
            "moe_intermediate_size".into(),
            json!(need("expert_feed_forward_length")?),
        );
        // Layers without an expert bank are dense (transformers' mlp_only_layers).
        let dense: Vec<u64> = (0..layers)
            .filter(|l| {
                file.tensor(&format!("blk.{l}.ffn_gate_exps.weight"))
                    .is_none()
            })
            .collect();
        c.insert("mlp_only_layers".into(), json!(dense));
        c.insert("decoder_sparse_step".into(), json!(1));
        if arch == Arch::Qwen2Moe {
            let shared = file
                .uint(&key("expert_shared_feed_forward_length"))?
                .unwrap_or(0);
            c.insert("shared_expert_intermediate_size".into(), json!(shared));
            c.insert("norm_topk_prob".into(), json!(false));
        } else {
            // llama.cpp's Qwen3-MoE always renormalises the chosen experts' weights.
            let norm = file.boolean(&key("expert_weights_norm"))?.unwrap_or(true);
            c.insert("norm_topk_prob".into(), json!(norm));
        }
    }
    for (gguf, hf) in [
        ("tokenizer.ggml.bos_token_id", "bos_token_id"),
        ("tokenizer.ggml.eos_token_id", "eos_token_id"),
        ("tokenizer.ggml.padding_token_id", "pad_token_id"),
    ] {
        if let Some(id) = file.uint(gguf)? {
            c.insert(hf.into(), json!(id));
        }
    }
    c.insert("torch_dtype".into(), json!("float32"));
    Ok(Value::Object(c))
}

/// `rope_scaling` from `{arch}.rope.scaling.*`: linear and yarn as transformers names them.
fn rope_scaling(file: &GgufFile, key: &dyn Fn(&str) -> String) -> Result<Option<Value>> {
    let Some(kind) = file.string(&key("rope.scaling.type"))? else {
        return Ok(None);
    };
    if kind == "none" {
        return Ok(None);
    }
    let factor = file.float(&key("rope.scaling.factor"))?;
    let original = file.uint(&key("rope.scaling.original_context_length"))?;
    let mut s = Map::new();
    s.insert("rope_type".into(), json!(kind));
    if let Some(f) = factor {
        s.insert("factor".into(), json!(shortest_f32(f)));
    }
    if let Some(o) = original {
        s.insert("original_max_position_embeddings".into(), json!(o));
    }
    match kind {
        "linear" | "yarn" => Ok(Some(Value::Object(s))),
        other => Err(file.error(format!(
            "metadata {:?} is {other:?}: rope scaling types read are linear and yarn",
            key("rope.scaling.type")
        ))),
    }
}

/// The shortest decimal that reads back as the same f32, as f64 (what a float stored as f32
/// from a decimal in a config was).
fn shortest_f32(x: f64) -> f64 {
    let s = format!("{}", x as f32);
    s.parse().unwrap_or(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_metadata_reads_back_as_the_decimal_written() {
        assert_eq!(shortest_f32(1e-6f32 as f64), 1e-6);
        assert_eq!(shortest_f32(1e-5f32 as f64), 1e-5);
        assert_eq!(shortest_f32(500000.0), 500000.0);
    }
}
