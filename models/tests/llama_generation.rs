//! The Llama family beyond parity: the KV cache path, padded batches, generation controls,
//! seeded random models, typed configs, half precision, biases.

mod common;

use candle_core::{DType, Device, Tensor};
use common::llama::*;
use common::{check_close, ids};
use patchwork_models::llama::{LlamaConfig, LlamaForCausalLM};
use patchwork_models::{
    AutoModelForCausalLM, Error, ForwardOptions, GenerationConfig, LogitsMode, Sampling,
};

#[test]
fn cached_decoding_matches_a_full_forward() {
    let model = llama();
    let r = reference();
    let input_ids = r["input_ids"].clone();
    let full = model.forward(&input_ids, None).unwrap();
    let (batch, seq) = input_ids.dims2().unwrap();
    // Prefill 5 tokens, then one token at a time through the cache.
    let mut cache = model.new_cache(batch, seq).unwrap();
    let prefill = 5;
    let opts = ForwardOptions::default();
    let mut steps = vec![
        model
            .forward_with(
                &input_ids.narrow(1, 0, prefill).unwrap(),
                None,
                Some(&mut cache),
                &opts,
            )
            .unwrap()
            .logits
            .unwrap(),
    ];
    for t in prefill..seq {
        let out = model
            .forward_with(
                &input_ids.narrow(1, t, 1).unwrap(),
                None,
                Some(&mut cache),
                &opts,
            )
            .unwrap();
        steps.push(out.logits.unwrap());
    }
    assert_eq!(cache.len(), seq);
    let cached = Tensor::cat(&steps, 1).unwrap();
    check_close("cached logits", &cached, &full, None).unwrap();
    // A full cache refuses more tokens.
    let err = model
        .forward_with(
            &input_ids.narrow(1, 0, 1).unwrap(),
            None,
            Some(&mut cache),
            &opts,
        )
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::CacheFull {
                capacity: 12,
                used: 12,
                adding: 1
            }
        ),
        "{err}"
    );
}

#[test]
fn last_position_logits_are_the_last_row_of_all_logits() {
    let model = llama();
    let input_ids = reference()["input_ids"].clone();
    let all = model.forward(&input_ids, None).unwrap();
    let opts = ForwardOptions {
        logits: LogitsMode::Last,
        ..ForwardOptions::default()
    };
    let last = model
        .forward_with(&input_ids, None, None, &opts)
        .unwrap()
        .logits
        .unwrap();
    assert_eq!(last.dims(), &[2, 1, 256]);
    check_close("last logits", &last, &all.narrow(1, 11, 1).unwrap(), None).unwrap();
}

#[test]
fn right_padding_leaves_real_tokens_unchanged() {
    let model = llama();
    let r = reference();
    let row = r["input_ids"].narrow(0, 0, 1).unwrap();
    let alone = model.forward(&row.narrow(1, 0, 8).unwrap(), None).unwrap();
    let padded = Tensor::cat(
        &[
            row.narrow(1, 0, 8).unwrap(),
            Tensor::zeros((1, 4), DType::I64, &Device::Cpu).unwrap(),
        ],
        1,
    )
    .unwrap();
    let mask = Tensor::new(&[[1i64, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]], &Device::Cpu).unwrap();
    let out = model.forward(&padded, Some(&mask)).unwrap();
    check_close("right padded", &out.narrow(1, 0, 8).unwrap(), &alone, None).unwrap();
}

#[test]
fn a_padded_batch_generates_what_each_prompt_generates_alone() {
    let model = llama();
    let prompts = vec![
        vec![66, 221, 47, 234, 117, 102, 13, 226],
        vec![17, 99, 3],
        vec![200],
    ];
    let config = GenerationConfig {
        ignore_eos: true,
        output_logits: true,
        ..GenerationConfig::greedy(6)
    };
    let batch = model.generate(&prompts, &config).unwrap();
    for (i, prompt) in prompts.iter().enumerate() {
        let alone = model
            .generate(std::slice::from_ref(prompt), &config)
            .unwrap();
        assert_eq!(batch.sequences[i], alone.sequences[0], "row {i}");
        for (step, (b, a)) in batch.logits.iter().zip(&alone.logits).enumerate() {
            check_close(
                &format!("row {i} step {step}"),
                &b.narrow(0, i, 1).unwrap(),
                a,
                None,
            )
            .unwrap();
        }
    }
}

#[test]
fn generation_stops_at_eos_unless_ignored_and_streams_every_token() {
    let model = llama();
    let prompt = vec![66, 221, 47, 234, 117, 102, 13, 226];
    // Greedy decoding of this prompt emits 96 first: make it the end-of-sequence token.
    let config = GenerationConfig {
        eos_token_ids: Some(vec![96]),
        ..GenerationConfig::greedy(5)
    };
    let mut streamed = Vec::new();
    let out = model
        .generate_with(std::slice::from_ref(&prompt), &config, |row, t| {
            streamed.push((row, t))
        })
        .unwrap();
    assert_eq!(out.new_tokens[0], vec![96]);
    assert_eq!(streamed, vec![(0, 96)]);
    let out = model
        .generate(
            std::slice::from_ref(&prompt),
            &GenerationConfig {
                ignore_eos: true,
                ..config.clone()
            },
        )
        .unwrap();
    assert_eq!(out.new_tokens[0].len(), 5);
    // min_new_tokens suppresses eos: the first tokens are not 96 then.
    let out = model
        .generate(
            std::slice::from_ref(&prompt),
            &GenerationConfig {
                min_new_tokens: 2,
                ..config
            },
        )
        .unwrap();
    assert!(
        out.new_tokens[0].len() >= 3 && out.new_tokens[0][..2].iter().all(|&t| t != 96),
        "{:?}",
        out.new_tokens
    );
}

#[test]
fn sampling_is_reproducible_with_a_seed() {
    let model = llama();
    let sample = |seed| {
        let config = GenerationConfig {
            sampling: Sampling::Sample {
                temperature: 1.5,
                top_k: Some(50),
                top_p: Some(0.95),
                seed,
            },
            ignore_eos: true,
            ..GenerationConfig::greedy(12)
        };
        model
            .generate(&[vec![5, 6, 7]], &config)
            .unwrap()
            .new_tokens[0]
            .clone()
    };
    assert_eq!(sample(1), sample(1));
    assert_ne!(sample(1), sample(2));
}

#[test]
fn from_config_is_seeded() {
    let config = tiny_config();
    let logits = |seed| {
        let model = AutoModelForCausalLM::from_config(&config, &options().with_seed(seed)).unwrap();
        model
            .forward(&Tensor::new(&[[5u32, 6, 7]], &Device::Cpu).unwrap(), None)
            .unwrap()
    };
    let (a, b, c) = (logits(3), logits(3), logits(4));
    assert_eq!(
        ids(&(a.clone() * 1e6).unwrap().round().unwrap()),
        ids(&(b * 1e6).unwrap().round().unwrap())
    );
    assert!(check_close("different seeds", &c, &a, None).is_err());
}

#[test]
fn a_typed_config_builds_the_same_model_as_its_json() {
    let typed = LlamaConfig::from_json(&tiny_config(), "config.json").unwrap();
    let a = LlamaForCausalLM::from_config(&typed, &options().with_seed(9)).unwrap();
    let b = AutoModelForCausalLM::from_config(&tiny_config(), &options().with_seed(9)).unwrap();
    let x = Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap();
    check_close(
        "typed vs json",
        &a.forward(&x, None).unwrap(),
        &b.forward(&x, None).unwrap(),
        None,
    )
    .unwrap();
    assert_eq!(a.num_parameters(), b.num_parameters());
}

#[test]
fn half_precision_compute_runs() {
    let model =
        AutoModelForCausalLM::from_pretrained(llama_dir(), &options().with_dtype(DType::BF16))
            .unwrap();
    let logits = model.forward(&reference()["input_ids"], None).unwrap();
    assert_eq!(logits.dtype(), DType::F32);
    let reference = reference()["logits"].clone();
    // bf16 keeps ~3 significant digits: the argmax of most positions survives.
    let ours = ids(&logits.argmax(2).unwrap());
    let theirs = ids(&reference.argmax(2).unwrap());
    let same = ours.iter().zip(&theirs).filter(|(a, b)| a == b).count();
    assert!(
        same * 10 >= ours.len() * 8,
        "{same} of {} argmax positions agree",
        ours.len()
    );
}

#[test]
fn attention_and_mlp_biases_are_loaded_when_configured() {
    let mut config = tiny_config();
    config["attention_bias"] = true.into();
    config["mlp_bias"] = true.into();
    config["head_dim"] = serde_json::Value::Null;
    let model = AutoModelForCausalLM::from_config(&config, &options()).unwrap();
    assert_eq!(
        model.config().head_dim,
        16,
        "derived from hidden_size / num_attention_heads"
    );
    let names: Vec<String> = model
        .weights()
        .params()
        .snapshot()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for p in [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ] {
        assert!(
            names.contains(&format!("model.layers.1.{p}.bias")),
            "{p}: {names:?}"
        );
    }
    let logits = model
        .forward(&Tensor::new(&[[1u32, 2, 3]], &Device::Cpu).unwrap(), None)
        .unwrap();
    assert_eq!(logits.dims(), &[1, 3, 256]);
}
