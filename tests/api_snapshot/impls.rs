//! The public surface `impl` blocks add: an inherent impl's public functions and constants,
//! a trait impl as one line, each under the canonical path of the type (or, for a blanket
//! impl, of the trait) it belongs to.

use std::collections::BTreeMap;

use super::render::{self, Entry, tokens};
use super::tree::{self, Crate, Def, Target};

/// The public surface an `impl` block adds: an inherent impl's public functions and
/// constants under its type's path, a trait impl as one line (with its associated types)
/// under the type's path, or under the trait's for a blanket impl.
pub fn impls(krate: &Crate, canonical: &BTreeMap<Def, String>) -> Vec<Entry> {
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
