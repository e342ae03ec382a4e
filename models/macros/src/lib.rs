#![warn(missing_docs)]
//! `#[attention_implementation("name")]` and `#[experts_implementation("name")]`: register a
//! function as a named attention or routed-experts implementation of patchwork-models at link
//! time. Use them through `patchwork_models`.
//!
//! Staged as patch-macros: the arguments and the item are parsed into a typed model and checked
//! with spanned errors, then expanded; on error the original item is emitted with the error.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::punctuated::Punctuated;
use syn::{Ident, ItemFn, LitStr, Token};

/// Which registry an attribute fills.
#[derive(Clone, Copy)]
enum Kind {
    Attention,
    Experts,
}

impl Kind {
    fn attribute(self) -> &'static str {
        match self {
            Kind::Attention => "#[attention_implementation]",
            Kind::Experts => "#[experts_implementation]",
        }
    }

    /// The flags the attribute accepts after the name.
    fn flags(self) -> &'static [&'static str] {
        match self {
            Kind::Attention => &["gradients", "weights"],
            Kind::Experts => &["gradients"],
        }
    }
}

/// The attribute's arguments: the name, then flags.
struct Args {
    name: LitStr,
    gradients: bool,
    weights: bool,
}

enum Arg {
    Name(LitStr),
    Flag(Ident),
}

impl syn::parse::Parse for Arg {
    fn parse(input: syn::parse::ParseStream) -> syn::Result<Self> {
        if input.peek(LitStr) {
            Ok(Arg::Name(input.parse()?))
        } else {
            Ok(Arg::Flag(input.parse()?))
        }
    }
}

fn parse_args(attr: TokenStream2, kind: Kind) -> syn::Result<Args> {
    let example = match kind {
        Kind::Attention => "#[attention_implementation(\"my_attention\", gradients, weights)]",
        Kind::Experts => "#[experts_implementation(\"my_experts\", gradients)]",
    };
    let usage = format!(
        "{} takes the implementation's name and optional flags ({}): {example}",
        kind.attribute(),
        kind.flags().join(", "),
    );
    if attr.is_empty() {
        return Err(syn::Error::new(Span::call_site(), usage));
    }
    let all: Punctuated<Arg, Token![,]> =
        syn::parse::Parser::parse2(Punctuated::parse_terminated, attr)?;
    let mut args = all.into_iter();
    let name = match args.next() {
        Some(Arg::Name(lit)) => lit,
        Some(Arg::Flag(ident)) => return Err(syn::Error::new_spanned(ident, usage)),
        None => return Err(syn::Error::new(Span::call_site(), usage)),
    };
    let value = name.value();
    if value.is_empty() || value.chars().any(char::is_whitespace) {
        return Err(syn::Error::new_spanned(
            &name,
            "an implementation's name is a non-empty word, as `attn_implementation` gives it",
        ));
    }
    let (mut gradients, mut weights) = (false, false);
    for arg in args {
        let flag = match arg {
            Arg::Flag(ident) => ident,
            Arg::Name(lit) => {
                return Err(syn::Error::new_spanned(lit, "one name per implementation"));
            }
        };
        let slot = match flag.to_string().as_str() {
            "gradients" => &mut gradients,
            "weights" if matches!(kind, Kind::Attention) => &mut weights,
            _ => {
                return Err(syn::Error::new_spanned(
                    &flag,
                    format!(
                        "unknown flag: {} takes {}",
                        kind.attribute(),
                        kind.flags().join(", ")
                    ),
                ));
            }
        };
        if *slot {
            return Err(syn::Error::new_spanned(&flag, "this flag is given twice"));
        }
        *slot = true;
    }
    Ok(Args {
        name,
        gradients,
        weights,
    })
}

fn parse_item(item: &TokenStream2, kind: Kind) -> syn::Result<ItemFn> {
    let f: ItemFn = syn::parse2(item.clone()).map_err(|e| {
        syn::Error::new(
            e.span(),
            format!(
                "{} goes on a function (`fn(&{}) -> candle_core::Result<..>`)",
                kind.attribute(),
                match kind {
                    Kind::Attention => "AttentionInput",
                    Kind::Experts => "ExpertsInput",
                }
            ),
        )
    })?;
    if !f.sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &f.sig.generics,
            format!(
                "{} registers one concrete function: no generic parameters",
                kind.attribute()
            ),
        ));
    }
    if let Some(a) = &f.sig.asyncness {
        return Err(syn::Error::new_spanned(
            a,
            "an implementation is a plain (not async) function",
        ));
    }
    Ok(f)
}

fn expand(attr: TokenStream2, item: TokenStream2, kind: Kind) -> TokenStream2 {
    let parsed = parse_args(attr, kind).and_then(|args| parse_item(&item, kind).map(|f| (args, f)));
    let (args, f) = match parsed {
        Ok(p) => p,
        Err(err) => {
            let err = err.to_compile_error();
            return quote! { #item #err };
        }
    };
    let ident = &f.sig.ident;
    let name = &args.name;
    let gradients = args.gradients;
    let entry = match kind {
        Kind::Attention => {
            let weights = args.weights;
            quote_spanned! {ident.span()=>
                const _: () = {
                    fn implementation() -> ::patchwork_models::implementations::AttentionImplementation {
                        ::patchwork_models::implementations::AttentionImplementation::new(#name, #ident)
                            .with_gradients(#gradients)
                            .with_weights(#weights)
                    }
                    ::patchwork_models::__private::inventory::submit! {
                        ::patchwork_models::implementations::AttentionImplementationEntry(implementation)
                    }
                };
            }
        }
        Kind::Experts => quote_spanned! {ident.span()=>
            const _: () = {
                fn implementation() -> ::patchwork_models::implementations::ExpertsImplementation {
                    ::patchwork_models::implementations::ExpertsImplementation::new(#name, #ident)
                        .with_gradients(#gradients)
                }
                ::patchwork_models::__private::inventory::submit! {
                    ::patchwork_models::implementations::ExpertsImplementationEntry(implementation)
                }
            };
        },
    };
    quote! {
        #f
        #entry
    }
}

/// Registers a function `fn(&AttentionInput<'_>) -> candle_core::Result<AttentionOutput>` as
/// the attention implementation named `"name"`, at link time; flags `gradients` (it computes
/// on candle's ops) and `weights` (it returns probabilities when asked). See
/// `patchwork_models::implementations`.
#[proc_macro_attribute]
pub fn attention_implementation(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr.into(), item.into(), Kind::Attention).into()
}

/// Registers a function `fn(&ExpertsInput<'_>) -> candle_core::Result<Tensor>` as the
/// routed-experts implementation named `"name"`, at link time; flag `gradients`. See
/// `patchwork_models::implementations`.
#[proc_macro_attribute]
pub fn experts_implementation(attr: TokenStream, item: TokenStream) -> TokenStream {
    expand(attr.into(), item.into(), Kind::Experts).into()
}
