//! A crate's module tree, read from its sources with `syn` (test modules left out), and path
//! resolution in it: what a `use` or a type path names, through re-exports and globs.

use std::collections::BTreeMap;
use std::path::Path;

/// One module: its items as written, its sub-modules by name.
pub struct Module {
    /// Segments below the crate root (`["decoder", "blocks"]`).
    pub path: Vec<String>,
    /// The enclosing module (`None` for the root).
    pub parent: Option<usize>,
    /// Reachable from outside the crate: this module and every one above it are `pub` (and
    /// not `#[doc(hidden)]`).
    pub public: bool,
    /// Its items (test-only ones removed).
    pub items: Vec<syn::Item>,
    /// Its sub-modules.
    pub children: BTreeMap<String, usize>,
}

/// A crate as its sources declare it.
pub struct Crate {
    /// The crate's name as code writes it (`patch_core`).
    pub name: String,
    /// Every module, the root first.
    pub modules: Vec<Module>,
}

/// Something a path can name inside the crate.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Def {
    /// `modules[module].items[index]`.
    Item { module: usize, index: usize },
    /// A name a `macro_rules!` invocation in `module` defines (the sources do not show it).
    Generated { module: usize, name: String },
}

/// What a path resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// An item of the crate.
    Def(Def),
    /// A module of the crate.
    Module(usize),
    /// Something in another crate (the path as written).
    External(String),
    /// Nothing this reader can find (the path as written).
    Unresolved(String),
}

/// One name a `use` declaration brings in: `path` as written, under `name` (`None`: a glob).
pub struct UseLeaf {
    /// The path, as written.
    pub path: Vec<String>,
    /// The name it is known by here, or `None` for `path::*`.
    pub name: Option<String>,
}

/// Whether `attrs` hold `#[cfg(test)]`.
pub fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.meta
                .require_list()
                .is_ok_and(|l| l.tokens.to_string() == "test")
    })
}

/// Whether `attrs` hold `#[doc(hidden)]`.
pub fn is_hidden(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("doc")
            && a.meta
                .require_list()
                .is_ok_and(|l| l.tokens.to_string() == "hidden")
    })
}

/// Whether `vis` is plain `pub` (not `pub(crate)` or narrower).
pub fn is_pub(vis: &syn::Visibility) -> bool {
    matches!(vis, syn::Visibility::Public(_))
}

/// The attributes of an item (none for the few kinds without).
pub fn attrs(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item::*;
    match item {
        Const(i) => &i.attrs,
        Enum(i) => &i.attrs,
        ExternCrate(i) => &i.attrs,
        Fn(i) => &i.attrs,
        ForeignMod(i) => &i.attrs,
        Impl(i) => &i.attrs,
        Macro(i) => &i.attrs,
        Mod(i) => &i.attrs,
        Static(i) => &i.attrs,
        Struct(i) => &i.attrs,
        Trait(i) => &i.attrs,
        TraitAlias(i) => &i.attrs,
        Type(i) => &i.attrs,
        Union(i) => &i.attrs,
        Use(i) => &i.attrs,
        _ => &[],
    }
}

/// The name an item declares in its module's type or value namespace, and its visibility.
pub fn declared(item: &syn::Item) -> Option<(String, &syn::Visibility)> {
    use syn::Item::*;
    let (ident, vis) = match item {
        Const(i) => (&i.ident, &i.vis),
        Enum(i) => (&i.ident, &i.vis),
        Fn(i) => (&i.sig.ident, &i.vis),
        Static(i) => (&i.ident, &i.vis),
        Struct(i) => (&i.ident, &i.vis),
        Trait(i) => (&i.ident, &i.vis),
        TraitAlias(i) => (&i.ident, &i.vis),
        Type(i) => (&i.ident, &i.vis),
        Union(i) => (&i.ident, &i.vis),
        _ => return None,
    };
    Some((ident.to_string(), vis))
}

/// The names a `use` tree brings in.
pub fn use_leaves(tree: &syn::UseTree) -> Vec<UseLeaf> {
    fn walk(tree: &syn::UseTree, prefix: &[String], out: &mut Vec<UseLeaf>) {
        let with = |name: &syn::Ident| {
            let mut path = prefix.to_vec();
            if name != "self" {
                path.push(name.to_string());
            }
            path
        };
        match tree {
            syn::UseTree::Path(p) => walk(&p.tree, &with(&p.ident), out),
            syn::UseTree::Name(n) => {
                let path = with(&n.ident);
                let name = path.last().cloned();
                out.push(UseLeaf { path, name });
            }
            syn::UseTree::Rename(r) => out.push(UseLeaf {
                path: with(&r.ident),
                name: Some(r.rename.to_string()),
            }),
            syn::UseTree::Glob(_) => out.push(UseLeaf {
                path: prefix.to_vec(),
                name: None,
            }),
            syn::UseTree::Group(g) => g.items.iter().for_each(|t| walk(t, prefix, out)),
        }
    }
    let mut out = Vec::new();
    walk(tree, &[], &mut out);
    out
}

impl Crate {
    /// Reads the crate whose root file is `root`.
    pub fn load(name: &str, root: &Path) -> Result<Self, String> {
        let mut krate = Crate {
            name: name.to_string(),
            modules: Vec::new(),
        };
        let items = parse(root)?.items;
        let dir = root.parent().ok_or("a root file without a folder")?;
        krate.add(Vec::new(), None, true, items, dir)?;
        Ok(krate)
    }

    fn add(
        &mut self,
        path: Vec<String>,
        parent: Option<usize>,
        public: bool,
        items: Vec<syn::Item>,
        dir: &Path,
    ) -> Result<usize, String> {
        let id = self.modules.len();
        self.modules.push(Module {
            path: path.clone(),
            parent,
            public,
            items: Vec::new(),
            children: BTreeMap::new(),
        });
        let items: Vec<syn::Item> = items.into_iter().filter(|i| !is_test(attrs(i))).collect();
        for item in &items {
            let syn::Item::Mod(m) = item else { continue };
            let name = m.ident.to_string();
            let child_dir = dir.join(&name);
            let child_items = match &m.content {
                Some((_, items)) => items.clone(),
                None => {
                    let flat = dir.join(format!("{name}.rs"));
                    let file = if flat.exists() {
                        flat
                    } else {
                        child_dir.join("mod.rs")
                    };
                    parse(&file)?.items
                }
            };
            let child_public = public && is_pub(&m.vis) && !is_hidden(&m.attrs);
            let mut child_path = path.clone();
            child_path.push(name.clone());
            let child = self.add(child_path, Some(id), child_public, child_items, &child_dir)?;
            self.modules[id].children.insert(name, child);
        }
        self.modules[id].items = items;
        Ok(id)
    }

    /// The names of the `macro_rules!` this crate defines.
    pub fn macro_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for m in &self.modules {
            for item in &m.items {
                if let syn::Item::Macro(mac) = item
                    && mac.mac.path.is_ident("macro_rules")
                    && let Some(ident) = &mac.ident
                {
                    names.push(ident.to_string());
                }
            }
        }
        names
    }

    /// Whether `module` invokes one of this crate's `macro_rules!` at item level (so it may
    /// define names the sources do not show).
    fn invokes_macros(&self, module: usize) -> bool {
        let own = self.macro_names();
        self.modules[module].items.iter().any(|item| {
            matches!(item, syn::Item::Macro(m) if m.ident.is_none()
                && m.mac.path.segments.last().is_some_and(|s| own.contains(&s.ident.to_string())))
        })
    }

    /// What `segs` names when written in `module`.
    pub fn resolve(&self, module: usize, segs: &[String]) -> Target {
        self.resolve_at(module, segs, 0)
    }

    fn resolve_at(&self, module: usize, segs: &[String], depth: usize) -> Target {
        let written = segs.join("::");
        let Some((first, rest)) = segs.split_first() else {
            return Target::Unresolved(written);
        };
        if depth > 32 {
            return Target::Unresolved(written);
        }
        let parent = |m: usize| self.modules[m].parent.unwrap_or(0);
        let mut current = match first.as_str() {
            "crate" => Target::Module(0),
            "self" => Target::Module(module),
            "super" => Target::Module(parent(module)),
            name => self
                .lookup(module, name, depth, name.starts_with(char::is_uppercase))
                .unwrap_or_else(|| Target::External(name.to_string())),
        };
        for seg in rest {
            current = match current {
                Target::Module(m) => match seg.as_str() {
                    "super" => Target::Module(parent(m)),
                    "self" => Target::Module(m),
                    name => self
                        .lookup(m, name, depth, true)
                        .unwrap_or_else(|| Target::Unresolved(written.clone())),
                },
                Target::External(p) => Target::External(format!("{p}::{seg}")),
                _ => Target::Unresolved(written.clone()),
            };
        }
        current
    }

    /// `name` in `module`'s namespace: a sub-module, an item, a `use`, a glob's, or a name a
    /// macro invocation there defines (when `generated` allows: not for a path's first
    /// segment in lower case, which names a crate).
    fn lookup(&self, module: usize, name: &str, depth: usize, generated: bool) -> Option<Target> {
        let m = &self.modules[module];
        if let Some(&child) = m.children.get(name) {
            return Some(Target::Module(child));
        }
        for (index, item) in m.items.iter().enumerate() {
            if declared(item).is_some_and(|(n, _)| n == name) {
                return Some(Target::Def(Def::Item { module, index }));
            }
        }
        // `#[macro_export]` macros live at the root, wherever they are defined.
        if module == 0 {
            for (id, m) in self.modules.iter().enumerate() {
                for (index, item) in m.items.iter().enumerate() {
                    if let syn::Item::Macro(mac) = item
                        && mac.ident.as_ref().is_some_and(|i| i == name)
                        && mac.attrs.iter().any(|a| a.path().is_ident("macro_export"))
                    {
                        return Some(Target::Def(Def::Item { module: id, index }));
                    }
                }
            }
        }
        let mut globs = Vec::new();
        for item in &m.items {
            let syn::Item::Use(u) = item else { continue };
            for leaf in use_leaves(&u.tree) {
                match &leaf.name {
                    Some(n) if n == name => {
                        return Some(self.resolve_at(module, &leaf.path, depth + 1));
                    }
                    None => globs.push(leaf.path),
                    _ => {}
                }
            }
        }
        for base in globs {
            if let Target::Module(b) = self.resolve_at(module, &base, depth + 1)
                && b != module
                && let Some(t) = self.lookup(b, name, depth + 1, false)
            {
                return Some(t);
            }
        }
        (generated && self.invokes_macros(module)).then(|| {
            Target::Def(Def::Generated {
                module,
                name: name.to_string(),
            })
        })
    }
}

fn parse(file: &Path) -> Result<syn::File, String> {
    let text =
        std::fs::read_to_string(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    syn::parse_file(&text).map_err(|e| format!("parsing {}: {e}", file.display()))
}
