//! Expansion: the item, unchanged, plus its link-time registration and compile-time checks.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use crate::args::{PatchArgs, PatchableArgs};
use crate::target::{Attr, Target};

pub fn patchable(attr: TokenStream, item: TokenStream) -> TokenStream {
    let parsed = PatchableArgs::parse(attr)
        .and_then(|args| Target::parse(&item, Attr::Patchable).map(|target| (args, target)));
    match parsed {
        Ok((args, target)) => {
            let ident = &target.ident;
            let name = match &args.name {
                Some(lit) => quote!(#lit),
                None => {
                    let s = ident.to_string();
                    quote!(#s)
                }
            };
            let check = fills_slot(&target);
            quote! {
                #item
                impl ::patch_core::Site for #ident {
                    const NAME: &'static str = #name;
                }
                ::patch_core::__private::inventory::submit! {
                    ::patch_core::SiteInfo::of::<#ident>(::core::module_path!())
                }
                #check
            }
        }
        Err(err) => with_error(item, err),
    }
}

pub fn patch(attr: TokenStream, item: TokenStream) -> TokenStream {
    let parsed = PatchArgs::parse(attr)
        .and_then(|args| Target::parse(&item, Attr::Patch).map(|target| (args, target)));
    match parsed {
        Ok((args, target)) => {
            let ident = &target.ident;
            let key = &args.key;
            let priority = args.priority;
            let label = match &args.name {
                Some(lit) => quote!(::core::option::Option::Some(#lit)),
                None => quote!(::core::option::Option::None),
            };
            let entry = quote_spanned! {ident.span()=>
                ::patch_core::PatchEntry::new::<#ident>(
                    #key,
                    #priority,
                    #label,
                    ::core::module_path!(),
                    ::core::file!(),
                    ::core::line!(),
                )
            };
            let check = fills_slot(&target);
            quote! {
                #item
                ::patch_core::__private::inventory::submit! { #entry }
                #check
            }
        }
        Err(err) => with_error(item, err),
    }
}

/// Checks that the type itself fills the slot its `Build` impl declares: a
/// `Box<Type>` must coerce to `Box<dyn Slot>`. The error points at the type's name.
fn fills_slot(target: &Target) -> TokenStream {
    let ident = &target.ident;
    quote_spanned! {ident.span()=>
        const _: () = {
            #[allow(dead_code)]
            fn __patchwork_fills_its_slot(
                module: ::std::boxed::Box<#ident>,
            ) -> ::std::boxed::Box<<#ident as ::patch_core::Build>::Slot> {
                module
            }
        };
    }
}

/// The original item followed by the error: the item stays defined, so code using it does not
/// pile further errors on top of the one that matters.
fn with_error(item: TokenStream, err: syn::Error) -> TokenStream {
    let err = err.to_compile_error();
    quote! {
        #item
        #err
    }
}
