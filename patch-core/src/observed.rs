//! Built modules wrapped so that a model can observe their outputs: what the builder hands back
//! for slots that ask for it ([`Slot::observe`](crate::Slot::observe)).

use std::any::Any;
use std::sync::Arc;

use crate::Module;

/// Which built site a module is: its position in the build report, its path and its site name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedSite {
    /// Index of the site in [`BuildReport::sites`](crate::BuildReport::sites).
    pub index: usize,
    /// Dotted module path (`model.layers.0.self_attn`).
    pub path: Arc<str>,
    /// The site's name (`LlamaAttention`), whichever type was built there.
    pub site: &'static str,
}

/// A built module and the site it was built at. A slot whose outputs a model records
/// implements its trait for `Observed<dyn ThatSlot>` (forward to [`Observed::inner`], then
/// record) and returns one from [`Slot::observe`](crate::Slot::observe).
///
/// Transparent to type checks: [`Module::type_name`], `is` and `downcast_ref` see the module
/// inside, so `layer.self_attn.is::<CustomLlamaAttention>()` holds through the wrapper.
pub struct Observed<S: ?Sized> {
    inner: Box<S>,
    site: ObservedSite,
}

impl<S: ?Sized> Observed<S> {
    /// `inner`, built at `site`.
    pub fn new(inner: Box<S>, site: ObservedSite) -> Self {
        Self { inner, site }
    }

    /// The module.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The module, mutably.
    pub fn inner_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Where it was built.
    pub fn site(&self) -> &ObservedSite {
        &self.site
    }
}

// Not suggested in diagnostics: a missing `Build` impl is the fix users need, not this wrapper.
#[diagnostic::do_not_recommend]
impl<S: ?Sized + Module> Module for Observed<S> {
    fn type_name(&self) -> &'static str {
        self.inner.type_name()
    }

    fn as_any(&self) -> &dyn Any {
        self.inner.as_any()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self.inner.as_any_mut()
    }

    fn children<'a>(&'a self, visit: &mut dyn FnMut(&str, &'a dyn Module)) {
        self.inner.children(visit)
    }

    fn wrapped(&self) -> Option<&dyn Module> {
        self.inner.wrapped()
    }
}
