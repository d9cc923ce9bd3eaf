//! Random identifiers in the shapes AWS uses.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    SystemRandom::new().fill(&mut buf).expect("the system RNG works");
    buf
}

/// A random (version 4) UUID, lowercase: the shape of Roles Anywhere ids.
pub(crate) fn uuid_v4() -> String {
    let mut b = random_bytes::<16>();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// `len` characters from `alphabet`, uniformly (rejection sampling).
fn random_string(alphabet: &[u8], len: usize) -> String {
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in random_bytes::<64>() {
            // The largest multiple of the alphabet size that fits in a byte.
            let limit = 256 - 256 % alphabet.len();
            if (b as usize) < limit && out.len() < len {
                out.push(alphabet[b as usize % alphabet.len()] as char);
            }
        }
    }
    out
}

const UPPER_ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const SECRET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// A temporary access key id: `ASIA` + 16 characters, as STS issues.
pub(crate) fn temporary_access_key_id() -> String {
    format!("ASIA{}", random_string(UPPER_ALNUM, 16))
}

/// A 40-character secret access key.
pub(crate) fn secret_access_key() -> String {
    random_string(SECRET, 40)
}

/// An opaque session token (real ones are a few hundred base64 characters).
pub(crate) fn session_token() -> String {
    random_string(SECRET, 356)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert_ne!(uuid_v4(), u);
        let k = temporary_access_key_id();
        assert!(k.starts_with("ASIA") && k.len() == 20, "{k}");
        assert_eq!(secret_access_key().len(), 40);
    }
}
