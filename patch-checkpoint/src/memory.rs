//! How much memory an allocation can actually have: large allocations whose size comes from a
//! file or a flag are checked first, so that they end in an error naming the size instead of
//! an abort.
//!
//! The figure is, on Linux, `MemAvailable + SwapFree` from `/proc/meminfo`, lowered to what
//! the process's cgroup still allows (`memory.max - memory.current`); elsewhere nothing is
//! checked. `PATCHWORK_MEMORY_LIMIT` overrides it: a byte count, with an optional `K`, `M`,
//! `G` or `T` suffix (powers of 1024), or `off` to skip the checks.

use crate::{Error, Result};

/// Allocations below this size (64 MiB) are not checked: reading `/proc` costs more than they
/// risk.
pub const CHECK_ABOVE: u128 = 64 << 20;

/// The environment variable that overrides the available figure.
pub const LIMIT_VARIABLE: &str = "PATCHWORK_MEMORY_LIMIT";

/// Bytes that can be allocated now and where the figure comes from, or `None` when nothing
/// limits (unknown platform, or the check turned off).
pub fn available() -> Option<(u128, String)> {
    if let Ok(value) = std::env::var(LIMIT_VARIABLE) {
        let value = value.trim();
        if value.eq_ignore_ascii_case("off") {
            return None;
        }
        if let Some(bytes) = parse_size(value) {
            return Some((bytes, format!("{LIMIT_VARIABLE}={value}")));
        }
    }
    system_available()
}

/// `123`, `64K`, `1.5G`: bytes (powers of 1024), or `None`.
pub fn parse_size(text: &str) -> Option<u128> {
    let text = text.trim();
    let (number, scale) = match text.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return None,
            };
            (&text[..i], 1u128 << shift)
        }
        _ => (text, 1),
    };
    let number: f64 = number.trim().parse().ok()?;
    if !(0.0..1e30).contains(&number) {
        return None;
    }
    Some((number * scale as f64) as u128)
}

#[cfg(target_os = "linux")]
fn system_available() -> Option<(u128, String)> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u128> {
        let line = meminfo.lines().find(|l| l.starts_with(name))?;
        let kb: u128 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        kb.checked_mul(1024)
    };
    let mut best = (
        field("MemAvailable:")?.saturating_add(field("SwapFree:").unwrap_or(0)),
        "MemAvailable + SwapFree".to_string(),
    );
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let cgroup = match (
        read("/sys/fs/cgroup/memory.max"),
        read("/sys/fs/cgroup/memory.current"),
    ) {
        (Some(max), Some(current)) => max
            .trim()
            .parse::<u128>()
            .ok()
            .zip(current.trim().parse::<u128>().ok()),
        _ => None,
    };
    if let Some((max, current)) = cgroup {
        let left = max.saturating_sub(current);
        if left < best.0 {
            best = (left, "the cgroup's memory.max - memory.current".into());
        }
    }
    Some(best)
}

#[cfg(not(target_os = "linux"))]
fn system_available() -> Option<(u128, String)> {
    None
}

/// Fails with [`Error::Memory`] when `needed` bytes (above [`CHECK_ABOVE`]) exceed what is
/// available; `what` describes the allocation, `hint` how to need less (may be empty).
pub fn check(needed: u128, what: impl FnOnce() -> String, hint: &str) -> Result<()> {
    if needed < CHECK_ABOVE {
        return Ok(());
    }
    match available() {
        Some((available, limit_source)) if needed > available => Err(Error::Memory {
            what: what(),
            needed: u64::try_from(needed).unwrap_or(u64::MAX),
            available: u64::try_from(available).unwrap_or(u64::MAX),
            limit_source,
            hint: if hint.is_empty() {
                String::new()
            } else {
                format!("; {hint}")
            },
        }),
        _ => Ok(()),
    }
}

/// The bytes of `elements` values of `element_bytes` each, saturating (a size past `u128` is
/// past any memory anyway).
pub fn bytes_of(elements: u128, element_bytes: usize) -> u128 {
    elements.saturating_mul(element_bytes as u128)
}

/// `1.5 GiB`, `512 B`: a byte count for messages.
pub fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_size("123"), Some(123));
        assert_eq!(parse_size("64K"), Some(64 << 10));
        assert_eq!(parse_size("1.5g"), Some(3 << 29));
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn an_impossible_allocation_is_an_error_naming_it() {
        if available().is_none() {
            return;
        }
        let e = check(1 << 100, || "a test buffer".into(), "ask for less")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("a test buffer needs"), "{e}");
        assert!(e.ends_with("; ask for less"), "{e}");
        check(1 << 20, || unreachable!(), "").unwrap();
    }
}
