/*!
The value parsers every setting goes through, whether it comes from a flag
or from the TOML file, so a bad value reads the same either way; and
[`format_size`], which writes a size back the way [`parse_size`] reads it.
*/
use std::time::Duration;

use super::{
    filters::FilterRule,
    labels::{OwnerLabel, ProcessKeyMode},
};

/// Human durations ("500ms", "2s", "5m").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e} (use a duration such as 500ms, 30s, 5m, 1h)"))
}

pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err("must be longer than zero".into());
    }
    Ok(d)
}

/// A share of one core, as a percentage ("0.5%", "2%"; the sign may be
/// left out): above 0 and at most 100 %, in millionths of a core.
pub fn parse_cpu_share(text: &str) -> Result<u32, String> {
    let bad = || "not a share of a core (use a percentage such as 0.5%)".to_string();
    let number = text.trim().trim_end_matches('%').trim();
    let percent: f64 = number.parse().map_err(|_| bad())?;
    if !percent.is_finite() || percent <= 0.0 || percent > 100.0 {
        return Err("must be above 0% and at most 100%".into());
    }
    let ppm = (percent * 10_000.0).round();
    if ppm < 1.0 {
        return Err("must be at least 0.0001%".into());
    }
    Ok(ppm as u32)
}

/// A share as [`parse_cpu_share`] reads it back.
pub fn format_cpu_share(ppm: u32) -> String {
    let text = format!("{:.4}", f64::from(ppm) / 10_000.0);
    format!("{}%", text.trim_end_matches('0').trim_end_matches('.'))
}

pub fn parse_reconcile_interval(text: &str) -> Result<Duration, String> {
    parse_min_100ms(text)
}

pub fn parse_min_100ms(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(d)
}

/// The ring size: bytes, or with a KiB/MiB suffix; a power of two of at
/// least 4096 (the kernel's rule for ring buffers).
pub fn parse_size(text: &str) -> Result<u32, String> {
    let (digits, unit) = match text.trim() {
        t if t.ends_with("MiB") => (&t[..t.len() - 3], 1u64 << 20),
        t if t.ends_with("KiB") => (&t[..t.len() - 3], 1u64 << 10),
        t => (t, 1u64),
    };
    let bytes = digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| "not a size (use bytes, or a number with KiB or MiB)".to_string())?;
    if bytes < 4096 || !bytes.is_power_of_two() || bytes > 1 << 30 {
        return Err("must be a power of two between 4KiB and 1024MiB".into());
    }
    Ok(bytes as u32)
}

/// The ring size as `parse_size` reads it back.
pub fn format_size(bytes: u32) -> String {
    match bytes {
        b if b % (1 << 20) == 0 => format!("{}MiB", b >> 20),
        b if b % (1 << 10) == 0 => format!("{}KiB", b >> 10),
        b => b.to_string(),
    }
}

pub fn parse_log_level(text: &str) -> Result<String, String> {
    let directives = normalize_directives(text);
    tracing_subscriber::EnvFilter::builder()
        .parse(&directives)
        .map(|_| directives.clone())
        .map_err(|e| format!("{e} (use error, warn, info, debug or trace)"))
}

/// Log filter directives with the blanks around each one removed. tracing's
/// directive parser finds positions in the trimmed text and cuts the
/// untrimmed one there, so blanks before a multi-byte character made it
/// panic (`"\t0¡="`, found by the fuzz loop); `RUST_LOG` goes through here
/// too.
pub fn normalize_directives(text: &str) -> String {
    text.split(',').map(str::trim).collect::<Vec<_>>().join(",")
}

pub fn parse_owner_label(text: &str) -> Result<OwnerLabel, String> {
    text.parse()
}

pub fn parse_process_key(text: &str) -> Result<ProcessKeyMode, String> {
    text.parse()
}

pub fn parse_filter_rule(text: &str) -> Result<FilterRule, String> {
    text.parse()
}

pub fn parse_max_connections(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e} (expected a number)")),
    }
}

/// `--track-after`: between 10ms and 10s (beyond a second a new socket shows
/// later than the contract's freshness).
pub fn parse_track_after(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_millis(10) || d > Duration::from_secs(10) {
        return Err("must be between 10ms and 10s".into());
    }
    Ok(d)
}

/// `--young-sockets`: between 64 and 1048576.
pub fn parse_young_sockets(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if (64..=1 << 20).contains(&n) => Ok(n),
        Ok(_) => Err("must be between 64 and 1048576".into()),
        Err(e) => Err(format!("{e} (expected a number)")),
    }
}

/// Entries of the kernel's stack sample map: 0 (no capture) to 65536
/// (each held sample is ~16 KiB of kernel memory).
pub fn parse_stack_samples(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if n <= 1 << 16 => Ok(n),
        Ok(_) => Err("must be between 0 and 65536".into()),
        Err(e) => Err(format!("{e} (expected a number)")),
    }
}

pub fn parse_watch_rule(text: &str) -> Result<super::WatchRule, String> {
    text.parse()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_levels_with_blanks_before_wide_characters_do_not_panic() {
        // Found by the fuzz loop: tracing-subscriber panicked on these.
        for text in ["\t0\u{a1}=", "info, \u{e9}=x", " \u{feff}="] {
            if let Ok(d) = parse_log_level(text) {
                assert!(!d.starts_with(char::is_whitespace), "{d:?}");
            }
        }
        assert_eq!(
            parse_log_level(" info , cwatch_daemon=debug").as_deref(),
            Ok("info,cwatch_daemon=debug")
        );
    }
}
