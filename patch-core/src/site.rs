//! Sites: layer types marked `#[patchable]`, recorded at link time.

use std::any::TypeId;
use std::sync::OnceLock;

use crate::matching::SiteKey;
use crate::{Build, Slot};

/// A layer type whose construction goes through the patch registry. Implemented by
/// `#[patchable]`; `NAME` is the upstream class name (`LlamaAttention`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a site: mark it `#[patchable]`",
    label = "not a `#[patchable]` type",
    note = "`#[patch(Type)]` names the site it replaces by its type; a string key (`#[patch(\"Name\")]`, or a regex) names sites by name"
)]
pub trait Site: Build {
    /// The name patches match against.
    const NAME: &'static str;

    /// The site's link-time record.
    fn info() -> &'static SiteInfo;
}

/// What the registry knows about a site: recorded at link time for every `#[patchable]` type
/// of every linked crate.
#[derive(Debug)]
pub struct SiteInfo {
    name: &'static str,
    slot: &'static str,
    slot_id: fn() -> TypeId,
    type_name: fn() -> &'static str,
    module_path: &'static str,
}

impl From<&SiteInfo> for SiteKey {
    fn from(info: &SiteInfo) -> SiteKey {
        SiteKey {
            name: info.name(),
            slot: info.slot(),
            slot_id: info.slot_id(),
        }
    }
}

impl SiteKey {
    /// The key of site `T`.
    pub fn of<T: Site>() -> SiteKey {
        SiteKey {
            name: T::NAME,
            slot: <T::Slot as Slot>::NAME,
            slot_id: TypeId::of::<T::Slot>(),
        }
    }
}

impl SiteInfo {
    /// The record of site `T`, defined in `module_path`.
    pub const fn of<T: Site>(module_path: &'static str) -> Self {
        Self::named::<T>(T::NAME, module_path)
    }

    /// The record of a site named `name` built by `T` (for sites described at run time, such
    /// as synthetic sites in benchmarks).
    pub const fn named<T: Build>(name: &'static str, module_path: &'static str) -> Self {
        Self {
            name,
            slot: <T::Slot as Slot>::NAME,
            slot_id: TypeId::of::<T::Slot>,
            type_name: std::any::type_name::<T>,
            module_path,
        }
    }

    /// The name patches match against (`LlamaAttention`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The name of the slot it fills (`Attention`).
    pub fn slot(&self) -> &'static str {
        self.slot
    }

    /// The identity of the slot it fills.
    pub fn slot_id(&self) -> TypeId {
        (self.slot_id)()
    }

    /// The Rust type implementing it (`patchwork_models::llama::LlamaAttention`).
    pub fn type_name(&self) -> &'static str {
        (self.type_name)()
    }

    /// The module it is defined in.
    pub fn module_path(&self) -> &'static str {
        self.module_path
    }
}

/// A site's record as `#[patchable]` submits it to the link-time list (not public API).
#[doc(hidden)]
pub struct SiteRegistration(pub &'static SiteInfo);

inventory::collect!(SiteRegistration);

/// Every site of every linked crate, sorted by name then module path.
pub fn sites() -> &'static [&'static SiteInfo] {
    static SITES: OnceLock<Vec<&'static SiteInfo>> = OnceLock::new();
    SITES.get_or_init(|| {
        let mut all: Vec<&'static SiteInfo> = inventory::iter::<SiteRegistration>
            .into_iter()
            .map(|r| r.0)
            .collect();
        all.sort_by_key(|s| (s.name, s.module_path));
        all
    })
}

/// The linked sites named `name` (usually one).
pub fn sites_named(name: &str) -> impl Iterator<Item = &'static SiteInfo> + '_ {
    sites().iter().copied().filter(move |s| s.name == name)
}
