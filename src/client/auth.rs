//! The proxy's own users. Clients authenticate to tandem, never to the backends: backend
//! credentials come from the config. Passwords are kept only as SHA-256 digests and compared
//! in constant time.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// One user allowed to connect.
#[derive(Clone, Debug)]
pub struct User {
    digest: [u8; 32],
    pub read_only: bool,
}

/// The configured users; empty means authentication is off.
#[derive(Clone, Debug, Default)]
pub struct Users {
    users: HashMap<String, User>,
}

impl Users {
    /// Adds a user given its password in clear (from env or file).
    pub fn add_password(&mut self, name: &str, password: &str, read_only: bool) {
        self.users.insert(name.to_string(), User { digest: sha256(password.as_bytes()), read_only });
    }

    /// Adds a user given the SHA-256 of its password.
    pub fn add_digest(&mut self, name: &str, digest: [u8; 32], read_only: bool) {
        self.users.insert(name.to_string(), User { digest, read_only });
    }

    pub fn enabled(&self) -> bool {
        !self.users.is_empty()
    }

    /// The user, if `password` is its password.
    pub fn verify(&self, name: &[u8], password: &[u8]) -> Option<&User> {
        let candidate = sha256(password);
        // Hash even for unknown users so timing does not reveal which names exist.
        let user = std::str::from_utf8(name).ok().and_then(|n| self.users.get(n));
        let stored = user.map(|u| u.digest).unwrap_or([0xa5; 32]);
        let diff = stored.iter().zip(candidate.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if diff == 0 {
            user
        } else {
            None
        }
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifies_plain_and_digest_users() {
        let mut users = Users::default();
        users.add_password("app", "s3cret", false);
        users.add_digest("ro", sha256(b"reader"), true);
        assert!(users.verify(b"app", b"s3cret").is_some());
        assert!(users.verify(b"app", b"s3cret!").is_none());
        assert!(users.verify(b"nobody", b"s3cret").is_none());
        assert!(users.verify(b"ro", b"reader").unwrap().read_only);
    }
}
