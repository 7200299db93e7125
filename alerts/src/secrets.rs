//! Credentials Vigil issues: device and clinician tokens, webhook signing secrets. Each is
//! a prefix and 32 random bytes in URL-safe base64; tokens are stored only as SHA-256,
//! which is enough for 256-bit random values and keeps per-call checks cheap.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rand::RngCore;
use sha2::{Digest, Sha256};

pub fn generate(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_and_hash_to_32_bytes() {
        let a = generate("vgd_");
        let b = generate("vgd_");
        assert_ne!(a, b);
        assert!(a.starts_with("vgd_"));
        assert_eq!(a.len(), 4 + 43);
        assert_eq!(hash(&a).len(), 32);
        assert_ne!(hash(&a), hash(&b));
    }
}
