//! Converter key patterns: literal dotted fragments with `*` for a module-list index, matched on
//! whole dotted components (see the module docs of `transform` for the rules).

use regex::Regex;

/// A compiled [`crate::WeightConverter`] source or target pattern.
#[derive(Clone, Debug)]
pub(crate) struct KeyPattern {
    /// As written.
    pub text: String,
    /// The fragment without anchors, split at each `*`.
    pieces: Vec<String>,
    regex: Regex,
}

/// Where a [`KeyPattern`] matched in a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PatternMatch {
    /// Text before the fragment (ends with a `.`, or is empty).
    pub prefix: String,
    /// Text after the fragment (starts with a `.`, or is empty).
    pub suffix: String,
    /// The indices the `*`s captured, left to right.
    pub captures: Vec<usize>,
}

impl KeyPattern {
    /// Parses `text`; the error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (start, rest) = match text.strip_prefix('^') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (end, body) = match rest.strip_suffix('$') {
            Some(body) => (true, body),
            None => (false, rest),
        };
        if body.is_empty() {
            return Err(format!("pattern {text:?} is empty"));
        }
        if let Some(c) = body.chars().find(|c| "\\()[]{}|+?^$".contains(*c)) {
            return Err(format!(
                "pattern {text:?} contains {c:?}: converter patterns are literal dotted names with `*` for a module index (use a WeightRenaming for regexes)"
            ));
        }
        if body.starts_with('.') || body.ends_with('.') || body.contains("..") {
            return Err(format!(
                "pattern {text:?} has an empty dotted component (patterns match whole components, so leave out leading and trailing dots)"
            ));
        }
        let pieces: Vec<String> = body.split('*').map(str::to_string).collect();
        let mut re = String::new();
        re.push_str(if start { "^" } else { r"(?:^|\.)" });
        re.push_str("(?P<body>");
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                re.push_str(r"(\d+)");
            }
            re.push_str(&regex::escape(piece));
        }
        re.push(')');
        re.push_str(if end { "$" } else { r"(?:\.|$)" });
        let regex = Regex::new(&re).map_err(|e| format!("pattern {text:?}: {e}"))?;
        Ok(Self {
            text: text.to_string(),
            pieces,
            regex,
        })
    }

    /// Number of `*`s.
    pub fn stars(&self) -> usize {
        self.pieces.len() - 1
    }

    /// The leftmost match in `key`, if any.
    pub fn find(&self, key: &str) -> Option<PatternMatch> {
        let caps = self.regex.captures(key)?;
        let body = caps.name("body")?;
        let mut captures = Vec::with_capacity(self.stars());
        for i in 0..self.stars() {
            // Capture groups: 0 whole, 1 body, 2.. the stars.
            let m = caps.get(i + 2)?;
            captures.push(m.as_str().parse().ok()?);
        }
        Some(PatternMatch {
            prefix: key[..body.start()].to_string(),
            suffix: key[body.end()..].to_string(),
            captures,
        })
    }

    /// The fragment with its `*`s replaced by `captures` (which must hold one index per star).
    pub fn fill(&self, captures: &[usize]) -> String {
        let mut out = String::new();
        for (i, piece) in self.pieces.iter().enumerate() {
            if i > 0 {
                match captures.get(i - 1) {
                    Some(c) => out.push_str(&c.to_string()),
                    None => out.push('*'),
                }
            }
            out.push_str(piece);
        }
        out
    }
}

/// Compares dotted names so that numeric components sort numerically (`layers.2` before
/// `layers.10`): the order saved files and reports list keys in.
pub(crate) fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let mut ai = a.split('.');
    let mut bi = b.split('.');
    loop {
        match (ai.next(), bi.next()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => {
                let ord = match (x.parse::<u64>(), y.parse::<u64>()) {
                    (Ok(p), Ok(q)) => p.cmp(&q).then_with(|| x.cmp(y)),
                    _ => x.cmp(y),
                };
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_whole_components_and_captures_indices() {
        let p = KeyPattern::parse("mlp.experts.*.gate_proj.weight").unwrap();
        let m = p
            .find("model.layers.3.mlp.experts.12.gate_proj.weight")
            .unwrap();
        assert_eq!(m.prefix, "model.layers.3.");
        assert_eq!(m.suffix, "");
        assert_eq!(m.captures, vec![12]);
        assert!(
            p.find("model.layers.3.mlp.experts.x.gate_proj.weight")
                .is_none()
        );

        let q = KeyPattern::parse("q_proj").unwrap();
        let m = q.find("model.layers.0.self_attn.q_proj.bias").unwrap();
        assert_eq!(
            (m.prefix.as_str(), m.suffix.as_str()),
            ("model.layers.0.self_attn.", ".bias")
        );
        assert!(
            q.find("model.layers.0.self_attn.lora_q_proj.bias")
                .is_none()
        );
        assert!(q.find("model.layers.0.self_attn.q_proj_x.bias").is_none());
        assert_eq!(p.fill(&[4]), "mlp.experts.4.gate_proj.weight");
    }

    #[test]
    fn anchors() {
        let p = KeyPattern::parse("^model.embed").unwrap();
        assert!(p.find("model.embed.weight").is_some());
        assert!(p.find("x.model.embed.weight").is_none());
        let p = KeyPattern::parse("weight$").unwrap();
        assert!(p.find("a.weight").is_some());
        assert!(p.find("a.weight.b").is_none());
    }

    #[test]
    fn rejects_regex_syntax_and_empty_components() {
        let e = KeyPattern::parse("q_proj|k_proj")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("contains '|'"), "{e}");
        let e = KeyPattern::parse(".q_proj").err().unwrap().to_string();
        assert!(e.contains("has an empty dotted component"), "{e}");
        let e = KeyPattern::parse("").err().unwrap().to_string();
        assert!(e.contains("is empty"), "{e}");
    }

    #[test]
    fn natural_order() {
        let mut v = vec!["a.10.b", "a.2.b", "a.1.c", "a.1.b", "a"];
        v.sort_by(|a, b| natural_cmp(a, b));
        assert_eq!(v, vec!["a", "a.1.b", "a.1.c", "a.2.b", "a.10.b"]);
    }
}
