//! How adapters are read, and the adapter one forward call applies.

use candle_core::Device;

/// How adapters are read.
#[derive(Clone, Debug)]
pub struct LoraOptions {
    pub(crate) trainable: bool,
    pub(crate) device: Device,
    pub(crate) seed: u64,
}

impl Default for LoraOptions {
    fn default() -> Self {
        Self {
            trainable: false,
            device: Device::Cpu,
            seed: 0,
        }
    }
}

impl LoraOptions {
    /// The adapter matrices (and saved modules) as trainable `Var`s
    /// ([`LoraAdapters::vars`](crate::LoraAdapters::vars), [`LoraAdapters::gradients`](crate::LoraAdapters::gradients)). Load the base without
    /// `LoadOptions::trainable` to keep it frozen: no gradient reaches its weights and none of
    /// them becomes a `Var`.
    pub fn trainable(mut self) -> Self {
        self.trainable = true;
        self
    }

    /// The seed new adapters' `A` matrices are drawn from ([`LoraAdapters::new_adapters`](crate::LoraAdapters::new_adapters); 0
    /// by default).
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The device the adapters' tensors live on (the model's; CPU by default).
    pub fn with_device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }
}

/// The adapter one forward call applies, whatever the model's active one is: put it in
/// `ForwardOptions::extensions` (`ActiveAdapter(None)`: the base alone).
///
/// ```
/// use patchwork_lora::ActiveAdapter;
/// use patchwork_models::ForwardOptions;
/// use patchwork_models::decoder::Extensions;
///
/// let options = ForwardOptions {
///     extensions: Extensions::new().with(ActiveAdapter::named("sql")),
///     ..ForwardOptions::default()
/// };
/// # let _ = options;
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveAdapter(pub Option<String>);

impl ActiveAdapter {
    /// The adapter named `name`.
    pub fn named(name: impl Into<String>) -> Self {
        Self(Some(name.into()))
    }

    /// No adapter: the base model.
    pub fn none() -> Self {
        Self(None)
    }
}
