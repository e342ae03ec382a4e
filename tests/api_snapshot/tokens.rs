//! Tokens printed with one spacing rule, doc comments left out: a signature's line changes
//! only when what it declares does.

use proc_macro2::{Delimiter, Spacing, TokenStream, TokenTree};
use quote::ToTokens;

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
