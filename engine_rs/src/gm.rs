//! The national commercial cryptography (国密) the insurance platform signs and encrypts
//! with: SM3 hashing and HMAC-SM3 (GB/T 32905), SM2 signatures with SM3 (GB/T 32918, the
//! "SM3withSM2" of the national platform, user id `1234567812345678` by default) as the
//! 64-byte r||s the platform Base64-encodes, and the SM4 block cipher (GB/T 32907).
//!
//! Thin wrappers over RustCrypto's `sm2`, `sm3` and `sm4`; keys and signatures are plain
//! bytes so both sides of the Python boundary (and OpenSSL) can hold them.

use hmac::{Hmac, Mac};
use sm2::dsa::signature::{Signer, Verifier};
use sm2::dsa::{Signature, SigningKey, VerifyingKey};
use sm2::SecretKey;
use sm3::{Digest, Sm3};
use sm4::cipher::{generic_array::GenericArray, BlockDecrypt, BlockEncrypt, KeyInit};
use sm4::Sm4;

/// The user id (distinguishing identifier) the national platform signs with.
pub const DEFAULT_UID: &str = "1234567812345678";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GmError {
    /// A secret key that is not 32 bytes of a scalar in [1, n-1].
    SecretKey,
    /// A public key that is not a SEC1 point on the SM2 curve.
    PublicKey,
    /// A user id SM2 cannot take (longer than 8191 bytes).
    Uid,
    /// An SM4 key that is not 16 bytes, or data that is not whole 16-byte blocks.
    Sm4Length,
}

impl std::fmt::Display for GmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GmError::SecretKey => "secret key: not 32 bytes of a valid SM2 scalar",
            GmError::PublicKey => "public key: not a SEC1 point on the SM2 curve",
            GmError::Uid => "uid: too long for SM2 (at most 8191 bytes)",
            GmError::Sm4Length => "sm4: the key must be 16 bytes and the data whole 16-byte blocks",
        })
    }
}

impl std::error::Error for GmError {}

pub fn sm3(data: &[u8]) -> [u8; 32] {
    Sm3::digest(data).into()
}

pub fn hmac_sm3(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length (longer ones are hashed first).
    let mut mac = <Hmac<Sm3> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn secret_key(secret: &[u8]) -> Result<SecretKey, GmError> {
    // from_slice would also take a shorter slice, left-padded: a truncated key is an error.
    if secret.len() != 32 {
        return Err(GmError::SecretKey);
    }
    SecretKey::from_slice(secret).map_err(|_| GmError::SecretKey)
}

fn signing_key(secret: &[u8], uid: &str) -> Result<SigningKey, GmError> {
    SigningKey::new(uid, &secret_key(secret)?).map_err(|_| GmError::Uid)
}

/// The uncompressed SEC1 public key (65 bytes, 04 || x || y) of a 32-byte secret key.
pub fn sm2_public_key(secret: &[u8]) -> Result<Vec<u8>, GmError> {
    Ok(secret_key(secret)?.public_key().to_sec1_bytes().into_vec())
}

/// SM3withSM2 over `msg` (Z_A of `uid` and the public key prepended, as the standard
/// says): the 64-byte r || s.
pub fn sm2_sign(secret: &[u8], uid: &str, msg: &[u8]) -> Result<[u8; 64], GmError> {
    let sig: Signature = signing_key(secret, uid)?.sign(msg);
    Ok(sig.to_bytes())
}

/// Whether `sig` (r || s, 64 bytes) is a valid SM3withSM2 signature of `msg` by the
/// holder of `public` (SEC1, compressed or not) under `uid`. A malformed signature is
/// simply not valid; a malformed key or uid is an error (it is configuration, not input).
pub fn sm2_verify(public: &[u8], uid: &str, msg: &[u8], sig: &[u8]) -> Result<bool, GmError> {
    let vk = VerifyingKey::from_sec1_bytes(uid, public).map_err(|_| GmError::PublicKey)?;
    let Ok(sig) = Signature::try_from(sig) else {
        return Ok(false);
    };
    Ok(vk.verify(msg, &sig).is_ok())
}

fn sm4_blocks(key: &[u8], data: &[u8], encrypt: bool) -> Result<Vec<u8>, GmError> {
    if key.len() != 16 || data.len() % 16 != 0 {
        return Err(GmError::Sm4Length);
    }
    let cipher = Sm4::new(GenericArray::from_slice(key));
    let mut out = data.to_vec();
    for block in out.chunks_exact_mut(16) {
        let b = GenericArray::from_mut_slice(block);
        if encrypt {
            cipher.encrypt_block(b);
        } else {
            cipher.decrypt_block(b);
        }
    }
    Ok(out)
}

/// SM4 of whole 16-byte blocks, each on its own (ECB: the primitive, for known answers
/// and modes built on it; payloads use SM4-GCM).
pub fn sm4_encrypt_blocks(key: &[u8], data: &[u8]) -> Result<Vec<u8>, GmError> {
    sm4_blocks(key, data, true)
}

pub fn sm4_decrypt_blocks(key: &[u8], data: &[u8]) -> Result<Vec<u8>, GmError> {
    sm4_blocks(key, data, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn sm3_known_answers_gbt_32905() {
        // GB/T 32905-2016, appendix A, examples 1 and 2.
        assert_eq!(
            sm3(b"abc").to_vec(),
            hex("66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0")
        );
        assert_eq!(
            sm3(&b"abcd".repeat(16)).to_vec(),
            hex("debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732")
        );
    }

    #[test]
    fn sm4_known_answers_gbt_32907() {
        // GB/T 32907-2016, appendix A: one encryption, and the same block encrypted
        // 1,000,000 times with the same key.
        let key = hex("0123456789abcdeffedcba9876543210");
        let once = sm4_encrypt_blocks(&key, &key).unwrap();
        assert_eq!(once, hex("681edf34d206965e86b3e94f536e4246"));
        assert_eq!(sm4_decrypt_blocks(&key, &once).unwrap(), key);
        let mut block = key.clone();
        for _ in 0..1_000_000 {
            block = sm4_encrypt_blocks(&key, &block).unwrap();
        }
        assert_eq!(block, hex("595298c7c6fd271f0402f804c33d3f66"));
    }

    #[test]
    fn sm4_refuses_partial_blocks_and_short_keys() {
        assert_eq!(
            sm4_encrypt_blocks(&[0; 16], &[0; 15]),
            Err(GmError::Sm4Length)
        );
        assert_eq!(
            sm4_encrypt_blocks(&[0; 15], &[0; 16]),
            Err(GmError::Sm4Length)
        );
    }

    #[test]
    fn hmac_sm3_matches_its_definition() {
        // HMAC(K, m) = H((K ^ opad) || H((K ^ ipad) || m)) with a 64-byte block.
        let key = b"medsettle shared secret";
        let msg = b"fixmedins_code=H44010100001&msgid=1";
        let mut k = key.to_vec();
        k.resize(64, 0);
        let inner: Vec<u8> = k
            .iter()
            .map(|b| b ^ 0x36)
            .chain(msg.iter().copied())
            .collect();
        let outer: Vec<u8> = k.iter().map(|b| b ^ 0x5c).chain(sm3(&inner)).collect();
        assert_eq!(hmac_sm3(key, msg), sm3(&outer));
    }

    #[test]
    fn sm2_verifies_an_openssl_signature() {
        // Made with OpenSSL 3.0 (`openssl pkeyutl -sign -rawin -digest sm3 -pkeyopt
        // distid:1234567812345678`), DER converted to r || s; key d = 1..32 below.
        let secret: Vec<u8> = (1..=32).collect();
        let public = sm2_public_key(&secret).unwrap();
        assert_eq!(public, hex(OPENSSL_PUB));
        let msg = b"medsettle";
        let sig = hex(OPENSSL_SIG);
        assert!(sm2_verify(&public, DEFAULT_UID, msg, &sig).unwrap());
        assert!(!sm2_verify(&public, DEFAULT_UID, b"medsettlf", &sig).unwrap());
        assert!(!sm2_verify(&public, "another uid", msg, &sig).unwrap());
    }

    const OPENSSL_SIG: &str = concat!(
        "b3284c6734b496fe2dc977b3236d980eb5ba0cddaa477b9d197db26f12b77efd",
        "76621f9eb789eb78afd0218b113d5a81798bfdd98a6624f84935e6f1960b309a"
    );
    const OPENSSL_PUB: &str = concat!(
        "0446d1086f6e5c938447f05280db707c279a7b459c38f19e4d9a30ad2dadf9f28a",
        "f45fc1dc5b377736b57e97e7e0563ccca24c97f440e1d137e5941d84d2eb43c9"
    );

    #[test]
    fn sm2_sign_then_verify_and_refusals() {
        let secret: Vec<u8> = (1..=32).collect();
        let public = sm2_public_key(&secret).unwrap();
        let sig = sm2_sign(&secret, DEFAULT_UID, b"settle 1").unwrap();
        assert!(sm2_verify(&public, DEFAULT_UID, b"settle 1", &sig).unwrap());
        assert!(!sm2_verify(&public, DEFAULT_UID, b"settle 2", &sig).unwrap());
        let mut bad = sig;
        bad[10] ^= 1;
        assert!(!sm2_verify(&public, DEFAULT_UID, b"settle 1", &bad).unwrap());
        assert!(!sm2_verify(&public, DEFAULT_UID, b"settle 1", &sig[..63]).unwrap());
        assert_eq!(
            sm2_sign(&[0; 32], DEFAULT_UID, b"x"),
            Err(GmError::SecretKey)
        );
        assert_eq!(
            sm2_sign(&[1; 31], DEFAULT_UID, b"x"),
            Err(GmError::SecretKey)
        );
        assert_eq!(
            sm2_verify(&[4; 65], DEFAULT_UID, b"x", &sig),
            Err(GmError::PublicKey)
        );
    }
}
