//! What the patch registry costs: resolving 1,000 sites against 1,000 registered patterns
//! (first resolution and cached), and building a 48-layer model with 1,000 patterns registered
//! against the same build with none.
//!
//! Run: `cargo bench -p patchwork-tests --bench registry_cost`

use std::hint::black_box;
use std::time::{Duration, Instant};

use patch_core::matching::SiteKey;
use patch_core::{Builder, PatchSet, Replacement, SiteInfo};
use patchwork_tests::replacements::{DoubledAttention, IdentityMlp, NoNorm, ZeroMlp};
use patchwork_tests::toy_weights;
use toy_model::{ToyConfig, ToyMLP, ToyModel};

const SITES: usize = 1000;
const PATTERNS: usize = 1000;

/// 1,000 patterns in the styles people write: exact names, suffixes, alternations, anchors.
/// About 1 in 50 matches one of the synthetic sites; none matches the toy model's sites.
fn patterns() -> PatchSet {
    let mapping = (0..PATTERNS).map(|i| {
        let (key, replacement) = match i % 4 {
            0 => (
                format!("^Family{i}Attention$"),
                Replacement::of::<DoubledAttention>(),
            ),
            1 => (
                format!("Family{i}(Sparse)?Moe.*Experts$"),
                Replacement::of::<IdentityMlp>(),
            ),
            2 => (format!("Family{i}RMSNorm"), Replacement::of::<NoNorm>()),
            _ => (
                format!("^Family{}Layer\\d+MLP$", i * 7),
                Replacement::of::<ZeroMlp>(),
            ),
        };
        (key, replacement)
    });
    PatchSet::from_mapping(mapping).expect("the bench patterns are valid")
}

fn synthetic_sites() -> Vec<SiteKey> {
    let template = SiteInfo::named::<ToyMLP>("template", "bench");
    (0..SITES)
        .map(|i| {
            let name: &'static str =
                Box::leak(format!("Family{}Layer{}MLP", i % 143 * 7, i).into_boxed_str());
            SiteKey {
                name,
                slot: template.slot(),
                slot_id: template.slot_id(),
            }
        })
        .collect()
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn time<R>(repeats: usize, mut f: impl FnMut() -> R) -> Duration {
    median(
        (0..repeats)
            .map(|_| {
                let start = Instant::now();
                black_box(f());
                start.elapsed()
            })
            .collect(),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let sites = synthetic_sites();
    let start = Instant::now();
    let set = patterns();
    let register = start.elapsed();

    // Resolution: the first time on a fresh set (empty cache), then cached lookups.
    let cold = median(
        (0..5)
            .map(|_| {
                let fresh = patterns();
                let start = Instant::now();
                for s in &sites {
                    black_box(fresh.resolve(*s));
                }
                start.elapsed()
            })
            .collect(),
    );
    for s in &sites {
        set.resolve(*s);
    }
    let warm = time(20, || {
        for s in &sites {
            black_box(set.resolve(*s));
        }
    });
    let matched = sites
        .iter()
        .filter(|s| {
            matches!(
                set.resolve(**s).outcome,
                patch_core::matching::Outcome::Patched { .. }
            )
        })
        .count();

    println!("registry cost: {SITES} sites x {PATTERNS} patterns ({matched} sites patched)");
    println!(
        "  register {PATTERNS} patterns            {:>9.3} ms",
        ms(register)
    );
    println!(
        "  resolve {SITES} sites, first time      {:>9.3} ms  ({:.2} us/site)",
        ms(cold),
        ms(cold) * 1e3 / SITES as f64
    );
    println!(
        "  resolve {SITES} sites, cached          {:>9.3} ms  ({:.3} us/site, {:.0}x faster)",
        ms(warm),
        ms(warm) * 1e3 / SITES as f64,
        cold.as_secs_f64() / warm.as_secs_f64()
    );

    // A 48-layer model (5 sites per layer, 241 site builds) with no patterns, then with the
    // 1,000 patterns: first build of a fresh set (resolutions computed) and repeated builds.
    let config = ToyConfig {
        hidden_size: 8,
        intermediate_size: 16,
        num_layers: 48,
    };
    let weights = toy_weights();
    let build = |set: &PatchSet| {
        ToyModel::build(
            &Builder::new(weights.clone()).with_patches(set.clone()),
            &config,
        )
    };
    build(&PatchSet::empty()).expect("the toy model builds");
    let none = time(15, || build(&PatchSet::empty()));
    let first = median(
        (0..5)
            .map(|_| {
                let fresh = patterns();
                let start = Instant::now();
                black_box(build(&fresh)).expect("builds");
                start.elapsed()
            })
            .collect(),
    );
    let many = patterns();
    build(&many).expect("builds");
    let repeated = time(15, || build(&many));
    println!("48-layer model build (241 sites), median");
    println!("  no patterns                         {:>9.3} ms", ms(none));
    println!(
        "  {PATTERNS} patterns, first build         {:>9.3} ms  (+{:.3} ms, {:.2}x)",
        ms(first),
        ms(first) - ms(none),
        first.as_secs_f64() / none.as_secs_f64()
    );
    println!(
        "  {PATTERNS} patterns, repeated build      {:>9.3} ms  (+{:.3} ms, {:.2}x)",
        ms(repeated),
        ms(repeated) - ms(none),
        repeated.as_secs_f64() / none.as_secs_f64()
    );
}
