//! Items as one line each: signatures printed from their tokens with fixed spacing, so a line
//! changes only when what it declares does.

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};
use quote::ToTokens;

/// One line of a snapshot: the public path it is about, the kind of declaration, the text.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    /// The public path (`patch_core::Builder::build`).
    pub path: String,
    /// `struct`, `fn`, `impl`, `field`, ...
    pub kind: &'static str,
    /// The declaration.
    pub text: String,
}

impl Entry {
    pub fn new(path: &str, kind: &'static str, text: String) -> Self {
        Self {
            path: path.to_string(),
            kind,
            text,
        }
    }

    /// The line as written in the snapshot: the path, the kind, the declaration.
    pub fn line(&self) -> String {
        format!("{} {} {}", self.path, self.kind, self.text.trim())
            .trim_end()
            .to_string()
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Atom {
    Word,
    Punct(char, bool),
    Open(char),
    Close(char),
}

/// `t`'s tokens with one spacing rule for every signature.
pub fn tokens(t: &impl ToTokens) -> String {
    let mut atoms: Vec<(Atom, String)> = Vec::new();
    flatten(strip_docs(t.to_token_stream()), &mut atoms);
    let mut out = String::new();
    let mut prev: Option<Atom> = None;
    let mut path_sep = false;
    for (atom, text) in atoms {
        if let Some(p) = prev
            && space_between(p, atom, path_sep)
        {
            out.push(' ');
        }
        // The second ':' of `::` takes no space after it.
        path_sep = matches!(
            (prev, atom),
            (Some(Atom::Punct(':', true)), Atom::Punct(':', _))
        );
        out.push_str(&text);
        prev = Some(atom);
    }
    out
}

fn flatten(ts: TokenStream, out: &mut Vec<(Atom, String)>) {
    for tt in ts {
        match tt {
            TokenTree::Group(g) => {
                let (open, close) = match g.delimiter() {
                    Delimiter::Parenthesis => ('(', ')'),
                    Delimiter::Brace => ('{', '}'),
                    Delimiter::Bracket => ('[', ']'),
                    Delimiter::None => {
                        flatten(g.stream(), out);
                        continue;
                    }
                };
                out.push((Atom::Open(open), open.to_string()));
                flatten(g.stream(), out);
                out.push((Atom::Close(close), close.to_string()));
            }
            TokenTree::Punct(p) => out.push((
                Atom::Punct(p.as_char(), p.spacing() == Spacing::Joint),
                p.as_char().to_string(),
            )),
            TokenTree::Ident(i) => out.push((Atom::Word, i.to_string())),
            TokenTree::Literal(l) => out.push((Atom::Word, l.to_string())),
        }
    }
}

fn space_between(prev: Atom, next: Atom, prev_is_path_sep: bool) -> bool {
    use Atom::*;
    if prev_is_path_sep {
        return false;
    }
    match (prev, next) {
        (Open('{'), _) | (_, Close('}')) | (_, Open('{')) => true,
        (Punct(_, true), _) => false,
        (Open(_), _) | (_, Close(_)) => false,
        (_, Punct(',' | ';' | '.' | ':', _)) => false,
        (Word | Punct('>', _) | Close(_), Punct('<', _)) => false,
        (Punct('>', _), Punct('>' | '(', _)) => false,
        (_, Punct('>', _)) => matches!(prev, Punct('-' | '=', _)),
        (Punct('<' | '&' | '*' | '#' | '!' | '?' | '$' | '.', _), _) => false,
        (Word | Punct('>', _), Open('(' | '[')) => false,
        (Word, Punct('!', _)) => false,
        _ => true,
    }
}

/// The attributes that are part of an item's contract, as written: deprecation,
/// `non_exhaustive`, the site and patch attributes, `cfg`, `repr`, `must_use`.
pub fn contract_attrs(attrs: &[syn::Attribute]) -> String {
    const KEPT: [&str; 7] = [
        "deprecated",
        "non_exhaustive",
        "patchable",
        "patch",
        "cfg",
        "repr",
        "must_use",
    ];
    let mut out = String::new();
    for a in attrs {
        if KEPT.iter().any(|k| a.path().is_ident(k)) {
            out.push_str(&tokens(a));
            out.push(' ');
        }
    }
    out
}

/// The traits `#[derive(..)]` implements.
pub fn derives(attrs: &[syn::Attribute]) -> Vec<String> {
    let mut out = Vec::new();
    for a in attrs.iter().filter(|a| a.path().is_ident("derive")) {
        let _ = a.parse_nested_meta(|m| {
            out.push(tokens(&m.path));
            Ok(())
        });
    }
    out
}

/// `<T: Bound, 'a>` (empty when there are none).
pub fn params(g: &syn::Generics) -> String {
    if g.params.is_empty() {
        String::new()
    } else {
        format!("<{}>", tokens(&g.params))
    }
}

/// ` where ...` (empty when there is none).
pub fn where_clause(g: &syn::Generics) -> String {
    g.where_clause
        .as_ref()
        .map(|w| format!(" {}", tokens(w)))
        .unwrap_or_default()
}

/// A function's signature without its name: `const unsafe <T>(args) -> Out`.
pub fn signature(sig: &syn::Signature) -> String {
    let mut head = String::new();
    for (present, word) in [
        (sig.constness.is_some(), "const "),
        (sig.asyncness.is_some(), "async "),
        (sig.unsafety.is_some(), "unsafe "),
    ] {
        if present {
            head.push_str(word);
        }
    }
    let inputs: Vec<String> = sig.inputs.iter().map(tokens).collect();
    let output = match &sig.output {
        syn::ReturnType::Default => String::new(),
        syn::ReturnType::Type(_, t) => format!(" -> {}", tokens(t)),
    };
    format!(
        "{head}{}({}){output}{}",
        params(&sig.generics),
        inputs.join(", "),
        where_clause(&sig.generics)
    )
}

/// The entries of one item declared at `path` (a struct's fields, an enum's variants, a
/// trait's items as their own lines).
pub fn item(path: &str, item: &syn::Item) -> Vec<Entry> {
    use syn::Item;
    let mut out = Vec::new();
    let attrs = contract_attrs(super::tree::attrs(item));
    match item {
        Item::Struct(s) => {
            let private = s.fields.iter().any(|f| !super::tree::is_pub(&f.vis));
            let shape = match &s.fields {
                syn::Fields::Named(_) => "",
                syn::Fields::Unnamed(_) => " (tuple)",
                syn::Fields::Unit => " (unit)",
            };
            out.push(Entry::new(
                path,
                "struct",
                format!(
                    "{attrs}{}{}{shape}{}",
                    params(&s.generics),
                    where_clause(&s.generics),
                    if private { " (has private fields)" } else { "" }
                ),
            ));
            for (i, f) in s.fields.iter().enumerate() {
                if !super::tree::is_pub(&f.vis) {
                    continue;
                }
                let name = f.ident.as_ref().map_or(i.to_string(), |n| n.to_string());
                let field = format!("{path}::{name}");
                let attrs = contract_attrs(&f.attrs);
                out.push(Entry::new(
                    &field,
                    "field",
                    format!("{attrs}{}", tokens(&f.ty)),
                ));
            }
        }
        Item::Enum(e) => {
            out.push(Entry::new(
                path,
                "enum",
                format!(
                    "{attrs}{}{}",
                    params(&e.generics),
                    where_clause(&e.generics)
                ),
            ));
            for v in &e.variants {
                let variant = format!("{path}::{}", v.ident);
                let attrs = contract_attrs(&v.attrs);
                out.push(Entry::new(
                    &variant,
                    "variant",
                    format!("{attrs}{}", tokens(&v.fields)),
                ));
            }
        }
        Item::Trait(t) => {
            let supers = if t.supertraits.is_empty() {
                String::new()
            } else {
                format!(": {}", tokens(&t.supertraits))
            };
            let unsafety = if t.unsafety.is_some() { "unsafe " } else { "" };
            out.push(Entry::new(
                path,
                "trait",
                format!(
                    "{attrs}{unsafety}{}{supers}{}",
                    params(&t.generics),
                    where_clause(&t.generics)
                ),
            ));
            for ti in &t.items {
                out.extend(trait_item(path, ti));
            }
        }
        Item::Fn(f) => {
            let kind = proc_macro_kind(&f.attrs).unwrap_or("fn");
            let text = if kind == "fn" {
                signature(&f.sig)
            } else {
                String::new()
            };
            out.push(Entry::new(path, kind, format!("{attrs}{text}")));
        }
        Item::Type(t) => out.push(Entry::new(
            path,
            "type",
            format!("{attrs}{} = {}", params(&t.generics), tokens(&t.ty)),
        )),
        Item::Const(c) => out.push(Entry::new(
            path,
            "const",
            format!("{attrs}{}", tokens(&c.ty)),
        )),
        Item::Static(s) => out.push(Entry::new(
            path,
            "static",
            format!("{attrs}{}", tokens(&s.ty)),
        )),
        Item::Macro(m) => out.push(Entry::new(path, "macro", macro_rules(&attrs, m))),
        other => out.push(Entry::new(
            path,
            "item",
            format!("{attrs}{}", tokens(other)),
        )),
    }
    out
}

fn proc_macro_kind(attrs: &[syn::Attribute]) -> Option<&'static str> {
    for (name, kind) in [
        ("proc_macro", "proc-macro"),
        ("proc_macro_attribute", "attribute-macro"),
        ("proc_macro_derive", "derive-macro"),
    ] {
        if attrs.iter().any(|a| a.path().is_ident(name)) {
            return Some(kind);
        }
    }
    None
}

fn trait_item(trait_path: &str, item: &syn::TraitItem) -> Vec<Entry> {
    match item {
        syn::TraitItem::Fn(f) => {
            let path = format!("{trait_path}::{}", f.sig.ident);
            let how = if f.default.is_some() {
                "provided"
            } else {
                "required"
            };
            let attrs = contract_attrs(&f.attrs);
            vec![Entry::new(
                &path,
                "trait-fn",
                format!("{attrs}{} ({how})", signature(&f.sig)),
            )]
        }
        syn::TraitItem::Type(t) => {
            let path = format!("{trait_path}::{}", t.ident);
            let bounds = if t.bounds.is_empty() {
                String::new()
            } else {
                format!(": {}", tokens(&t.bounds))
            };
            let default = t
                .default
                .as_ref()
                .map(|(_, ty)| format!(" = {}", tokens(ty)))
                .unwrap_or_default();
            vec![Entry::new(
                &path,
                "trait-type",
                format!("{}{bounds}{default}", params(&t.generics)),
            )]
        }
        syn::TraitItem::Const(c) => {
            let path = format!("{trait_path}::{}", c.ident);
            let how = if c.default.is_some() {
                "provided"
            } else {
                "required"
            };
            vec![Entry::new(
                &path,
                "trait-const",
                format!("{} ({how})", tokens(&c.ty)),
            )]
        }
        other => vec![Entry::new(trait_path, "trait-item", tokens(other))],
    }
}

/// An exported `macro_rules!`: each arm's matcher as written, and a digest of what the arms
/// expand to (so a change to the expansion, which the sources of the items it defines are,
/// shows as a change of this line).
fn macro_rules(attrs: &str, m: &syn::ItemMacro) -> String {
    let mut matchers = Vec::new();
    let mut expansion = String::new();
    let mut iter = m.mac.tokens.clone().into_iter().peekable();
    while let Some(tt) = iter.next() {
        if let TokenTree::Group(g) = &tt {
            matchers.push(tokens(&g.stream()));
            // `=>` then the transcriber, then an optional `;`.
            let _ = iter.next();
            let _ = iter.next();
            if let Some(TokenTree::Group(body)) = iter.next() {
                expansion.push_str(&tokens(&strip_docs(body.stream())));
            }
        }
    }
    format!(
        "{attrs}{{ {} }} (expansion {:016x})",
        matchers
            .iter()
            .map(|m| format!("({m})"))
            .collect::<Vec<_>>()
            .join("; "),
        fnv1a(&expansion)
    )
}

/// FNV-1a, 64 bits: a digest stable across platforms and releases.
pub fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// `tokens` without `#[doc = ..]` attributes (a doc comment is not part of the surface).
pub fn strip_docs(tokens: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    use proc_macro2::{Group, TokenTree};
    let mut out = Vec::new();
    let mut iter = tokens.into_iter().peekable();
    while let Some(tt) = iter.next() {
        if let TokenTree::Punct(p) = &tt
            && p.as_char() == '#'
            && let Some(TokenTree::Group(g)) = iter.peek()
            && g.stream()
                .into_iter()
                .next()
                .is_some_and(|t| t.to_string() == "doc")
        {
            iter.next();
            continue;
        }
        out.push(match tt {
            TokenTree::Group(g) => {
                let mut inner = Group::new(g.delimiter(), strip_docs(g.stream()));
                inner.set_span(g.span());
                TokenTree::Group(inner)
            }
            other => other,
        });
    }
    out.into_iter().collect()
}
