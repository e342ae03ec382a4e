//! The attributes' arguments, parsed into typed models and validated.

use proc_macro2::{Span, TokenStream};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{Expr, ExprLit, ExprUnary, Lit, LitInt, LitStr, Meta, Path, Token, UnOp};

/// `#[patchable]` or `#[patchable(name = "UpstreamName")]`.
pub struct PatchableArgs {
    /// The site name, when not the type's name.
    pub name: Option<LitStr>,
}

/// What a patch is keyed by.
pub enum PatchKey {
    /// A site name or a regex, compiled here so a bad one fails the build.
    Str(LitStr),
    /// A site type (`LlamaAttention`): the key is its site name, and the replacement's slot is
    /// checked against the site's at compile time.
    Site(Box<Path>),
}

/// `#[patch("key")]`, `#[patch(SiteType)]`,
/// `#[patch("key", path = "regex", priority = 10, name = "label")]`.
pub struct PatchArgs {
    /// The key.
    pub key: PatchKey,
    /// The module-path restriction, compiled here so a bad one fails the build.
    pub path: Option<LitStr>,
    /// Priority among patterns (default 0).
    pub priority: i32,
    /// A human label for reports.
    pub name: Option<LitStr>,
}

impl PatchableArgs {
    pub fn parse(attr: TokenStream) -> syn::Result<Self> {
        let metas = parse_metas(attr)?;
        let mut name = None;
        for meta in metas {
            match key_of(&meta).as_deref() {
                Some("name") => {
                    let lit = str_value(&meta)?;
                    if lit.value().is_empty() {
                        return Err(syn::Error::new_spanned(lit, "a site name cannot be empty"));
                    }
                    set_once(&mut name, lit, &meta)?;
                }
                _ => {
                    return Err(syn::Error::new_spanned(
                        &meta,
                        "unknown argument: #[patchable] takes only `name = \"SiteName\"`",
                    ));
                }
            }
        }
        Ok(Self { name })
    }
}

impl PatchArgs {
    pub fn parse(attr: TokenStream) -> syn::Result<Self> {
        let missing = || {
            syn::Error::new(
                Span::call_site(),
                "#[patch] needs the site name or pattern it replaces: #[patch(\"LlamaAttention\")]",
            )
        };
        if attr.is_empty() {
            return Err(missing());
        }
        let all: Punctuated<PatchArg, Token![,]> =
            syn::parse::Parser::parse2(Punctuated::parse_terminated, attr)?;
        let mut args = all.into_iter();
        let key = match args.next() {
            Some(PatchArg::Key(lit)) => {
                validate_key(&lit)?;
                PatchKey::Str(lit)
            }
            Some(PatchArg::Site(path)) => PatchKey::Site(path),
            Some(PatchArg::Named(meta)) => {
                return Err(syn::Error::new_spanned(
                    meta,
                    "the first argument of #[patch] is the site it replaces: a site type (#[patch(LlamaAttention)]) or a site name or pattern as a string (#[patch(\".*Attention\")])",
                ));
            }
            None => return Err(missing()),
        };
        let mut priority = None;
        let mut name = None;
        let mut path = None;
        for arg in args {
            let meta = match arg {
                PatchArg::Key(lit) => {
                    return Err(syn::Error::new_spanned(
                        lit,
                        "#[patch] takes one key; put one #[patch] attribute per key",
                    ));
                }
                PatchArg::Site(path) => {
                    return Err(syn::Error::new_spanned(
                        path,
                        "#[patch] takes one key; put one #[patch] attribute per key",
                    ));
                }
                PatchArg::Named(meta) => *meta,
            };
            match key_of(&meta).as_deref() {
                Some("priority") => {
                    let value = int_value(&meta)?;
                    set_once(&mut priority, value, &meta)?;
                }
                Some("name") => {
                    let lit = str_value(&meta)?;
                    set_once(&mut name, lit, &meta)?;
                }
                Some("path") => {
                    let lit = str_value(&meta)?;
                    validate_path(&lit)?;
                    set_once(&mut path, lit, &meta)?;
                }
                _ => {
                    return Err(syn::Error::new_spanned(
                        &meta,
                        "unknown argument: #[patch] takes `path = \"regex\"`, `priority = <integer>` and `name = \"label\"` after the key",
                    ));
                }
            }
        }
        Ok(Self {
            key,
            path,
            priority: priority.unwrap_or(0),
            name,
        })
    }
}

/// One argument of `#[patch]`: the key (a string or a site type) or `name = value`.
enum PatchArg {
    Key(LitStr),
    Site(Box<Path>),
    Named(Box<Meta>),
}

impl Parse for PatchArg {
    fn parse(input: ParseStream) -> syn::Result<Self> {
        if input.peek(LitStr) {
            return Ok(PatchArg::Key(input.parse()?));
        }
        let meta: Meta = input.parse()?;
        Ok(match meta {
            Meta::Path(path) => PatchArg::Site(Box::new(path)),
            other => PatchArg::Named(Box::new(other)),
        })
    }
}

/// The key is compiled with the regex engine patch-core uses at run time: an invalid one is an
/// error pointing at the literal instead of a warning and an ignored patch.
fn validate_key(key: &LitStr) -> syn::Result<()> {
    let value = key.value();
    if value.is_empty() {
        return Err(syn::Error::new_spanned(
            key,
            "an empty key matches every site; name the site or write a pattern",
        ));
    }
    regex::Regex::new(&value)
        .map(|_| ())
        .map_err(|e| syn::Error::new_spanned(key, format!("invalid regex in #[patch]: {e}")))
}

/// The module-path restriction, compiled like the key: an invalid regex is an error at the
/// literal.
fn validate_path(path: &LitStr) -> syn::Result<()> {
    let value = path.value();
    if value.is_empty() {
        return Err(syn::Error::new_spanned(
            path,
            "an empty path pattern matches every path; leave `path` out, or write the pattern",
        ));
    }
    regex::Regex::new(&value)
        .map(|_| ())
        .map_err(|e| syn::Error::new_spanned(path, format!("invalid path regex in #[patch]: {e}")))
}

fn parse_metas(attr: TokenStream) -> syn::Result<Punctuated<Meta, Token![,]>> {
    syn::parse::Parser::parse2(Punctuated::parse_terminated, attr)
}

fn key_of(meta: &Meta) -> Option<String> {
    match meta {
        Meta::NameValue(nv) => nv.path.get_ident().map(ToString::to_string),
        _ => None,
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, meta: &Meta) -> syn::Result<()> {
    if slot.is_some() {
        return Err(syn::Error::new_spanned(
            meta,
            "this argument is given twice",
        ));
    }
    *slot = Some(value);
    Ok(())
}

fn str_value(meta: &Meta) -> syn::Result<LitStr> {
    if let Meta::NameValue(nv) = meta
        && let Expr::Lit(ExprLit {
            lit: Lit::Str(s), ..
        }) = &nv.value
    {
        return Ok(s.clone());
    }
    Err(syn::Error::new_spanned(
        meta,
        "expected a string: `name = \"...\"`",
    ))
}

fn int_value(meta: &Meta) -> syn::Result<i32> {
    let Meta::NameValue(nv) = meta else {
        return Err(syn::Error::new_spanned(
            meta,
            "expected `priority = <integer>`",
        ));
    };
    let (negative, lit): (bool, &LitInt) = match &nv.value {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => (false, i),
        Expr::Unary(ExprUnary {
            op: UnOp::Neg(_),
            expr,
            ..
        }) => match &**expr {
            Expr::Lit(ExprLit {
                lit: Lit::Int(i), ..
            }) => (true, i),
            _ => {
                return Err(syn::Error::new_spanned(
                    &nv.value,
                    "expected an integer priority",
                ));
            }
        },
        other => {
            return Err(syn::Error::new_spanned(
                other,
                "expected an integer priority",
            ));
        }
    };
    let magnitude: i64 = lit.base10_parse()?;
    let value = if negative { -magnitude } else { magnitude };
    i32::try_from(value)
        .map_err(|_| syn::Error::new_spanned(&nv.value, "priority must fit in an i32"))
}
