//! The patch's path restriction: one regex per adapter selecting the module paths it acts at.

use crate::LoraConfig;
use crate::matching::{ModuleSet, component_not_in};

impl LoraConfig {
    /// A regex every path this adapter acts at matches (the patch's path restriction, so
    /// that the build report names the adapter's paths only): exact for targets and layer
    /// filters, wider where `exclude_modules` or an unusual layer path takes a path out
    /// (the build then keeps the base there).
    pub fn path_regex(&self) -> String {
        let escape = |names: &[String]| {
            names
                .iter()
                .map(|n| regex::escape(n))
                .collect::<Vec<_>>()
                .join("|")
        };
        let mut alternatives = Vec::new();
        match &self.target_modules {
            ModuleSet::Regex(regex) => alternatives.push(regex.as_str().to_string()),
            ModuleSet::AllLinear => {
                alternatives.push(format!(
                    "^(?:.*\\.)?{}$",
                    component_not_in(&["lm_head", "gate"])
                ));
                alternatives.push(format!(
                    "^(?:(?:.*\\.)?{}\\.)?gate$",
                    component_not_in(&["mlp"])
                ));
            }
            ModuleSet::Names(names) => {
                let names = escape(names);
                alternatives.push(format!("^(?:{names})$"));
                let layers = self.layers_to_transform.as_ref().map(|layers| {
                    layers
                        .iter()
                        .map(usize::to_string)
                        .collect::<Vec<_>>()
                        .join("|")
                });
                alternatives.push(match (layers, &self.layers_pattern) {
                    (None, _) => format!("\\.(?:{names})$"),
                    (Some(layers), None) => {
                        format!("^.*?\\.[^.]*\\.(?:{layers})\\.(?:.*\\.)?(?:{names})$")
                    }
                    (Some(layers), Some(patterns)) => format!(
                        "^(?:.*?\\.)?(?:{})\\.(?:{layers})\\.(?:.*\\.)?(?:{names})$",
                        patterns.join("|")
                    ),
                });
            }
        }
        if !self.modules_to_save.is_empty() {
            alternatives.push(format!("(?:^|\\.)(?:{})$", escape(&self.modules_to_save)));
        }
        alternatives
            .iter()
            .map(|a| format!("(?:{a})"))
            .collect::<Vec<_>>()
            .join("|")
    }
}
