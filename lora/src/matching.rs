//! PEFT's matching rules: which module paths a `target_modules`/`exclude_modules` value
//! names, and which `rank_pattern`/`alpha_pattern` entry a path takes.

use std::path::Path;

use regex::Regex;
use serde_json::Value;

use crate::{Error, Result};

/// Which modules a list-or-regex key (`target_modules`, `exclude_modules`) names, with PEFT's
/// rule (`check_target_module_exists`): a string is a regex the whole path must match
/// (`re.fullmatch`); a list names modules by path or by last components (`path ==
/// name` or `path.endswith("." + name)`).
#[derive(Clone, Debug)]
pub enum ModuleSet {
    /// A regex over the whole module path.
    Regex(Regex),
    /// Module names: a whole path, or its last dot-separated components.
    Names(Vec<String>),
    /// PEFT's `"all-linear"`: every linear projection but the output head (and, as
    /// transformers builds MoE routers as parameters rather than `nn.Linear`, but routers).
    AllLinear,
}

impl ModuleSet {
    pub(crate) fn parse(file: &Path, key: &str, value: &Value) -> Result<Option<Self>> {
        match value {
            Value::Null => Ok(None),
            Value::String(s) if s == "all-linear" => Ok(Some(Self::AllLinear)),
            Value::String(s) => {
                let regex = Regex::new(&format!("^(?:{s})$"))
                    .map_err(|e| Error::config(file, key, format!("invalid regex {s:?}: {e}")))?;
                Ok(Some(Self::Regex(regex)))
            }
            Value::Array(items) => {
                let names = items
                    .iter()
                    .map(|v| {
                        v.as_str().map(str::to_string).ok_or_else(|| {
                            Error::config(file, key, format!("expected module names, found {v}"))
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Some(Self::Names(names)))
            }
            other => Err(Error::config(
                file,
                key,
                format!("expected a list of module names or one regex string, found {other}"),
            )),
        }
    }

    /// Whether `path` is named exactly (a whole path in a list, or a regex): layer filters
    /// do not apply to it.
    pub(crate) fn exact(&self, path: &str) -> bool {
        match self {
            Self::Regex(regex) => regex.is_match(path),
            Self::Names(names) => names.iter().any(|n| n == path),
            Self::AllLinear => false,
        }
    }

    /// Whether `path` is named by its last components (a list's suffix rule, `all-linear`).
    pub(crate) fn by_suffix(&self, path: &str) -> bool {
        let last = path.rsplit('.').next().unwrap_or(path);
        match self {
            Self::Regex(_) => false,
            Self::Names(names) => names.iter().any(|n| {
                path.len() > n.len() + 1
                    && path.ends_with(n.as_str())
                    && path.as_bytes()[path.len() - n.len() - 1] == b'.'
            }),
            Self::AllLinear => last != "lm_head" && !path.ends_with("mlp.gate"),
        }
    }

    pub(crate) fn matches(&self, path: &str) -> bool {
        self.exact(path) || self.by_suffix(path)
    }
}

/// One `rank_pattern` or `alpha_pattern` entry: PEFT's `get_pattern_key` matches a key `K`
/// against a module path as `re.match(r"(.*\.)?(K)$", path)`, the first key in the file's
/// order winning.
#[derive(Clone, Debug)]
pub(crate) struct Pattern {
    pub regex: Regex,
    pub value: f64,
}

/// `rank_pattern` and `alpha_pattern` as written: PEFT takes the first matching key in the
/// file's order, and serde_json's map is sorted, so the entries are read a second time, in
/// order.
#[derive(Default, serde::Deserialize)]
pub(crate) struct Ordered {
    #[serde(default)]
    pub rank_pattern: Option<Entries>,
    #[serde(default)]
    pub alpha_pattern: Option<Entries>,
}

/// A JSON object's entries in the order written.
pub(crate) struct Entries(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Entries {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    entries.push(entry);
                }
                Ok(Entries(entries))
            }
            fn visit_unit<E>(self) -> std::result::Result<Entries, E> {
                Ok(Entries(Vec::new()))
            }
        }
        d.deserialize_any(Visit)
    }
}

pub(crate) fn patterns(
    file: &Path,
    key: &str,
    entries: Option<Entries>,
    rank: bool,
) -> Result<Vec<Pattern>> {
    let Some(Entries(entries)) = entries else {
        return Ok(Vec::new());
    };
    entries
        .into_iter()
        .map(|(name, v)| {
            let what = format!("{key}.{name}");
            let regex = Regex::new(&format!(r"^(?:.*\.)?(?:{name})$"))
                .map_err(|e| Error::config(file, &what, format!("invalid regex: {e}")))?;
            let value = if rank {
                positive_rank(file, &what, &v)? as f64
            } else {
                v.as_f64().filter(|x| x.is_finite()).ok_or_else(|| {
                    Error::config(file, &what, format!("expected a number, found {v}"))
                })?
            };
            Ok(Pattern { regex, value })
        })
        .collect()
}

/// A regex matching one path component (`[^.]+`) that is none of `words`: how a path regex,
/// which has no negative lookahead, leaves out `lm_head` and `mlp.gate` for `"all-linear"`.
pub(crate) fn component_not_in(words: &[&str]) -> String {
    fn node(words: &[&[u8]], depth: usize, root: bool) -> String {
        let mut next: Vec<u8> = words.iter().filter_map(|w| w.get(depth).copied()).collect();
        next.sort_unstable();
        next.dedup();
        let ends_here = words.iter().any(|w| w.len() == depth);
        let mut alternatives = Vec::new();
        if !root && !ends_here {
            alternatives.push(String::new());
        }
        let escaped: String = next
            .iter()
            .map(|&c| regex::escape(&(c as char).to_string()))
            .collect();
        alternatives.push(format!("[^.{escaped}][^.]*"));
        for c in next {
            let rest: Vec<&[u8]> = words
                .iter()
                .copied()
                .filter(|w| w.get(depth) == Some(&c))
                .collect();
            alternatives.push(format!(
                "{}{}",
                regex::escape(&(c as char).to_string()),
                node(&rest, depth + 1, false)
            ));
        }
        format!("(?:{})", alternatives.join("|"))
    }
    let words: Vec<&[u8]> = words.iter().map(|w| w.as_bytes()).collect();
    node(&words, 0, true)
}

/// A positive integer rank at `key`.
pub(crate) fn positive_rank(file: &Path, key: &str, v: &Value) -> Result<usize> {
    v.as_u64()
        .filter(|&r| r > 0)
        .and_then(|r| usize::try_from(r).ok())
        .ok_or_else(|| {
            Error::config(
                file,
                key,
                format!("expected a positive integer rank, found {v}"),
            )
        })
}
