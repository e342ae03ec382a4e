//! PEFT's matching rules on module paths, case by case (peft's `check_target_module_exists`
//! and `get_pattern_key`).

use std::path::Path;

use patchwork_lora::LoraConfig;

fn config(json: &str) -> LoraConfig {
    LoraConfig::from_text(Path::new("adapter_config.json"), json).expect("a valid config")
}

#[test]
fn a_list_names_modules_by_path_or_last_components() {
    let c = config(r#"{"target_modules": ["q_proj", "mlp.down_proj"], "r": 4}"#);
    assert!(c.targets("model.layers.0.self_attn.q_proj"));
    assert!(c.targets("q_proj"));
    assert!(c.targets("model.layers.1.mlp.down_proj"));
    assert!(!c.targets("model.layers.1.mlp.shared_expert.down_proj"));
    assert!(!c.targets("model.layers.0.self_attn.qq_proj"));
    assert!(!c.targets("model.layers.0.self_attn.k_proj"));
}

#[test]
fn a_string_is_a_regex_over_the_whole_path() {
    let c = config(r#"{"target_modules": ".*\\.layers\\.1\\.self_attn\\.(k|o)_proj"}"#);
    assert!(c.targets("model.layers.1.self_attn.k_proj"));
    assert!(!c.targets("model.layers.1.self_attn.q_proj"));
    assert!(!c.targets("model.layers.11.self_attn.k_proj"));
    // fullmatch: a match inside the path is not enough.
    let c = config(r#"{"target_modules": "k_proj"}"#);
    assert!(!c.targets("model.layers.1.self_attn.k_proj"));
}

#[test]
fn all_linear_leaves_out_the_head_and_routers() {
    let c = config(r#"{"target_modules": "all-linear"}"#);
    assert!(c.targets("model.layers.0.mlp.gate_proj"));
    assert!(c.targets("model.layers.0.mlp.shared_expert_gate"));
    assert!(!c.targets("lm_head"));
    assert!(!c.targets("model.layers.0.mlp.gate"));
}

#[test]
fn layers_to_transform_filters_list_matches_only() {
    let c = config(
        r#"{"target_modules": ["q_proj"], "layers_to_transform": [1, 3], "layers_pattern": "layers"}"#,
    );
    assert!(c.targets("model.layers.1.self_attn.q_proj"));
    assert!(c.targets("model.layers.3.self_attn.q_proj"));
    assert!(!c.targets("model.layers.2.self_attn.q_proj"));
    let c = config(r#"{"target_modules": ["q_proj"], "layers_to_transform": 2}"#);
    assert!(c.targets("model.layers.2.self_attn.q_proj"));
    assert!(!c.targets("model.layers.1.self_attn.q_proj"));
    let c = config(
        r#"{"target_modules": ["q_proj"], "layers_to_transform": [0], "layers_pattern": ["h"]}"#,
    );
    assert!(
        !c.targets("model.layers.0.self_attn.q_proj"),
        "the pattern names another component"
    );
}

#[test]
fn exclude_modules_wins() {
    let c = config(r#"{"target_modules": "all-linear", "exclude_modules": ["down_proj"]}"#);
    assert!(!c.targets("model.layers.0.mlp.down_proj"));
    assert!(c.targets("model.layers.0.mlp.up_proj"));
}

#[test]
fn rank_and_alpha_patterns_take_the_first_match_in_file_order() {
    let c = config(
        r#"{"target_modules": ["q_proj", "v_proj", "down_proj"], "r": 8, "lora_alpha": 16,
            "rank_pattern": {"model.layers.0.mlp.down_proj": 6, "down_proj": 2, "v_proj": 4},
            "alpha_pattern": {"q_proj": 3}}"#,
    );
    assert_eq!(c.rank_and_alpha("model.layers.0.mlp.down_proj"), (6, 16.0));
    assert_eq!(c.rank_and_alpha("model.layers.1.mlp.down_proj"), (2, 16.0));
    assert_eq!(
        c.rank_and_alpha("model.layers.1.self_attn.v_proj"),
        (4, 16.0)
    );
    assert_eq!(
        c.rank_and_alpha("model.layers.1.self_attn.q_proj"),
        (8, 3.0)
    );
    assert_eq!(c.scale("model.layers.1.self_attn.v_proj"), 4.0);
    let c =
        config(r#"{"target_modules": ["q_proj"], "r": 4, "lora_alpha": 8, "use_rslora": true}"#);
    assert_eq!(c.scale("q_proj"), 4.0);
    // The order as written, not sorted: "z" before "a" both matching.
    let c =
        config(r#"{"target_modules": ["q_proj"], "rank_pattern": {"z|q_proj": 3, "q_proj": 5}}"#);
    assert_eq!(c.rank_and_alpha("model.q_proj").0, 3);
}

#[test]
fn the_patch_path_regex_selects_exactly_the_targeted_paths() {
    let mut paths = vec!["lm_head".to_string(), "model.embed_tokens".to_string()];
    for l in 0..12 {
        for p in [
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
            "mlp.gate",
            "mlp.shared_expert.gate_proj",
            "mlp.shared_expert.down_proj",
            "mlp.shared_expert_gate",
        ] {
            paths.push(format!("model.layers.{l}.{p}"));
        }
    }
    for json in [
        r#"{"target_modules": ["q_proj", "v_proj"]}"#,
        r#"{"target_modules": "all-linear"}"#,
        r#"{"target_modules": ".*\\.layers\\.1\\.(self_attn\\.(k|o)_proj|mlp\\.down_proj)"}"#,
        r#"{"target_modules": ["q_proj", "down_proj", "model.layers.0.self_attn.v_proj"], "layers_to_transform": [1, 10], "layers_pattern": "layers"}"#,
        r#"{"target_modules": ["gate_proj", "gate"], "layers_to_transform": 3}"#,
        r#"{"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]}"#,
    ] {
        let c = config(json);
        let regex = regex::Regex::new(&c.path_regex()).unwrap();
        for path in &paths {
            assert_eq!(
                regex.is_match(path),
                c.targets(path) || c.saves(path),
                "{json} at {path}: /{}/",
                regex.as_str()
            );
        }
    }
}
