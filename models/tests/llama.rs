//! The Llama family beyond parity: config handling and its errors, tied embeddings, both rope
//! key styles, bad inputs.

mod common;

use candle_core::{Device, Tensor};
use common::fixtures_dir;
use common::llama::*;
use patchwork_models::llama::LlamaForCausalLM;
use patchwork_models::{AutoModelForCausalLM, Error, GenerationConfig};

#[test]
fn bad_config_values_are_errors_naming_the_key_and_value() {
    let e = config_error(|c| c["model_type"] = "gpt9".into());
    assert!(e.contains("gpt9") && e.contains("llama"), "{e}");
    let e = config_error(|c| c["hidden_act"] = "swiglu_v3".into());
    assert!(e.contains("hidden_act") && e.contains("swiglu_v3"), "{e}");
    let e = config_error(|c| c["num_key_value_heads"] = 3.into());
    assert!(e.contains("num_key_value_heads") && e.contains('3'), "{e}");
    let e = config_error(|c| c["num_attention_heads"] = "4".into());
    assert!(
        e.contains("num_attention_heads") && e.contains("invalid type"),
        "{e}"
    );
    let e = config_error(|c| c["rope_scaling"]["rope_type"] = "longrope".into());
    assert!(
        e.contains("rope_scaling.rope_type") && e.contains("longrope"),
        "{e}"
    );
    let e = config_error(|c| c["eos_token_id"] = 9999.into());
    assert!(e.contains("eos_token_id") && e.contains("9999"), "{e}");
    let e = config_error(|c| {
        c.as_object_mut().unwrap().remove("model_type");
    });
    assert!(e.contains("model_type"), "{e}");
}

#[test]
fn loading_a_non_llama_folder_as_llama_is_an_error() {
    let err = LlamaForCausalLM::from_pretrained(fixtures_dir().join("qwen2-moe-tiny"), &options())
        .unwrap_err();
    assert!(err.to_string().contains("qwen2_moe"), "{err}");
}

#[test]
fn tied_embeddings_never_ask_for_lm_head() {
    let model = llama();
    assert!(model.config().tie_word_embeddings);
    let names: Vec<String> = model
        .weights()
        .params()
        .snapshot()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(!names.iter().any(|n| n.starts_with("lm_head")), "{names:?}");
    assert!(names.contains(&"model.embed_tokens.weight".to_string()));
    // 2 layers x 9 tensors, the embedding and the final norm: every checkpoint tensor, used.
    assert_eq!(names.len(), 20);
}

#[test]
fn both_rope_key_styles_load_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tiny_config();
    let scaling = config
        .as_object_mut()
        .unwrap()
        .remove("rope_scaling")
        .unwrap();
    let theta = config
        .as_object_mut()
        .unwrap()
        .remove("rope_theta")
        .unwrap();
    let mut params = scaling.as_object().unwrap().clone();
    params.insert("rope_theta".into(), theta);
    config["rope_parameters"] = params.into();
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    std::fs::copy(
        llama_dir().join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let newer = AutoModelForCausalLM::from_pretrained(dir.path(), &options()).unwrap();
    assert_eq!(newer.config().rope, llama().config().rope);
}

#[test]
fn bad_inputs_are_errors_naming_the_input() {
    let model = llama();
    let err = model
        .forward(&Tensor::new(&[[5u32, 300]], &Device::Cpu).unwrap(), None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TokenOutOfRange {
                token: 300,
                vocab_size: 256,
                row: 0,
                col: 1,
                ..
            }
        ),
        "{err}"
    );
    let err = model
        .forward(&Tensor::new(&[-1i64], &Device::Cpu).unwrap(), None)
        .unwrap_err();
    assert!(err.to_string().contains("input_ids"), "{err}");
    let err = model
        .forward(&Tensor::new(&[[1.5f32]], &Device::Cpu).unwrap(), None)
        .unwrap_err();
    assert!(err.to_string().contains("input_ids"), "{err}");
    let ids = Tensor::new(&[[5u32, 6, 7]], &Device::Cpu).unwrap();
    let err = model
        .forward(
            &ids,
            Some(&Tensor::new(&[[1u32, 1]], &Device::Cpu).unwrap()),
        )
        .unwrap_err();
    assert!(err.to_string().contains("attention_mask"), "{err}");
    let err = model
        .forward(
            &ids,
            Some(&Tensor::new(&[[1u32, 2, 1]], &Device::Cpu).unwrap()),
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("attention_mask") && err.to_string().contains('2'),
        "{err}"
    );
    let err = model
        .generate(&[vec![1, 2, 256]], &GenerationConfig::greedy(2))
        .unwrap_err();
    assert!(
        matches!(err, Error::TokenOutOfRange { token: 256, .. }),
        "{err}"
    );
    let err = model
        .generate(&[vec![]], &GenerationConfig::greedy(2))
        .unwrap_err();
    assert!(err.to_string().contains("prompt 0"), "{err}");
}
