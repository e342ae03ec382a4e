//! Items as one line each: signatures printed from their tokens with fixed spacing, so a line
//! changes only when what it declares does.

use proc_macro2::TokenTree;

pub use super::tokens::tokens;
use super::tokens::{fnv1a, strip_docs};

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
