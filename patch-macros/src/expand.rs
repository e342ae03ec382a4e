//! Expansion: the item, unchanged, plus its link-time registration and compile-time checks.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};

use syn::spanned::Spanned;

use crate::args::{PatchArgs, PatchKey, PatchableArgs};
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
            let site = quote_spanned! {ident.span()=>
                const _: () = {
                    static INFO: ::patch_core::SiteInfo =
                        ::patch_core::SiteInfo::of::<#ident>(::core::module_path!());
                    impl ::patch_core::Site for #ident {
                        const NAME: &'static str = #name;
                        fn info() -> &'static ::patch_core::SiteInfo {
                            // The site itself must fill the slot it declares.
                            let _fills_its_slot = |module: ::std::boxed::Box<Self>|
                                -> ::std::boxed::Box<<Self as ::patch_core::Build>::Slot> { module };
                            &INFO
                        }
                    }
                    ::patch_core::__private::inventory::submit! {
                        ::patch_core::SiteRegistration(&INFO)
                    }
                };
            };
            quote! {
                #item
                #site
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
            let priority = args.priority;
            let at_path = match &args.path {
                Some(lit) => quote!(.at_path(#lit)),
                None => TokenStream::new(),
            };
            let label = match &args.name {
                Some(lit) => quote!(::core::option::Option::Some(#lit)),
                None => quote!(::core::option::Option::None),
            };
            let (key, generated) = match &args.key {
                PatchKey::Str(lit) => (quote!(#lit), TokenStream::new()),
                PatchKey::Site(site) => (
                    quote_spanned!(site.span()=> <#site as ::patch_core::Site>::NAME),
                    site_keyed(ident, site, target.wrapped.as_ref()),
                ),
            };
            // One generated function both checks that the type fills its slot and names the
            // replacement, so a type without `Build` gets one error, not one per use.
            let entry = quote_spanned! {ident.span()=>
                const _: () = {
                    fn replacement() -> ::patch_core::Replacement {
                        let _fills_its_slot = |module: ::std::boxed::Box<#ident>|
                            -> ::std::boxed::Box<<#ident as ::patch_core::Build>::Slot> { module };
                        ::patch_core::Replacement::of::<#ident>()
                    }
                    ::patch_core::__private::inventory::submit! {
                        ::patch_core::PatchEntry::new(
                            #key,
                            #priority,
                            #label,
                            ::core::module_path!(),
                            ::core::file!(),
                            ::core::line!(),
                            replacement,
                        )#at_path
                    }
                };
            };
            quote! {
                #item
                #generated
                #entry
            }
        }
        Err(err) => with_error(item, err),
    }
}

/// What `#[patch(SiteType)]` adds: for a wrapper (a tuple struct around the site type), its
/// `Build` (the site's own constructor and carried transforms) and `Deref` to the site; for
/// any other type, the compile-time check that its slot is the site's.
fn site_keyed(ident: &syn::Ident, site: &syn::Path, wrapped: Option<&syn::Type>) -> TokenStream {
    match wrapped {
        Some(inner) => quote_spanned! {site.span()=>
            impl ::patch_core::Build for #ident {
                type Slot = <#site as ::patch_core::Build>::Slot;

                fn build(
                    b: &::patch_core::Builder,
                    args: <Self::Slot as ::patch_core::Slot>::Args<'_>,
                ) -> ::patch_core::Result<::std::boxed::Box<Self::Slot>> {
                    let original = <#inner as ::patch_core::__private::WrapsSite<#site>>::into_field(
                        #site::new(b, args)?,
                    );
                    ::core::result::Result::Ok(::std::boxed::Box::new(Self(original)))
                }

                fn transforms() -> ::std::vec::Vec<::patch_core::checkpoint::Transform> {
                    <#site as ::patch_core::Build>::transforms()
                }

                fn wraps(&self) -> ::core::option::Option<&dyn ::patch_core::Module> {
                    ::core::option::Option::Some(
                        <#inner as ::patch_core::__private::WrapsSite<#site>>::as_module(&self.0),
                    )
                }
            }

            impl ::core::ops::Deref for #ident {
                type Target = #inner;
                fn deref(&self) -> &#inner {
                    &self.0
                }
            }
        },
        None => quote_spanned! {site.span()=>
            const _: () = {
                fn _replacement_fills_the_sites_slot()
                where
                    #site: ::patch_core::Site,
                    <#ident as ::patch_core::Build>::Slot:
                        ::patch_core::__private::SameSlot<<#site as ::patch_core::Build>::Slot>,
                {
                }
            };
        },
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
