//! A crate's public surface: every path a user can name (public items of public modules and
//! `pub use` re-exports), each item rendered once at its canonical path (where it is defined
//! when that is public, else its shortest re-export) and its other paths as aliases; public
//! methods and trait impls with the types they belong to; invocations of the crate's own
//! macros, which stand for the items they define.

use std::collections::BTreeMap;

use super::render::{self, Entry, tokens};
use super::tree::{self, Crate, Def, Target};

/// What one public path names.
struct Export {
    path: Vec<String>,
    target: Target,
}

/// The snapshot lines of `krate`, sorted by path.
pub fn lines(krate: &Crate) -> Vec<String> {
    let exports = exports(krate);
    let canonical = canonical_paths(krate, &exports);
    let name = |segs: &[String]| {
        let mut p = krate.name.clone();
        for s in segs {
            p.push_str("::");
            p.push_str(s);
        }
        p
    };
    let mut entries: Vec<Entry> = Vec::new();
    for e in &exports {
        let path = name(&e.path);
        match &e.target {
            Target::Module(_) => entries.push(Entry::new(&path, "mod", String::new())),
            Target::Def(d) => {
                let canon = &canonical[d];
                if *canon != path {
                    entries.push(Entry::new(&path, "use", canon.clone()));
                    continue;
                }
                match d {
                    Def::Item { module, index } => {
                        let item = &krate.modules[*module].items[*index];
                        entries.extend(render::item(&path, item));
                        for derive in render::derives(tree::attrs(item)) {
                            entries.push(Entry::new(&path, "impl", format!("{derive} (derived)")));
                        }
                    }
                    Def::Generated { module, .. } => entries.push(Entry::new(
                        &path,
                        "generated",
                        format!(
                            "by a macro invocation in {}",
                            name(&krate.modules[*module].path)
                        ),
                    )),
                }
            }
            Target::External(ext) => entries.push(Entry::new(&path, "use", ext.clone())),
            Target::Unresolved(w) => {
                entries.push(Entry::new(&path, "use", format!("{w} (unresolved)")))
            }
        }
    }
    entries.extend(super::impls::impls(krate, &canonical));
    entries.extend(macro_calls(krate, &name));
    entries.sort();
    entries.dedup();
    entries.iter().map(Entry::line).collect()
}

/// Every public path: public items of reachable modules, their `pub use`s (globs expanded
/// over the crate's own modules), exported macros at the root.
fn exports(krate: &Crate) -> Vec<Export> {
    let mut out = Vec::new();
    for (id, m) in krate.modules.iter().enumerate() {
        if !m.public {
            continue;
        }
        if id != 0 {
            out.push(Export {
                path: m.path.clone(),
                target: Target::Module(id),
            });
        }
        let at = |name: &str| {
            let mut p = m.path.clone();
            p.push(name.to_string());
            p
        };
        for (index, item) in m.items.iter().enumerate() {
            if tree::is_hidden(tree::attrs(item)) {
                continue;
            }
            match item {
                syn::Item::Use(u) if tree::is_pub(&u.vis) => {
                    for leaf in tree::use_leaves(&u.tree) {
                        match leaf.name {
                            Some(name) => out.push(Export {
                                path: at(&name),
                                target: krate.resolve(id, &leaf.path),
                            }),
                            None => match krate.resolve(id, &leaf.path) {
                                Target::Module(b) => {
                                    for (name, target) in public_names(krate, b) {
                                        out.push(Export {
                                            path: at(&name),
                                            target,
                                        });
                                    }
                                }
                                other => out.push(Export {
                                    path: at("*"),
                                    target: match other {
                                        Target::External(p) => Target::External(format!("{p}::*")),
                                        t => t,
                                    },
                                }),
                            },
                        }
                    }
                }
                syn::Item::Macro(mac) if exported_macro(mac) => {
                    if let Some(ident) = &mac.ident {
                        out.push(Export {
                            path: vec![format!("{ident}!")],
                            target: Target::Def(Def::Item { module: id, index }),
                        });
                    }
                }
                _ => {
                    if let Some((name, vis)) = tree::declared(item)
                        && tree::is_pub(vis)
                    {
                        out.push(Export {
                            path: at(&name),
                            target: Target::Def(Def::Item { module: id, index }),
                        });
                    }
                }
            }
        }
    }
    // Exported macros defined in private modules are still at the root.
    for (id, m) in krate.modules.iter().enumerate() {
        if m.public {
            continue;
        }
        for (index, item) in m.items.iter().enumerate() {
            if let syn::Item::Macro(mac) = item
                && exported_macro(mac)
                && !tree::is_hidden(&mac.attrs)
                && let Some(ident) = &mac.ident
            {
                out.push(Export {
                    path: vec![format!("{ident}!")],
                    target: Target::Def(Def::Item { module: id, index }),
                });
            }
        }
    }
    out
}

fn exported_macro(mac: &syn::ItemMacro) -> bool {
    mac.mac.path.is_ident("macro_rules")
        && mac.attrs.iter().any(|a| a.path().is_ident("macro_export"))
}

/// The names a glob over module `b` brings in: its public items, sub-modules and `pub use`s.
fn public_names(krate: &Crate, b: usize) -> Vec<(String, Target)> {
    let m = &krate.modules[b];
    let mut out: Vec<(String, Target)> = m
        .children
        .iter()
        .filter(|(_, c)| {
            krate.modules[**c].parent == Some(b) && tree::is_pub(&module_vis(krate, **c))
        })
        .map(|(n, c)| (n.clone(), Target::Module(*c)))
        .collect();
    for (index, item) in m.items.iter().enumerate() {
        match item {
            syn::Item::Use(u) if tree::is_pub(&u.vis) => {
                for leaf in tree::use_leaves(&u.tree) {
                    if let Some(name) = leaf.name {
                        out.push((name, krate.resolve(b, &leaf.path)));
                    }
                }
            }
            _ => {
                if let Some((name, vis)) = tree::declared(item)
                    && tree::is_pub(vis)
                {
                    out.push((name, Target::Def(Def::Item { module: b, index })));
                }
            }
        }
    }
    out
}

fn module_vis(krate: &Crate, id: usize) -> syn::Visibility {
    let m = &krate.modules[id];
    let parent = &krate.modules[m.parent.unwrap_or(0)];
    let name = m.path.last().cloned().unwrap_or_default();
    parent
        .items
        .iter()
        .find_map(|i| match i {
            syn::Item::Mod(md) if md.ident == name => Some(md.vis.clone()),
            _ => None,
        })
        .unwrap_or(syn::Visibility::Inherited)
}

/// Each public definition's canonical path: where it is defined when that path is public,
/// else its shortest public path (then the first in order).
fn canonical_paths(krate: &Crate, exports: &[Export]) -> BTreeMap<Def, String> {
    let mut all: BTreeMap<Def, Vec<&Vec<String>>> = BTreeMap::new();
    for e in exports {
        if let Target::Def(d) = &e.target {
            all.entry(d.clone()).or_default().push(&e.path);
        }
    }
    all.into_iter()
        .map(|(d, mut paths)| {
            let home = match &d {
                Def::Item { module, index } => {
                    let m = &krate.modules[*module];
                    tree::declared(&m.items[*index]).map(|(n, _)| {
                        let mut p = m.path.clone();
                        p.push(n);
                        p
                    })
                }
                Def::Generated { .. } => None,
            };
            paths.sort_by(|a, b| a.len().cmp(&b.len()).then(a.cmp(b)));
            let chosen = home
                .filter(|h| paths.contains(&h))
                .unwrap_or_else(|| paths[0].clone());
            let mut p = krate.name.clone();
            for s in &chosen {
                p.push_str("::");
                p.push_str(s);
            }
            (d, p)
        })
        .collect()
}

/// Item-level invocations of the crate's exported macros (what they define is not in the
/// sources), with their tokens; a crate's private helper macros are left out.
fn macro_calls(krate: &Crate, name: &dyn Fn(&[String]) -> String) -> Vec<Entry> {
    let own: Vec<String> = krate
        .modules
        .iter()
        .flat_map(|m| &m.items)
        .filter_map(|i| match i {
            syn::Item::Macro(mac) if exported_macro(mac) => {
                mac.ident.as_ref().map(|i| i.to_string())
            }
            _ => None,
        })
        .collect();
    let mut out = Vec::new();
    for m in &krate.modules {
        for item in &m.items {
            if let syn::Item::Macro(mac) = item
                && mac.ident.is_none()
                && let Some(last) = mac.mac.path.segments.last()
                && own.contains(&last.ident.to_string())
            {
                let module = name(&m.path);
                out.push(Entry::new(
                    &module,
                    "macro-call",
                    format!(
                        "{}! {{ {} }}",
                        last.ident,
                        tokens(&without_bodies(super::tokens::strip_docs(
                            mac.mac.tokens.clone()
                        )))
                    ),
                ));
            }
        }
    }
    out
}

/// `tokens` with each top-level `{ .. }` group (a block of code handed to the macro, not a
/// declaration) shown as `{ .. }`.
fn without_bodies(tokens: proc_macro2::TokenStream) -> proc_macro2::TokenStream {
    use proc_macro2::{Delimiter, Group, TokenTree};
    tokens
        .into_iter()
        .map(|tt| match tt {
            TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => {
                TokenTree::Group(Group::new(Delimiter::Brace, quote::quote!(..)))
            }
            other => other,
        })
        .collect()
}
