//! Content versions: a resource's version is a hash of its bytes, so an unchanged
//! resource keeps its version across rebuilds and controller restarts and is not
//! pushed again.

/// FNV-1a, 64 bit: stable across processes and Rust versions, unlike `DefaultHasher`.
#[derive(Debug, Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    /// Mixes `bytes` in.
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The hash as 16 hex digits.
    pub fn hex(self) -> String {
        format!("{:016x}", self.0)
    }
}

/// The version of one encoded resource.
pub fn of_bytes(bytes: &[u8]) -> String {
    let mut h = Fnv::default();
    h.write(bytes);
    h.hex()
}

/// The version of a set of resources given as `(name, version)` pairs in name order:
/// used as a State-of-the-World `version_info`.
pub fn of_set<'a>(items: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut h = Fnv::default();
    for (name, version) in items {
        h.write(name.as_bytes());
        h.write(&[0]);
        h.write(version.as_bytes());
        h.write(&[0]);
    }
    h.hex()
}

#[cfg(test)]
mod tests {
    #[test]
    fn stable_and_sensitive() {
        assert_eq!(super::of_bytes(b"abc"), super::of_bytes(b"abc"));
        assert_ne!(super::of_bytes(b"abc"), super::of_bytes(b"abd"));
        assert_ne!(
            super::of_set([("a", "1"), ("b", "2")]),
            super::of_set([("a", "1b"), ("", "2")])
        );
    }
}
