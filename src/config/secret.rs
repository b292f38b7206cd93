//! [`Secret`]: a string that never prints itself.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};

/// A secret string: a backend password, a user password, a password hash or
/// an admin token.
///
/// Secrets are resolved once, at load time, from an environment variable or a
/// file named in the configuration; the configuration text itself never holds
/// a plaintext password. `Debug` and `Display` print `***`, so logging a
/// [`Config`](crate::config::Config) (or any part of it) cannot leak one. Call
/// [`Secret::expose`] only where the value is really needed (sending `AUTH`,
/// checking a client's password).
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// Returns the secret value. Keep the result out of logs and error
    /// messages.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares the secret with `candidate` in time that depends only on the
    /// lengths, not on where the first differing byte is.
    pub fn ct_eq(&self, candidate: &[u8]) -> bool {
        let mine = self.0.as_bytes();
        if mine.len() != candidate.len() {
            return false;
        }
        mine.iter().zip(candidate).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Deserializes from a string. Errors never quote the offending value.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;

        fn not_a_string<E: de::Error>() -> E {
            E::custom("expected a string (value not shown)")
        }

        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = Secret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Secret, E> {
                Ok(Secret::new(v))
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(not_a_string())
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(not_a_string())
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(not_a_string())
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(not_a_string())
            }

            fn visit_unit<E: de::Error>(self) -> Result<Secret, E> {
                Err(not_a_string())
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(not_a_string())
            }

            fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                Err(not_a_string())
            }
        }

        deserializer.deserialize_any(SecretVisitor)
    }
}
