//! The forms of `#[patch]` and `#[patchable]` that must compile and register what they say
//! (the forms that must not compile are trybuild cases in patch-core/tests/ui).

use patch_core::ModuleExt;
use patch_core::matching::Outcome;
use patch_core::{Build, Builder, PatchSet, Result, Site, patch, patchable};
use patchwork_tests::toy_config;
use toy_model::{LayerArgs, Mlp};

/// A generic replacement: registered through a concrete alias.
pub struct ScaledMlp<const N: u32>;
impl<const N: u32> Build for ScaledMlp<N> {
    type Slot = dyn Mlp;
    fn build(_: &Builder, _: LayerArgs<'_>) -> Result<Box<dyn Mlp>> {
        Ok(Box::new(ScaledMlp::<N>))
    }
}
impl<const N: u32> Mlp for ScaledMlp<N> {
    fn forward(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        x * f64::from(N)
    }
}

#[patch("^UpstreamMLP$", priority = -2, name = "tripled")]
pub type TripledMlp = ScaledMlp<3>;

/// A site whose upstream name differs from the Rust type's.
#[patchable(name = "UpstreamMLP")]
pub struct RenamedMlp;
impl Build for RenamedMlp {
    type Slot = dyn Mlp;
    fn build(_: &Builder, _: LayerArgs<'_>) -> Result<Box<dyn Mlp>> {
        Ok(Box::new(RenamedMlp))
    }
}
impl Mlp for RenamedMlp {
    fn forward(&self, x: &candle_core::Tensor) -> candle_core::Result<candle_core::Tensor> {
        Ok(x.clone())
    }
}

#[test]
fn a_type_alias_registers_a_concrete_instance_of_a_generic_replacement() {
    let set = PatchSet::link_time();
    let record = set
        .records()
        .iter()
        .find(|r| r.key() == "^UpstreamMLP$")
        .unwrap();
    assert_eq!(record.priority(), -2);
    assert_eq!(record.label(), Some("tripled"));
    assert_eq!(record.replacement().short_name(), "ScaledMlp<3>");
    assert!(matches!(
        set.resolve(RenamedMlp::info()).outcome,
        Outcome::Patched { .. }
    ));
}

#[test]
fn patchable_name_overrides_the_site_name_and_the_site_is_listed() {
    assert_eq!(RenamedMlp::NAME, "UpstreamMLP");
    let info = RenamedMlp::info();
    assert_eq!(info.name(), "UpstreamMLP");
    assert_eq!(info.slot(), "Mlp");
    assert_eq!(info.module_path(), "macro_forms");
    assert!(info.type_name().ends_with("RenamedMlp"));
    assert!(patch_core::sites().iter().any(|s| std::ptr::eq(*s, info)));
    assert_eq!(patch_core::sites_named("UpstreamMLP").count(), 1);
}

#[test]
fn building_the_renamed_site_with_link_time_patches_gives_the_alias() {
    let config = toy_config();
    let builder = Builder::new(patchwork_tests::toy_weights()).with_patches(PatchSet::link_time());
    let mlp = builder
        .build::<RenamedMlp>(LayerArgs {
            config: &config,
            layer_idx: 0,
        })
        .unwrap();
    assert!(mlp.is::<ScaledMlp<3>>());
}
