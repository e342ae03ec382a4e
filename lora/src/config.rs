//! PEFT's `adapter_config.json` for LoRA: read strictly (every key that changes what the
//! adapter computes is understood or refused by name), and the matching rules that say which
//! module paths an adapter wraps and with which rank and alpha.

use std::path::Path;

use regex::Regex;
use serde_json::{Map, Value};

use crate::matching::{ModuleSet, Ordered, Pattern, patterns, positive_rank};
use crate::{Error, Result};

/// Keys that describe where an adapter came from or how it was initialised: read by nothing
/// here, whatever their value (the weights in the file are what count).
const METADATA: &[&str] = &[
    "task_type",
    "auto_mapping",
    "peft_version",
    "base_model_name_or_path",
    "revision",
    "inference_mode",
    "init_lora_weights",
    "megatron_core",
    "runtime_config",
    "loftq_config",
    "eva_config",
    "corda_config",
    // Read by PEFT only with `use_qalora`, which is refused.
    "qalora_group_size",
];

/// Keys this crate understands.
const UNDERSTOOD: &[&str] = &[
    "peft_type",
    "r",
    "lora_alpha",
    "lora_dropout",
    "use_rslora",
    "target_modules",
    "exclude_modules",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "bias",
    "modules_to_save",
    "fan_in_fan_out",
];

/// A LoRA adapter's configuration, as PEFT's `LoraConfig` writes it to `adapter_config.json`.
#[derive(Clone, Debug)]
pub struct LoraConfig {
    /// The rank of every wrapped module `rank_pattern` does not name.
    pub r: usize,
    /// The scale's numerator for every module `alpha_pattern` does not name.
    pub lora_alpha: f64,
    /// Dropout on the adapter's input, in training mode only.
    pub lora_dropout: f64,
    /// Scale `lora_alpha / sqrt(r)` (rank-stabilised LoRA) instead of `lora_alpha / r`.
    pub use_rslora: bool,
    /// Which modules are wrapped.
    pub target_modules: ModuleSet,
    /// Which modules are never wrapped, whatever `target_modules` says.
    pub exclude_modules: Option<ModuleSet>,
    /// Only modules in these layers are wrapped (list targets only, as in PEFT).
    pub layers_to_transform: Option<Vec<usize>>,
    /// The path component before the layer index (`"layers"`); `None`: any component.
    pub layers_pattern: Option<Vec<String>>,
    /// `layers_pattern` as PEFT matches it (`re.match`), one regex per pattern.
    layer_regexes: Vec<Regex>,
    /// Modules whose own weights the adapter replaces with full copies it carries (PEFT's
    /// `modules_to_save`), by the list rule.
    pub modules_to_save: Vec<String>,
    rank_pattern: Vec<Pattern>,
    alpha_pattern: Vec<Pattern>,
    /// The file as read, written back when the adapter is saved.
    pub(crate) json: Map<String, Value>,
}

impl LoraConfig {
    /// Reads `adapter_config.json` at `file`.
    pub fn from_file(file: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(file).map_err(|e| Error::io(file, e))?;
        Self::from_text(file, &text)
    }

    /// Reads a config from its text; `file` names it in errors.
    pub fn from_text(file: &Path, text: &str) -> Result<Self> {
        let json: Value = serde_json::from_str(text)
            .map_err(|e| Error::config(file, "", format!("not JSON: {e}")))?;
        let Value::Object(json) = json else {
            return Err(Error::config(file, "", "expected a JSON object"));
        };
        let ordered: Ordered = serde_json::from_str(text).map_err(|e| {
            Error::config(
                file,
                "rank_pattern",
                format!("expected objects of numbers: {e}"),
            )
        })?;
        for (key, value) in &json {
            let key = key.as_str();
            if METADATA.contains(&key) || UNDERSTOOD.contains(&key) {
                continue;
            }
            let unset = match value {
                Value::Null | Value::Bool(false) => true,
                Value::Array(a) => a.is_empty(),
                Value::Object(o) => o.is_empty(),
                _ => false,
            };
            if !unset {
                let what = match key {
                    "use_dora" => "DoRA is not supported".to_string(),
                    _ => format!("{value} is not supported (only LoRA's own keys are read)"),
                };
                return Err(Error::config(file, key, what));
            }
        }
        let get = |key: &str| json.get(key).filter(|v| !v.is_null());
        match get("peft_type").and_then(Value::as_str) {
            Some("LORA") | None => {}
            Some(other) => {
                return Err(Error::config(
                    file,
                    "peft_type",
                    format!("{other:?} is not LoRA (\"LORA\")"),
                ));
            }
        }
        let number = |key: &str, default: f64| -> Result<f64> {
            match get(key) {
                None => Ok(default),
                Some(v) => v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                    Error::config(file, key, format!("expected a number, found {v}"))
                }),
            }
        };
        let flag = |key: &str| -> Result<bool> {
            match get(key) {
                None => Ok(false),
                Some(v) => v.as_bool().ok_or_else(|| {
                    Error::config(file, key, format!("expected true or false, found {v}"))
                }),
            }
        };
        let r = positive_rank(file, "r", get("r").unwrap_or(&Value::from(8)))?;
        let lora_alpha = number("lora_alpha", 8.0)?;
        let lora_dropout = number("lora_dropout", 0.0)?;
        if !(0.0..1.0).contains(&lora_dropout) {
            return Err(Error::config(
                file,
                "lora_dropout",
                format!("{lora_dropout} is not a probability below 1"),
            ));
        }
        let use_rslora = flag("use_rslora")?;
        if flag("fan_in_fan_out")? {
            // PEFT resets it to false for `nn.Linear` targets, with a warning: so do we.
            tracing::warn!(
                "{}: fan_in_fan_out is true, but every target here is a linear layer: read as false, as PEFT does",
                file.display()
            );
        }
        match get("bias").map(|v| v.as_str()) {
            None | Some(Some("none")) => {}
            Some(other) => {
                return Err(Error::config(
                    file,
                    "bias",
                    format!(
                        "{} is not supported: only \"none\" (adapters without bias terms)",
                        other.map_or("a non-string".to_string(), |s| format!("{s:?}"))
                    ),
                ));
            }
        }
        let target_modules = ModuleSet::parse(
            file,
            "target_modules",
            get("target_modules").unwrap_or(&Value::Null),
        )?
        .ok_or_else(|| {
            Error::config(
                file,
                "target_modules",
                "missing: name the modules to wrap (PEFT writes them when it saves)",
            )
        })?;
        let exclude_modules = ModuleSet::parse(
            file,
            "exclude_modules",
            get("exclude_modules").unwrap_or(&Value::Null),
        )?;
        let layers_to_transform = match get("layers_to_transform") {
            None => None,
            Some(Value::Array(items)) if items.is_empty() => None,
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .map(|v| layer_index(file, v))
                    .collect::<Result<Vec<_>>>()?,
            ),
            Some(v) => Some(vec![layer_index(file, v)?]),
        };
        let layers_pattern = match get("layers_pattern") {
            Some(Value::String(s)) if !s.is_empty() => Some(vec![s.clone()]),
            Some(Value::String(_)) | None => None,
            Some(v) => Some(names(file, "layers_pattern", v)?).filter(|n| !n.is_empty()),
        };
        let modules_to_save = match get("modules_to_save") {
            Some(v) => names(file, "modules_to_save", v)?,
            None => Vec::new(),
        };
        let layer_regexes = match &layers_pattern {
            None => vec![r"^.*?\.[^.]*\.(\d+)\.".to_string()],
            Some(names) => names
                .iter()
                .map(|p| format!(r"^(?:.*?\.)?(?:{p})\.(\d+)\."))
                .collect(),
        }
        .iter()
        .map(|r| {
            Regex::new(r)
                .map_err(|e| Error::config(file, "layers_pattern", format!("invalid regex: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
        let rank_pattern = patterns(file, "rank_pattern", ordered.rank_pattern, true)?;
        let alpha_pattern = patterns(file, "alpha_pattern", ordered.alpha_pattern, false)?;
        Ok(Self {
            r,
            lora_alpha,
            lora_dropout,
            use_rslora,
            target_modules,
            exclude_modules,
            layers_to_transform,
            layers_pattern,
            layer_regexes,
            modules_to_save,
            rank_pattern,
            alpha_pattern,
            json,
        })
    }

    /// Whether the module at `path` is wrapped, by PEFT's rule: a whole-path match (regex or
    /// listed path) always; a match by last components only in `layers_to_transform`'s
    /// layers when that is set; never when `exclude_modules` names it.
    pub fn targets(&self, path: &str) -> bool {
        if let Some(exclude) = &self.exclude_modules
            && exclude.matches(path)
        {
            return false;
        }
        if self.target_modules.exact(path) {
            return true;
        }
        if !self.target_modules.by_suffix(path) {
            return false;
        }
        match &self.layers_to_transform {
            None => true,
            Some(layers) => self.layer_of(path).is_some_and(|l| layers.contains(&l)),
        }
    }

    /// The layer index in `path` PEFT reads (`check_target_module_exists`): the first number
    /// after `.{layers_pattern}.` (or at the start), or, with no pattern, the first number
    /// after any component but the first; it must be followed by another component.
    fn layer_of(&self, path: &str) -> Option<usize> {
        let index = |regex: &Regex| {
            regex
                .captures(path)
                .and_then(|c| c.get(1))
                .and_then(|m| m.as_str().parse().ok())
        };
        self.layer_regexes.iter().find_map(index)
    }

    /// Whether `path` is one of `modules_to_save` (the list rule).
    pub fn saves(&self, path: &str) -> bool {
        ModuleSet::Names(self.modules_to_save.clone()).matches(path)
    }

    /// The rank and alpha of the module at `path` (`rank_pattern`, `alpha_pattern`).
    pub fn rank_and_alpha(&self, path: &str) -> (usize, f64) {
        let find = |patterns: &[Pattern]| {
            patterns
                .iter()
                .find(|p| p.regex.is_match(path))
                .map(|p| p.value)
        };
        let r = find(&self.rank_pattern).map_or(self.r, |r| r as usize);
        (r, find(&self.alpha_pattern).unwrap_or(self.lora_alpha))
    }

    /// The scale the adapter's product is multiplied by at `path`: `alpha / r`, or
    /// `alpha / sqrt(r)` with `use_rslora`.
    pub fn scale(&self, path: &str) -> f64 {
        let (r, alpha) = self.rank_and_alpha(path);
        if self.use_rslora {
            alpha / (r as f64).sqrt()
        } else {
            alpha / r as f64
        }
    }
}

/// A list of names at `key`.
fn names(file: &Path, key: &str, value: &Value) -> Result<Vec<String>> {
    let Value::Array(items) = value else {
        return Err(Error::config(
            file,
            key,
            format!("expected a list of names, found {value}"),
        ));
    };
    items
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| Error::config(file, key, format!("expected names, found {v}")))
        })
        .collect()
}

fn layer_index(file: &Path, v: &Value) -> Result<usize> {
    v.as_u64()
        .and_then(|l| usize::try_from(l).ok())
        .ok_or_else(|| {
            Error::config(
                file,
                "layers_to_transform",
                format!("expected layer indices, found {v}"),
            )
        })
}
