//! A quantization topology: which format each projection and expert bank is stored in, chosen
//! by module path (first matching rule, else the default), with llama.cpp's fallbacks when a
//! weight's rows do not fit the format asked for.

use std::fmt;

use regex::Regex;

use crate::{Error, Format, Result};

/// An ordered list of (module-path regex, format or float) rules with a default: the first
/// rule whose regex matches a weight's path (`re.search` semantics: anywhere in the path)
/// decides its format, else the default. A format that does not fit the weight's rows falls
/// back as llama.cpp's quantizer does ([`Format::fitted`]), never an error.
///
/// Paths are a projection's module path (`model.layers.3.self_attn.q_proj`, `lm_head`) and an
/// expert bank's tensors (`model.layers.3.mlp.experts.gate_up_proj`, `...down_proj`). After
/// the user's rules come two of llama.cpp's: routers (`mlp.gate`) and the shared expert's
/// gate stay float.
///
/// ```
/// use patchwork_quant::{Format, Topology};
/// // --quantize q4_k --quantize-rule 'lm_head=q8_0' --quantize-rule 'layers\.0\.=none'
/// let topology = Topology::new(Some(Format::Q4K))
///     .with_rule("lm_head", Some(Format::Q8_0))?
///     .with_rule(r"layers\.0\.", None)?;
/// assert_eq!(topology.choose("lm_head", 512).format, Some(Format::Q8_0));
/// assert_eq!(topology.choose("model.layers.0.mlp.down_proj", 512).format, None);
/// // 320 inputs do not fit Q4_K's 256-weight blocks: Q5_0, as llama.cpp falls back.
/// assert_eq!(topology.choose("model.layers.1.mlp.up_proj", 320).format, Some(Format::Q5_0));
/// # Ok::<(), patchwork_quant::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Topology {
    default: Option<Format>,
    rules: Vec<Rule>,
}

#[derive(Clone, Debug)]
struct Rule {
    regex: Regex,
    format: Option<Format>,
    builtin: bool,
}

/// What a topology decided for one weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The format it is stored in; `None`: float, as the checkpoint has it.
    pub format: Option<Format>,
    /// Why: which rule or the default, and each fallback step.
    pub reason: String,
}

/// llama.cpp keeps routers and the shared expert's gate in float.
const BUILTIN: [&str; 2] = [r"\.mlp\.gate$", r"shared_expert_gate$"];

impl Topology {
    /// A topology storing every weight no rule names in `default` (`None`: float).
    pub fn new(default: Option<Format>) -> Self {
        let rules = BUILTIN
            .iter()
            .filter_map(|r| Regex::new(r).ok())
            .map(|regex| Rule {
                regex,
                format: None,
                builtin: true,
            })
            .collect();
        Self { default, rules }
    }

    /// This topology with the rule `path regex -> format` (`None`: float) after the rules it
    /// has, before the built-in ones; an error names an invalid regex.
    pub fn with_rule(mut self, path: &str, format: Option<Format>) -> Result<Self> {
        let regex = Regex::new(path).map_err(|e| Error::Rule {
            rule: path.to_string(),
            message: format!("invalid regex: {e}"),
        })?;
        let at = self
            .rules
            .iter()
            .position(|r| r.builtin)
            .unwrap_or(self.rules.len());
        self.rules.insert(
            at,
            Rule {
                regex,
                format,
                builtin: false,
            },
        );
        Ok(self)
    }

    /// This topology with a rule written `REGEX=FORMAT` (`--quantize-rule`, `FORMAT` a
    /// [`Format`] name or `none`); the regex may itself contain `=`: the last one splits.
    pub fn with_rule_str(self, rule: &str) -> Result<Self> {
        let (path, format) = rule.rsplit_once('=').ok_or_else(|| Error::Rule {
            rule: rule.to_string(),
            message: "expected REGEX=FORMAT (e.g. 'lm_head=q8_0', 'layers\\.0\\.=none')".into(),
        })?;
        let format = parse_format(format).map_err(|message| Error::Rule {
            rule: rule.to_string(),
            message,
        })?;
        if path.is_empty() {
            return Err(Error::Rule {
                rule: rule.to_string(),
                message: "the path regex is empty (it would match every path: use the default format instead)".into(),
            });
        }
        self.with_rule(path, format)
    }

    /// The default format (`None`: float).
    pub fn default_format(&self) -> Option<Format> {
        self.default
    }

    /// The format the weight at `path` with rows of `cols` weights is stored in, and why.
    pub fn choose(&self, path: &str, cols: usize) -> Choice {
        let (asked, by) = match self.rules.iter().find(|r| r.regex.is_match(path)) {
            Some(r) => (
                r.format,
                if r.builtin {
                    format!("built-in rule /{}/", r.regex.as_str())
                } else {
                    format!("rule /{}/", r.regex.as_str())
                },
            ),
            None => (self.default, "default".to_string()),
        };
        let Some(asked) = asked else {
            return Choice {
                format: None,
                reason: format!("float ({by})"),
            };
        };
        match asked.fitted(cols) {
            Some((format, steps)) if steps.is_empty() => Choice {
                format: Some(format),
                reason: format!("{format} ({by})"),
            },
            Some((format, steps)) => Choice {
                format: Some(format),
                reason: format!("{format} ({by} asked {asked}; {})", steps.join("; ")),
            },
            None => Choice {
                format: None,
                reason: format!("float ({by} asked {asked}; rows of {cols} fit no format)"),
            },
        }
    }

    /// A short label for reports (`q4_k, 2 rules`).
    pub fn label(&self) -> String {
        let user = self.rules.iter().filter(|r| !r.builtin).count();
        let default = self.default.map_or("float".to_string(), |f| f.to_string());
        match user {
            0 => default,
            1 => format!("{default}, 1 rule"),
            n => format!("{default}, {n} rules"),
        }
    }
}

/// A format name, or `none`/`float` for float weights.
pub fn parse_format(name: &str) -> std::result::Result<Option<Format>, String> {
    match name.trim().to_ascii_lowercase().as_str() {
        "none" | "float" | "f32" => Ok(None),
        other => Format::from_name(other).map(Some).ok_or_else(|| {
            let known: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
            format!(
                "unknown format {other:?} (known: {}, none)",
                known.join(", ")
            )
        }),
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in &self.rules {
            let format = r.format.map_or("float".to_string(), |f| f.to_string());
            let kind = if r.builtin { " (built-in)" } else { "" };
            writeln!(f, "/{}/ -> {format}{kind}", r.regex.as_str())?;
        }
        let default = self.default.map_or("float".to_string(), |f| f.to_string());
        writeln!(f, "default -> {default}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_rule_wins_then_builtins_then_the_default() {
        let t = Topology::new(Some(Format::Q8_0))
            .with_rule_str("down_proj=q4_k")
            .unwrap()
            .with_rule_str("layers\\.1\\.=none")
            .unwrap();
        // The first matching user rule wins, even where a later one matches too.
        assert_eq!(
            t.choose("model.layers.1.mlp.down_proj", 512).format,
            Some(Format::Q4K)
        );
        assert_eq!(t.choose("model.layers.1.mlp.up_proj", 512).format, None);
        assert_eq!(
            t.choose("model.layers.2.mlp.up_proj", 512).format,
            Some(Format::Q8_0)
        );
        // Routers stay float unless a user rule names them.
        assert_eq!(t.choose("model.layers.2.mlp.gate", 64).format, None);
        let named = Topology::new(None)
            .with_rule(r"mlp\.gate$", Some(Format::Q8_0))
            .unwrap();
        assert_eq!(
            named.choose("model.layers.2.mlp.gate", 64).format,
            Some(Format::Q8_0)
        );
        assert_eq!(
            t.choose("model.layers.2.mlp.shared_expert_gate", 64).reason,
            r"float (built-in rule /shared_expert_gate$/)"
        );
    }

    #[test]
    fn fallbacks_are_reported_with_their_reason() {
        let t = Topology::new(Some(Format::Q4K));
        let c = t.choose("model.layers.0.self_attn.o_proj", 144);
        assert_eq!(c.format, Some(Format::F16));
        assert_eq!(
            c.reason,
            "f16 (default asked q4_k; q4_k needs rows in blocks of 256, these have 144; q5_0 needs rows in blocks of 32, these have 144)"
        );
    }

    #[test]
    fn bad_rules_are_errors_naming_them() {
        let e = Topology::new(None)
            .with_rule_str("lm_head")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"lm_head\"") && e.contains("REGEX=FORMAT"),
            "{e}"
        );
        let e = Topology::new(None)
            .with_rule_str("lm_head=q4_k_m")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown format \"q4_k_m\"") && e.contains("q6_k"),
            "{e}"
        );
        let e = Topology::new(None)
            .with_rule_str("layers.(=q8_0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid regex"), "{e}");
        let e = Topology::new(None)
            .with_rule_str("=q8_0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty"), "{e}");
        // A regex holding '=' splits at the last one.
        let t = Topology::new(None).with_rule_str("a=b=q8_0").unwrap();
        assert_eq!(t.choose("xa=by", 32).format, Some(Format::Q8_0));
    }
}
