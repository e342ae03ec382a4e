//! Llama and Qwen2-MoE on candle, built from patchable sites.
