//! `--device cpu|cuda[:N]|metal[:N]`.

use candle_core::Device;

/// The device `name` names, or an error saying why not (unknown name, or support not compiled
/// into this build).
pub fn parse_device(name: &str) -> Result<Device, String> {
    let (kind, ordinal) = match name.split_once(':') {
        Some((kind, n)) => {
            let n: usize = n
                .parse()
                .map_err(|_| format!("--device {name}: {n:?} is not a device number"))?;
            (kind, n)
        }
        None => (name, 0),
    };
    match kind {
        "cpu" if ordinal == 0 => Ok(Device::Cpu),
        "cuda" => {
            if !candle_core::utils::cuda_is_available() {
                return Err(format!(
                    "--device {name}: this build has no CUDA support (build with `--features cuda`)"
                ));
            }
            Device::new_cuda(ordinal).map_err(|e| format!("--device {name}: {e}"))
        }
        "metal" => {
            if !candle_core::utils::metal_is_available() {
                return Err(format!(
                    "--device {name}: this build has no Metal support (build with `--features metal`)"
                ));
            }
            Device::new_metal(ordinal).map_err(|e| format!("--device {name}: {e}"))
        }
        _ => Err(format!(
            "--device {name}: unknown device (cpu, cuda, cuda:N, metal or metal:N)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_or_say_why_not() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert!(parse_device("tpu").unwrap_err().contains("unknown device"));
        assert!(
            parse_device("cuda:x")
                .unwrap_err()
                .contains("not a device number")
        );
        if !candle_core::utils::cuda_is_available() {
            assert!(
                parse_device("cuda:1")
                    .unwrap_err()
                    .contains("no CUDA support")
            );
        }
        if !candle_core::utils::metal_is_available() {
            assert!(
                parse_device("metal")
                    .unwrap_err()
                    .contains("no Metal support")
            );
        }
    }
}
