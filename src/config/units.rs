//! Durations and byte sizes as written by people.
//!
//! Durations are humantime strings: `"250ms"`, `"2s"`, `"5m"`, `"1h 30m"`.
//! A bare number is rejected (is `30` seconds or milliseconds?) with a
//! message asking for a unit, except `0`, which is unambiguous.
//!
//! Sizes are a whole number of bytes (`1024`) or a number with a unit,
//! following Redis' own `redis.conf` convention, case-insensitive:
//! `k` = 1000, `kb`/`kib` = 1024, `m` = 1000², `mb`/`mib` = 1024²,
//! `g` = 1000³, `gb`/`gib` = 1024³, `b` or nothing = bytes. So `"512mb"` is
//! 536870912.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// Parses a duration string (see the module docs for the rule).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; write e.g. \"250ms\", \"2s\" or \"5m\"".to_string());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return if text.bytes().all(|b| b == b'0') { Ok(Duration::ZERO) } else { Err(needs_unit(text)) };
    }
    humantime::parse_duration(text).map_err(|_| {
        format!("invalid duration \"{text}\"; write a number with a unit, e.g. \"250ms\", \"2s\" or \"5m\"")
    })
}

fn needs_unit(number: &str) -> String {
    format!("the duration {number} needs a unit, e.g. \"{number}s\" or \"{number}ms\" (only 0 may be written bare)")
}

/// Parses a byte size string (see the module docs for the units).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let digits_end = trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len());
    let (digits, unit) = trimmed.split_at(digits_end);
    if digits.is_empty() {
        return Err(format!(
            "invalid size \"{trimmed}\"; write bytes or a number with a unit, e.g. 1024, \"64kb\", \"512mb\""
        ));
    }
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" => 1000,
        "kb" | "kib" => 1 << 10,
        "m" => 1000 * 1000,
        "mb" | "mib" => 1 << 20,
        "g" => 1000 * 1000 * 1000,
        "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!("invalid size \"{trimmed}\": unknown unit \"{other}\" (use b, k, kb, m, mb, g or gb)"));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("size \"{trimmed}\" is too large"))
}

/// `deserialize_with` helper for [`Duration`] fields: a humantime string or
/// the bare integer `0`.
pub fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration with a unit, e.g. \"250ms\", \"2s\", \"5m\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            if v == 0 {
                Ok(Duration::ZERO)
            } else {
                Err(E::custom(needs_unit(&v.to_string())))
            }
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            match u64::try_from(v) {
                Ok(v) => self.visit_u64(v),
                Err(_) => Err(E::custom("a duration cannot be negative")),
            }
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Err(E::custom(format!("the duration {v} needs a unit and a whole number, e.g. \"1500ms\"")))
        }
    }

    deserializer.deserialize_any(DurationVisitor)
}

/// `deserialize_with` helper for byte-size fields: an integer number of
/// bytes or a string such as `"64kb"` or `"512mb"`.
pub fn byte_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    struct SizeVisitor;

    impl Visitor<'_> for SizeVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a size in bytes or with a unit, e.g. 1024, \"64kb\", \"512mb\"")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse_byte_size(v).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::custom("a size cannot be negative"))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            Err(E::custom(format!(
                "the size {v} must be a whole number of bytes or use a smaller unit, e.g. \"1536kb\""
            )))
        }
    }

    deserializer.deserialize_any(SizeVisitor)
}
