//! Choosing the next token from a row of logits: greedy, or a seeded draw after temperature,
//! top-k and top-p, in transformers' order.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::config::Sampling;

/// Picks tokens from logits.
pub(super) struct Sampler {
    sampling: Sampling,
    rng: Option<StdRng>,
}

impl Sampler {
    pub(super) fn new(sampling: &Sampling) -> Self {
        let rng = match sampling {
            Sampling::Greedy => None,
            Sampling::Sample { seed, .. } => Some(StdRng::seed_from_u64(*seed)),
        };
        Self {
            sampling: sampling.clone(),
            rng,
        }
    }

    pub(super) fn pick(&mut self, logits: &[f32]) -> u32 {
        match (&self.sampling, &mut self.rng) {
            (
                Sampling::Sample {
                    temperature,
                    top_k,
                    top_p,
                    ..
                },
                Some(rng),
            ) => {
                // Scaled after subtracting the maximum, in f64: however small the temperature,
                // the most likely token stays at 0 and the others go to -inf (greedy), never
                // to NaN.
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let mut scores: Vec<f64> = logits
                    .iter()
                    .map(|&l| (l as f64 - max) / temperature)
                    .collect();
                if let Some(k) = *top_k
                    && k < scores.len()
                {
                    let mut sorted = scores.clone();
                    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
                    let threshold = sorted[k - 1];
                    scores
                        .iter_mut()
                        .filter(|l| **l < threshold)
                        .for_each(|l| *l = f64::NEG_INFINITY);
                }
                let mut probs = softmax(&scores);
                if let Some(p) = *top_p {
                    let mut order: Vec<usize> = (0..probs.len()).collect();
                    order.sort_unstable_by(|&a, &b| probs[a].total_cmp(&probs[b]));
                    let mut cumulative = 0.0f64;
                    let last = order.len() - 1;
                    for (rank, &i) in order.iter().enumerate() {
                        cumulative += probs[i];
                        if cumulative <= 1.0 - p && rank != last {
                            scores[i] = f64::NEG_INFINITY;
                        }
                    }
                    probs = softmax(&scores);
                }
                let u: f64 = rng.random();
                let mut acc = 0.0;
                let mut chosen = argmax(logits);
                for (i, &p) in probs.iter().enumerate() {
                    if p > 0.0 {
                        acc += p;
                        chosen = i as u32;
                        if u < acc {
                            break;
                        }
                    }
                }
                chosen
            }
            _ => argmax(logits),
        }
    }
}

fn argmax(xs: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate() {
        if x > xs[best] {
            best = i;
        }
    }
    best as u32
}

fn softmax(xs: &[f64]) -> Vec<f64> {
    let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = xs.iter().map(|&x| (x - max).exp()).collect();
    let sum: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum() {
        let mut s = Sampler::new(&Sampling::Greedy);
        assert_eq!(s.pick(&[0.0, 3.0, 1.0, 3.0]), 1);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        for (k, p) in [(Some(1), None), (None, Some(1e-6))] {
            let mut s = Sampler::new(&Sampling::Sample {
                temperature: 0.7,
                top_k: k,
                top_p: p,
                seed: 3,
            });
            for _ in 0..20 {
                assert_eq!(s.pick(&[0.1, 2.0, 1.9, -1.0]), 1);
            }
        }
    }

    #[test]
    fn sampling_is_seeded_and_follows_the_distribution() {
        let draw = |seed| {
            let mut s = Sampler::new(&Sampling::Sample {
                temperature: 1.0,
                top_k: None,
                top_p: None,
                seed,
            });
            (0..2000)
                .map(|_| s.pick(&[0.0, (3.0f32).ln()]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
        let ones = draw(5).iter().filter(|&&t| t == 1).count() as f64 / 2000.0;
        assert!((ones - 0.75).abs() < 0.04, "{ones}");
    }

    #[test]
    fn top_k_excludes_the_tail() {
        let mut s = Sampler::new(&Sampling::Sample {
            temperature: 1.0,
            top_k: Some(2),
            top_p: None,
            seed: 1,
        });
        for _ in 0..200 {
            assert!(s.pick(&[1.0, 1.1, 0.9, 1.05]) != 2);
        }
    }
}
