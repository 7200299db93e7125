//! Credentials in Mosquitto's own verifier format, so the broker checks MQTT passwords
//! without Vigil keeping any token in clear.

use base64::{Engine, engine::general_purpose::STANDARD};
use rand::RngCore;
use sha2::Sha512;

/// Mosquitto's `mosquitto_passwd` default. The passwords are 256-bit random tokens, so the
/// iteration count adds nothing against guessing; a low count keeps connects cheap.
const ITERATIONS: u32 = 101;
const SALT_BYTES: usize = 12;

/// `$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>`, as `mosquitto_passwd` writes.
pub fn broker_hash(password: &str) -> String {
    let mut salt = [0u8; SALT_BYTES];
    rand::rng().fill_bytes(&mut salt);
    hash_with_salt(password, &salt, ITERATIONS)
}

fn hash_with_salt(password: &str, salt: &[u8], iterations: u32) -> String {
    let mut out = [0u8; 64];
    pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), salt, iterations, &mut out);
    format!(
        "$7${iterations}${}${}",
        STANDARD.encode(salt),
        STANDARD.encode(out)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_what_mosquitto_passwd_writes() {
        // `mosquitto_passwd -b pw dev1 secret1` (Mosquitto 2.0.11) wrote this line.
        let expected = "$7$101$4WCYcI/T23IEVDQC$9/rWmx4lYIGUKWWjSvwhTo27YGeK2lOnebyUrXJWB8+1uVHNHxSfugBnKuPwSfJVvnKS0p8j6Yhk4V9ShPDY6A==";
        let salt = STANDARD.decode("4WCYcI/T23IEVDQC").expect("salt");
        assert_eq!(hash_with_salt("secret1", &salt, 101), expected);
    }

    #[test]
    fn each_hash_has_its_own_salt() {
        let a = broker_hash("vgd_same");
        let b = broker_hash("vgd_same");
        assert_ne!(a, b);
        assert!(a.starts_with("$7$101$"));
        assert_eq!(a.split('$').count(), 5);
    }
}
