//! Short content hashes: lineages, window ids and change-topic schema versions.

use sha2::{Digest, Sha256};

/// 16 hex digits (64 bits) of the SHA-256 of `parts`, each length-prefixed: no two different
/// lists of parts hash the same bytes. (Lineages, window ids, schema versions.)
pub fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
