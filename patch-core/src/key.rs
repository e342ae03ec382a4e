//! Patch keys: a site name or pattern, optionally restricted to module paths, and the compiled
//! path restriction.

use std::fmt;

use regex::Regex;

use crate::{Error, Result};

/// What a patch is registered under: a site name or pattern ([`SiteMatcher`](crate::SiteMatcher) rules), and
/// optionally a regular expression the module path must match (`re.search` semantics, like
/// the name: anchor with `^`/`$`). Two patches with the same name key and path are the same key.
///
/// A `&str` or `String` converts into the key with no path, so `register_patch_mapping([("LlamaAttention", ..)])`
/// reads as upstream's.
///
/// ```
/// use patch_core::PatchKey;
/// // Every projection whose path ends in q_proj or v_proj (PEFT's target_modules = ["q_proj", "v_proj"]):
/// let key = PatchKey::new("Linear").with_path(r"\.(q|v)_proj$");
/// assert_eq!(key.to_string(), r#""Linear" at /\.(q|v)_proj$/"#);
/// let plain: PatchKey = "LlamaAttention".into();
/// assert_eq!(plain.path(), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PatchKey {
    pub(crate) name: String,
    pub(crate) path: Option<String>,
}

impl PatchKey {
    /// The key matching sites named (or whose names match the pattern) `name`, at any path.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            path: None,
        }
    }

    /// This key restricted to module paths matching the regex `path`.
    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(path.into());
        self
    }

    /// The site name or pattern.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The module-path regex, if the key is restricted to paths.
    pub fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
}

impl From<&str> for PatchKey {
    fn from(name: &str) -> Self {
        Self::new(name)
    }
}

impl From<String> for PatchKey {
    fn from(name: String) -> Self {
        Self::new(name)
    }
}

impl From<&String> for PatchKey {
    fn from(name: &String) -> Self {
        Self::new(name.as_str())
    }
}

impl From<&PatchKey> for PatchKey {
    fn from(key: &PatchKey) -> Self {
        key.clone()
    }
}

impl PatchKey {
    /// How errors name the key: the name alone, or `name at /path/`.
    pub(crate) fn describe(&self) -> String {
        match &self.path {
            Some(path) => format!("{} at /{path}/", self.name),
            None => self.name.clone(),
        }
    }
}

impl fmt::Display for PatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.name)?;
        if let Some(path) = &self.path {
            write!(f, " at /{path}/")?;
        }
        Ok(())
    }
}

/// A module-path restriction, compiled.
#[derive(Clone, Debug)]
pub(crate) struct PathMatcher {
    pub(crate) source: String,
    regex: Regex,
}

impl PathMatcher {
    pub(crate) fn new(path: &str) -> Result<Self> {
        let regex = Regex::new(path).map_err(|e| Error::InvalidPattern {
            key: format!("path {path:?}"),
            message: e.to_string(),
        })?;
        Ok(Self {
            source: path.to_string(),
            regex,
        })
    }

    pub(crate) fn is_match(&self, path: &str) -> bool {
        self.regex.is_match(path)
    }
}
