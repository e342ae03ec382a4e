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
    entries.extend(impls(krate, &canonical));
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

/// The public surface an `impl` block adds: an inherent impl's public functions and
/// constants under its type's path, a trait impl as one line (with its associated types)
/// under the type's path, or under the trait's for a blanket impl.
fn impls(krate: &Crate, canonical: &BTreeMap<Def, String>) -> Vec<Entry> {
    let mut out = Vec::new();
    for (id, m) in krate.modules.iter().enumerate() {
        for item in &m.items {
            let syn::Item::Impl(imp) = item else { continue };
            let named = |path: &syn::Path| -> Option<String> {
                let segs: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
                match krate.resolve(id, &segs) {
                    Target::Def(d) => canonical.get(&d).cloned(),
                    _ => None,
                }
            };
            let with_args = |canon: &str, path: &syn::Path| {
                let args = &path
                    .segments
                    .last()
                    .expect("a path has a segment")
                    .arguments;
                format!("{canon}{}", tokens(args))
            };
            let self_ty = match &*imp.self_ty {
                syn::Type::Path(p) if p.qself.is_none() => {
                    named(&p.path).map(|c| (c.clone(), with_args(&c, &p.path)))
                }
                syn::Type::TraitObject(o) => o.bounds.iter().find_map(|b| match b {
                    syn::TypeParamBound::Trait(t) => named(&t.path)
                        .map(|c| (c.clone(), format!("dyn {}", with_args(&c, &t.path)))),
                    _ => None,
                }),
                _ => None,
            };
            let generics = render::params(&imp.generics);
            let wheres = render::where_clause(&imp.generics);
            match &imp.trait_ {
                None => {
                    let Some((canon, ty)) = self_ty else { continue };
                    let context = if generics.is_empty() && ty == canon {
                        String::new()
                    } else {
                        format!("  [impl{generics} {ty}{wheres}]")
                    };
                    for ii in &imp.items {
                        match ii {
                            syn::ImplItem::Fn(f)
                                if tree::is_pub(&f.vis) && !tree::is_hidden(&f.attrs) =>
                            {
                                let path = format!("{canon}::{}", f.sig.ident);
                                let attrs = render::contract_attrs(&f.attrs);
                                out.push(Entry::new(
                                    &path,
                                    "fn",
                                    format!("{attrs}{}{context}", render::signature(&f.sig)),
                                ));
                            }
                            syn::ImplItem::Const(c) if tree::is_pub(&c.vis) => {
                                let path = format!("{canon}::{}", c.ident);
                                out.push(Entry::new(
                                    &path,
                                    "const",
                                    format!("{}{context}", tokens(&c.ty)),
                                ));
                            }
                            _ => {}
                        }
                    }
                }
                Some((negative, trait_path, _)) => {
                    let trait_name = match named(trait_path) {
                        Some(c) => with_args(&c, trait_path),
                        None => {
                            let segs: Vec<String> = trait_path
                                .segments
                                .iter()
                                .map(|s| s.ident.to_string())
                                .collect();
                            if matches!(krate.resolve(id, &segs), Target::Def(_)) {
                                continue; // a private trait of the crate
                            }
                            let last = trait_path.segments.last().expect("a path has a segment");
                            tokens(last)
                        }
                    };
                    let assoc: Vec<String> = imp
                        .items
                        .iter()
                        .filter_map(|ii| match ii {
                            syn::ImplItem::Type(t) => {
                                Some(format!("type {} = {};", t.ident, tokens(&t.ty)))
                            }
                            _ => None,
                        })
                        .collect();
                    let assoc = if assoc.is_empty() {
                        String::new()
                    } else {
                        format!(" {{ {} }}", assoc.join(" "))
                    };
                    let not = if negative.is_some() { "!" } else { "" };
                    let unsafety = if imp.unsafety.is_some() {
                        "unsafe "
                    } else {
                        ""
                    };
                    let (under, ty) = match self_ty {
                        Some((canon, ty)) => (canon, ty),
                        None => match named(trait_path) {
                            // A blanket impl, listed with the trait.
                            Some(c) => (c, tokens(&imp.self_ty)),
                            None => continue,
                        },
                    };
                    out.push(Entry::new(
                        &under,
                        "impl",
                        format!("{unsafety}{generics} {not}{trait_name} for {ty}{wheres}{assoc}")
                            .trim_start()
                            .to_string(),
                    ));
                }
            }
        }
    }
    out
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
                        tokens(&without_bodies(render::strip_docs(mac.mac.tokens.clone())))
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
