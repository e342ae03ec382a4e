//! The item an attribute is placed on, parsed into what the expansion needs.

use proc_macro2::TokenStream;
use syn::spanned::Spanned;
use syn::{Fields, Generics, Ident, Item, Type};

/// A type the attributes can register: a non-generic struct or enum, or (for `#[patch]`) a
/// type alias naming a concrete instance of a generic type.
pub struct Target {
    /// The type's name.
    pub ident: Ident,
    /// The type of its one field, when it is a tuple struct with exactly one: a wrapper, for
    /// which `#[patch(SiteType)]` writes `Build`.
    pub wrapped: Option<Type>,
}

/// Which attribute is asking, for messages and for what it accepts.
#[derive(Clone, Copy)]
pub enum Attr {
    Patchable,
    Patch,
}

impl Attr {
    fn name(self) -> &'static str {
        match self {
            Attr::Patchable => "#[patchable]",
            Attr::Patch => "#[patch]",
        }
    }
}

impl Target {
    /// Parses `item` for `attr`; the error is spanned at what is wrong.
    pub fn parse(item: &TokenStream, attr: Attr) -> syn::Result<Self> {
        let parsed: Item = syn::parse2(item.clone())?;
        let (ident, generics) = match &parsed {
            Item::Struct(s) => (&s.ident, &s.generics),
            Item::Enum(e) => (&e.ident, &e.generics),
            Item::Type(t) if matches!(attr, Attr::Patch) => (&t.ident, &t.generics),
            other => {
                let expected = match attr {
                    Attr::Patchable => "a struct or an enum (the layer type models build)",
                    Attr::Patch => {
                        "a struct, an enum, or a type alias naming a concrete type (the replacement)"
                    }
                };
                return Err(syn::Error::new(
                    item_span(other),
                    format!("{} goes on {expected}", attr.name()),
                ));
            }
        };
        reject_generics(generics, attr)?;
        let wrapped = match &parsed {
            Item::Struct(s) => match &s.fields {
                Fields::Unnamed(f) if f.unnamed.len() == 1 => Some(f.unnamed[0].ty.clone()),
                _ => None,
            },
            _ => None,
        };
        Ok(Target {
            ident: ident.clone(),
            wrapped,
        })
    }
}

fn reject_generics(generics: &Generics, attr: Attr) -> syn::Result<()> {
    if generics.params.is_empty() && generics.where_clause.is_none() {
        return Ok(());
    }
    let hint = match attr {
        Attr::Patchable => "a site is one concrete type with one name",
        Attr::Patch => {
            "register a concrete instance instead: `#[patch(\"...\")] type MyAttention = Generic<f32>;`"
        }
    };
    Err(syn::Error::new_spanned(
        generics,
        format!("{} cannot register a generic type: {hint}", attr.name()),
    ))
}

/// The span of the item's introducing keyword and name, so the error does not cover a whole
/// function body.
fn item_span(item: &Item) -> proc_macro2::Span {
    match item {
        Item::Fn(f) => f.sig.span(),
        Item::Trait(t) => t.ident.span(),
        Item::Impl(i) => i.self_ty.span(),
        Item::Union(u) => u.union_token.span,
        Item::Mod(m) => m.ident.span(),
        Item::Type(t) => t.ident.span(),
        Item::Const(c) => c.ident.span(),
        Item::Static(s) => s.ident.span(),
        other => other.span(),
    }
}
