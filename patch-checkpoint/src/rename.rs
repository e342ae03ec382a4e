//! [`WeightRenaming`] compiled: the forward regex, and the reverse derived from it.
//!
//! The reverse is built from the pattern's syntax tree: the pattern must be a sequence of
//! literals, capture groups (whatever is inside) and `^`/`$` anchors (an unescaped `.` outside
//! a group is read as a literal dot). The reverse regex is the replacement with each `$k`
//! turned back into group `k`'s sub-pattern, anchored like the forward one; the reverse
//! replacement is the pattern with each group turned into a reference. A reversed name is kept
//! only if the forward renaming maps it back, so the reverse can never invent a key that
//! would not load as the name it came from.

use std::borrow::Cow;

use regex::Regex;
use regex_syntax::ast::{self, AssertionKind, Ast, GroupKind};

use crate::{Error, Result, WeightRenaming};

/// A renaming ready to apply in both directions.
#[derive(Clone, Debug)]
pub(crate) struct CompiledRenaming {
    pub spec: WeightRenaming,
    regex: Regex,
    /// (reverse regex, reverse replacement), or why the renaming has no reverse.
    reverse: std::result::Result<(Regex, String), String>,
}

impl CompiledRenaming {
    /// Compiles `spec`; an invalid regex is an error, an irreversible one is only an error
    /// when a reverse is asked for.
    pub fn new(spec: &WeightRenaming) -> Result<Self> {
        let regex = Regex::new(&spec.pattern).map_err(|e| Error::Transform {
            transform: crate::Transform::Renaming(spec.clone()).to_string(),
            message: format!("invalid regex: {e}"),
        })?;
        let reverse = build_reverse(&spec.pattern, &spec.replacement);
        Ok(Self {
            spec: spec.clone(),
            regex,
            reverse,
        })
    }

    /// The key after this renaming.
    pub fn forward<'a>(&self, key: &'a str) -> Cow<'a, str> {
        self.regex.replace_all(key, self.spec.replacement.as_str())
    }

    /// The key that this renaming maps to `name`: the reversed name if the forward renaming
    /// maps it back to `name`, else `name` itself if the renaming leaves it unchanged, else an
    /// error (no key loads as `name` through this renaming).
    pub fn reverse(&self, name: &str) -> std::result::Result<String, String> {
        if let Ok((re, replacement)) = &self.reverse {
            let candidate = re.replace_all(name, replacement.as_str());
            if candidate != name && self.forward(&candidate) == name {
                return Ok(candidate.into_owned());
            }
        }
        if self.forward(name) == name {
            return Ok(name.to_string());
        }
        Err(match &self.reverse {
            Err(why) => format!(
                "{} cannot be reversed ({why}), and it renames {name:?}",
                self.describe()
            ),
            Ok(_) => format!(
                "no key renames to {name:?} through {}, and {name:?} itself would be renamed on load",
                self.describe()
            ),
        })
    }

    /// `WeightRenaming("a" -> "b")`.
    pub fn describe(&self) -> String {
        crate::Transform::Renaming(self.spec.clone()).to_string()
    }
}

/// One piece of a regex-crate replacement string.
enum Piece {
    Literal(String),
    Group(GroupRef),
}

#[derive(Clone, PartialEq, Eq)]
enum GroupRef {
    Index(u32),
    Name(String),
}

/// Splits a replacement string as the regex crate reads it: `$$` is a dollar, `${name}` and
/// `$name` (longest run of `[_0-9A-Za-z]`) are group references (numeric names are indices).
fn parse_replacement(rep: &str) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let bytes = rep.as_bytes();
    let mut i = 0;
    while i < rep.len() {
        if bytes[i] != b'$' {
            let c = rep[i..].chars().next().unwrap_or('\0');
            lit.push(c);
            i += c.len_utf8();
            continue;
        }
        if bytes.get(i + 1) == Some(&b'$') {
            lit.push('$');
            i += 2;
            continue;
        }
        let (name, next) = if bytes.get(i + 1) == Some(&b'{') {
            match rep[i + 2..].find('}') {
                Some(end) => (&rep[i + 2..i + 2 + end], i + 3 + end),
                None => ("", i + 1),
            }
        } else {
            let len = rep[i + 1..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
            (&rep[i + 1..i + 1 + len], i + 1 + len)
        };
        if name.is_empty() {
            lit.push('$');
            i += 1;
            continue;
        }
        if !lit.is_empty() {
            out.push(Piece::Literal(std::mem::take(&mut lit)));
        }
        out.push(Piece::Group(match name.parse::<u32>() {
            Ok(n) => GroupRef::Index(n),
            Err(_) => GroupRef::Name(name.to_string()),
        }));
        i = next;
    }
    if !lit.is_empty() {
        out.push(Piece::Literal(lit));
    }
    out
}

/// The reverse (regex, replacement) of renaming `pattern` -> `replacement`.
fn build_reverse(pattern: &str, replacement: &str) -> std::result::Result<(Regex, String), String> {
    let parsed = ast::parse::Parser::new()
        .parse(pattern)
        .map_err(|e| format!("pattern does not parse: {e}"))?;
    let items: Vec<&Ast> = match &parsed {
        Ast::Concat(c) => c.asts.iter().collect(),
        other => vec![other],
    };
    let mut anchor_start = false;
    let mut anchor_end = false;
    // The pattern as a sequence: literal text or a capture group (ref, sub-pattern text).
    let mut seq: Vec<std::result::Result<String, (GroupRef, String)>> = Vec::new();
    let n = items.len();
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Ast::Assertion(a)
                if i == 0
                    && matches!(a.kind, AssertionKind::StartLine | AssertionKind::StartText) =>
            {
                anchor_start = true
            }
            Ast::Assertion(a)
                if i + 1 == n
                    && matches!(a.kind, AssertionKind::EndLine | AssertionKind::EndText) =>
            {
                anchor_end = true
            }
            Ast::Literal(l) => push_lit(&mut seq, l.c),
            Ast::Dot(_) => push_lit(&mut seq, '.'),
            Ast::Group(g) => {
                let inner = g.ast.span();
                let text = pattern[inner.start.offset..inner.end.offset].to_string();
                let r = match &g.kind {
                    GroupKind::CaptureIndex(k) => GroupRef::Index(*k),
                    GroupKind::CaptureName { name, .. } => GroupRef::Name(name.name.clone()),
                    GroupKind::NonCapturing(_) => {
                        return Err(
                            "a non-capturing group outside a capture group has no single inverse"
                                .into(),
                        );
                    }
                };
                seq.push(Err((r, text)));
            }
            Ast::Empty(_) => {}
            other => {
                let span = other.span();
                return Err(format!(
                    "{:?} outside a capture group has no single inverse; wrap the variable parts in capture groups",
                    &pattern[span.start.offset..span.end.offset]
                ));
            }
        }
    }
    // Reverse regex: the replacement, with references turned into their groups.
    let mut re = String::new();
    if anchor_start {
        re.push('^');
    }
    let mut position_of: Vec<(GroupRef, usize)> = Vec::new();
    for piece in parse_replacement(replacement) {
        match piece {
            Piece::Literal(s) => re.push_str(&regex::escape(&s)),
            Piece::Group(r) => {
                let text = seq
                    .iter()
                    .find_map(|p| match p {
                        Err((g, t)) if *g == r => Some(t.clone()),
                        _ => None,
                    })
                    .ok_or_else(|| {
                        "the replacement refers to a group the pattern does not have".to_string()
                    })?;
                let position = position_of.len() + 1;
                // Named, so that groups nested in `text` do not shift the numbering.
                re.push_str(&format!("(?P<__r{position}>{text})"));
                position_of.push((r, position));
            }
        }
    }
    if anchor_end {
        re.push('$');
    }
    // Reverse replacement: the pattern, with groups turned into references.
    let mut rep = String::new();
    for p in &seq {
        match p {
            Ok(lit) => rep.push_str(&lit.replace('$', "$$")),
            Err((g, _)) => {
                let pos = position_of
                    .iter()
                    .find(|(r, _)| r == g)
                    .map(|(_, p)| *p)
                    .ok_or_else(|| {
                        "a capture group of the pattern is dropped by the replacement".to_string()
                    })?;
                rep.push_str(&format!("${{__r{pos}}}"));
            }
        }
    }
    let regex =
        Regex::new(&re).map_err(|e| format!("reverse pattern {re:?} does not compile: {e}"))?;
    Ok((regex, rep))
}

fn push_lit(seq: &mut Vec<std::result::Result<String, (GroupRef, String)>>, c: char) {
    if let Some(Ok(s)) = seq.last_mut() {
        s.push(c);
    } else {
        seq.push(Ok(c.to_string()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(p: &str, rep: &str) -> CompiledRenaming {
        CompiledRenaming::new(&WeightRenaming::new(p, rep)).unwrap()
    }

    #[test]
    fn anchored_prefix_rename_round_trips() {
        let ren = r(r"^transformer\.h\.", "model.layers.");
        assert_eq!(
            ren.forward("transformer.h.3.attn.w"),
            "model.layers.3.attn.w"
        );
        assert_eq!(
            ren.reverse("model.layers.3.attn.w").unwrap(),
            "transformer.h.3.attn.w"
        );
        // Never renamed: kept.
        assert_eq!(ren.reverse("lm_head.weight").unwrap(), "lm_head.weight");
        assert_eq!(ren.reverse("x.model.layers.3").unwrap(), "x.model.layers.3");
    }

    #[test]
    fn anchored_rename_does_not_double_prefix() {
        // Checkpoint `encoder.layers.N` loads as `layers.N`; `vision.encoder.layers.N` is
        // untouched on load and must be untouched on save (the upstream bug made it
        // `vision.encoder.encoder.layers.N`).
        let ren = r(r"^encoder\.layers", "layers");
        assert_eq!(ren.forward("encoder.layers.0.w"), "layers.0.w");
        assert_eq!(
            ren.forward("vision.encoder.layers.0.w"),
            "vision.encoder.layers.0.w"
        );
        assert_eq!(ren.reverse("layers.0.w").unwrap(), "encoder.layers.0.w");
        assert_eq!(
            ren.reverse("vision.encoder.layers.0.w").unwrap(),
            "vision.encoder.layers.0.w"
        );
    }

    #[test]
    fn unanchored_rename_reverse_is_a_true_preimage() {
        let ren = r("encoder.layers", "layers");
        for name in [
            "layers.0.w",
            "vision.encoder.layers.0.w",
            "decoder.blocks.0.w",
        ] {
            let back = ren.reverse(name).unwrap();
            assert_eq!(ren.forward(&back), name, "{name} -> {back}");
        }
        assert_eq!(
            ren.reverse("decoder.blocks.0.w").unwrap(),
            "decoder.blocks.0.w"
        );
    }

    #[test]
    fn groups_and_named_groups() {
        let ren = r(
            r"^h\.(\d+)\.attn\.(?P<w>[a-z]+)$",
            "layers.$1.self_attn.${w}_proj",
        );
        assert_eq!(ren.forward("h.7.attn.q"), "layers.7.self_attn.q_proj");
        assert_eq!(
            ren.reverse("layers.7.self_attn.q_proj").unwrap(),
            "h.7.attn.q"
        );
        assert_eq!(ren.reverse("norm.weight").unwrap(), "norm.weight");
    }

    #[test]
    fn irreversible_pattern_errors_only_when_needed() {
        let ren = r(r"gamma\d?", "weight");
        // Untouched names are fine.
        assert_eq!(ren.reverse("a.bias").unwrap(), "a.bias");
        // A name the forward renaming would change cannot be traced back.
        assert_eq!(ren.reverse("ln.weight").unwrap(), "ln.weight");
        let err = ren.reverse("ln.gamma").unwrap_err();
        assert!(err.contains("cannot be reversed"), "{err}");
    }

    #[test]
    fn literal_dollar_in_replacement() {
        let ren = r("^a", "$$b");
        assert_eq!(ren.forward("a.x"), "$b.x");
        assert_eq!(ren.reverse("$b.x").unwrap(), "a.x");
    }
}
