//! The rotary frequencies each rope type defines, computed as transformers computes them
//! (float32, same formulas).

use crate::decoder::rope::{RopeConfig, RopeScaling};

impl RopeConfig {
    /// The inverse frequencies (`dim / 2` of them) for a pass whose longest position is
    /// `seq_len - 1`, and the factor cos/sin are multiplied by. Float32, as transformers.
    pub fn inv_freq(&self, seq_len: usize) -> (Vec<f32>, f32) {
        let (mut freqs, attention) = self.scaled_inv_freq(seq_len);
        if let Some(factors) = &self.freq_factors {
            // llama.cpp divides each frequency by its factor after the scaling.
            freqs.iter_mut().zip(factors).for_each(|(f, d)| *f /= d);
        }
        (freqs, attention)
    }

    /// The inverse frequencies of the rope type, before any frequency factors.
    fn scaled_inv_freq(&self, seq_len: usize) -> (Vec<f32>, f32) {
        let half = self.dim / 2;
        let base_freqs = |base: f64| -> Vec<f32> {
            (0..half)
                .map(|i| {
                    let exponent = (2 * i) as f32 / self.dim as f32;
                    1.0f32 / (base as f32).powf(exponent)
                })
                .collect()
        };
        match &self.scaling {
            RopeScaling::Default => (base_freqs(self.theta), 1.0),
            RopeScaling::Linear { factor } => {
                let f = *factor as f32;
                (
                    base_freqs(self.theta).into_iter().map(|x| x / f).collect(),
                    1.0,
                )
            }
            RopeScaling::Dynamic {
                factor,
                original_max_position_embeddings,
            } => {
                let original = *original_max_position_embeddings as f64;
                let seq = (seq_len as f64).max(original);
                let d = self.dim as f64;
                let base =
                    self.theta * ((factor * seq / original) - (factor - 1.0)).powf(d / (d - 2.0));
                (base_freqs(base), 1.0)
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let (factor, low, high) = (
                    *factor as f32,
                    *low_freq_factor as f32,
                    *high_freq_factor as f32,
                );
                let old = *original_max_position_embeddings as f32;
                let low_wavelen = old / low;
                let high_wavelen = old / high;
                let freqs = base_freqs(self.theta)
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        let scaled = if wavelen > low_wavelen { f / factor } else { f };
                        // Wavelengths are finite: "not below high and not above low" as transformers writes it.
                        let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                        if medium {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * scaled / factor + smooth * scaled
                        } else {
                            scaled
                        }
                    })
                    .collect();
                (freqs, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_max_position_embeddings,
                beta_fast,
                beta_slow,
                attention_factor,
                truncate,
            } => {
                let d = self.dim as f64;
                let base = self.theta;
                let correction_dim = |rotations: f64| {
                    (d * ((*original_max_position_embeddings as f64)
                        / (rotations * 2.0 * std::f64::consts::PI))
                        .ln())
                        / (2.0 * base.ln())
                };
                let (mut low, mut high) = (correction_dim(*beta_fast), correction_dim(*beta_slow));
                if *truncate {
                    low = low.floor();
                    high = high.ceil();
                }
                let low = low.max(0.0);
                let high = high.min(d - 1.0);
                let high = if low == high { high + 0.001 } else { high };
                let f = *factor as f32;
                let freqs = (0..half)
                    .map(|i| {
                        let pos_freq = (base as f32).powf((2 * i) as f32 / self.dim as f32);
                        let extrapolation = 1.0 / pos_freq;
                        let interpolation = 1.0 / (f * pos_freq);
                        let ramp =
                            ((i as f32 - low as f32) / (high as f32 - low as f32)).clamp(0.0, 1.0);
                        let extrapolation_factor = 1.0 - ramp;
                        interpolation * (1.0 - extrapolation_factor)
                            + extrapolation * extrapolation_factor
                    })
                    .collect();
                (freqs, *attention_factor as f32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::decoder::config_check::ConfigCheck;
    use crate::decoder::rope::RopeConfig;

    fn parse(json: serde_json::Value) -> crate::Result<RopeConfig> {
        RopeConfig::parse(&ConfigCheck::new("test"), &json, 16, 512, 10000.0)
    }

    #[test]
    fn scaled_frequencies_follow_their_formulas() {
        let default = parse(serde_json::json!({})).unwrap();
        let (f, s) = default.inv_freq(10);
        assert_eq!(s, 1.0);
        assert_eq!(f.len(), 8);
        assert!((f[1] - 1.0 / 10000f32.powf(2.0 / 16.0)).abs() < 1e-9);
        let linear =
            parse(serde_json::json!({"rope_scaling": {"type": "linear", "factor": 4.0}})).unwrap();
        assert!((linear.inv_freq(10).0[3] - f[3] / 4.0).abs() < 1e-12);
        // Dynamic: unchanged up to the original length, a larger base past it.
        let dynamic =
            parse(serde_json::json!({"rope_scaling": {"type": "dynamic", "factor": 2.0}})).unwrap();
        assert_eq!(dynamic.inv_freq(512).0, f);
        assert!(dynamic.inv_freq(2048).0[4] < f[4]);
        // Llama3: the highest frequency is kept, the lowest divided by the factor.
        let llama3 = parse(serde_json::json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}))
        .unwrap();
        let l = llama3.inv_freq(10).0;
        assert_eq!(l[0], f[0]);
        assert!((l[7] - f[7] / 8.0).abs() < 1e-12);
        // Yarn: attention factor from the default mscale formula.
        let yarn = parse(serde_json::json!({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}))
            .unwrap();
        let (y, s) = yarn.inv_freq(10);
        assert!((s - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
        assert_eq!(y[0], f[0]);
        assert!((y[7] - f[7] / 4.0).abs() < 1e-9);
    }
}
