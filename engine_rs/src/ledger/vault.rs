//! Personal data at rest, as the ledger seals and opens it: byte for byte the format of
//! `server/security/pii.py` (`Vault`), so a value sealed by either side opens on the other.
//!
//! A sealed value is `version (1 byte) || nonce (12) || ciphertext || tag (16)`: version 1
//! AES-256-GCM under the 32-byte seal key, version 2 SM4-GCM under its first 16 bytes. The
//! associated data `medsettle/pii/1|<field>|<owner>` binds a value to its field and owner,
//! so one copied onto another row or field does not open. Either version opens whatever
//! this vault seals with now; nonces are fresh random ones (getrandom).

use aes_gcm::aead::consts::U12;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, AesGcm, Nonce};

pub const AES_256_GCM: u8 = 1;
pub const SM4_GCM: u8 = 2;
const NONCE: usize = 12;
const TAG: usize = 16;

type Sm4Gcm = AesGcm<sm4::Sm4, U12>;

/// Why a sealed value did not open (or a value could not be sealed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultError(pub String);

impl std::fmt::Display for VaultError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The seal key's two ciphers and the version new values are sealed with.
pub struct Vault {
    aes: Aes256Gcm,
    sm4: Sm4Gcm,
    version: u8,
}

fn aad(field: &str, owner: &str) -> Vec<u8> {
    format!("medsettle/pii/1|{field}|{owner}").into_bytes()
}

impl Vault {
    /// `seal_key` is the derived `pii_seal` key (32 bytes); `version` what new values use.
    pub fn new(seal_key: &[u8], version: u8) -> Result<Self, VaultError> {
        if seal_key.len() != 32 {
            return Err(VaultError("the seal key is 32 bytes".into()));
        }
        if version != AES_256_GCM && version != SM4_GCM {
            return Err(VaultError(format!("unknown seal version {version}")));
        }
        let aes = Aes256Gcm::new_from_slice(seal_key)
            .map_err(|_| VaultError("the seal key is 32 bytes".into()))?;
        let sm4 = Sm4Gcm::new_from_slice(&seal_key[..16])
            .map_err(|_| VaultError("an SM4 key is 16 bytes".into()))?;
        Ok(Self { aes, sm4, version })
    }

    /// `data` sealed for `field` of `owner` with a fresh nonce.
    pub fn seal(&self, field: &str, owner: &str, data: &[u8]) -> Result<Vec<u8>, VaultError> {
        let mut nonce = [0u8; NONCE];
        getrandom::getrandom(&mut nonce)
            .map_err(|e| VaultError(format!("no random nonce: {e}")))?;
        self.seal_with_nonce(field, owner, data, &nonce)
    }

    /// `seal` with a given nonce (known-answer tests; never reuse a nonce with a key).
    pub fn seal_with_nonce(
        &self,
        field: &str,
        owner: &str,
        data: &[u8],
        nonce: &[u8; NONCE],
    ) -> Result<Vec<u8>, VaultError> {
        let aad = aad(field, owner);
        let payload = Payload {
            msg: data,
            aad: &aad,
        };
        let n = Nonce::<U12>::from_slice(nonce);
        let body = if self.version == SM4_GCM {
            self.sm4.encrypt(n, payload)
        } else {
            self.aes.encrypt(n, payload)
        }
        .map_err(|_| VaultError(format!("{field} of {owner}: too long to seal")))?;
        let mut out = Vec::with_capacity(1 + NONCE + body.len());
        out.push(self.version);
        out.extend_from_slice(nonce);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// The clear bytes of a sealed value of `field` of `owner`.
    pub fn open(&self, field: &str, owner: &str, sealed: &[u8]) -> Result<Vec<u8>, VaultError> {
        let Some((&version, rest)) = sealed.split_first() else {
            return Err(VaultError(format!("{field} of {owner}: empty")));
        };
        if version != AES_256_GCM && version != SM4_GCM {
            return Err(VaultError(format!(
                "{field} of {owner}: unknown version {version}"
            )));
        }
        let fail = || {
            VaultError(format!(
                "{field} of {owner}: does not open (moved, damaged or another key)"
            ))
        };
        if rest.len() < NONCE + TAG {
            return Err(fail());
        }
        let aad = aad(field, owner);
        let (nonce, body) = rest.split_at(NONCE);
        let payload = Payload {
            msg: body,
            aad: &aad,
        };
        let n = Nonce::<U12>::from_slice(nonce);
        if version == SM4_GCM {
            self.sm4.decrypt(n, payload)
        } else {
            self.aes.decrypt(n, payload)
        }
        .map_err(|_| fail())
    }

    /// `open` for text (names, diagnoses): the bytes must be UTF-8.
    pub fn open_text(&self, field: &str, owner: &str, sealed: &[u8]) -> Result<String, VaultError> {
        String::from_utf8(self.open(field, owner, sealed)?)
            .map_err(|_| VaultError(format!("{field} of {owner}: not UTF-8")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7u8; 32];

    #[test]
    fn both_versions_round_trip_and_open_each_other() {
        let aes = Vault::new(&KEY, AES_256_GCM).unwrap();
        let sm4 = Vault::new(&KEY, SM4_GCM).unwrap();
        for (sealer, version) in [(&aes, AES_256_GCM), (&sm4, SM4_GCM)] {
            let sealed = sealer.seal("psn_name", "P1", "张三".as_bytes()).unwrap();
            assert_eq!(sealed[0], version);
            assert_eq!(sealed.len(), 1 + 12 + "张三".len() + 16);
            for opener in [&aes, &sm4] {
                assert_eq!(opener.open_text("psn_name", "P1", &sealed).unwrap(), "张三");
            }
        }
    }

    #[test]
    fn a_value_moved_to_another_owner_or_field_or_damaged_does_not_open() {
        let v = Vault::new(&KEY, AES_256_GCM).unwrap();
        let sealed = v.seal("psn_name", "P1", b"x").unwrap();
        assert!(v.open("psn_name", "P2", &sealed).is_err());
        assert!(v.open("psn_cert_no", "P1", &sealed).is_err());
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(v.open("psn_name", "P1", &bad).is_err());
        assert!(v.open("psn_name", "P1", &[]).is_err());
        assert!(v.open("psn_name", "P1", &[9, 0, 0]).is_err());
        assert!(v.open("psn_name", "P1", &sealed[..20]).is_err());
    }

    #[test]
    fn sm4_gcm_matches_the_rfc_8998_known_answer() {
        // RFC 8998 appendix A.1 (SM4-GCM): key, IV, AAD, plaintext -> ciphertext || tag.
        let key = hex("0123456789ABCDEFFEDCBA9876543210");
        let nonce: [u8; 12] = hex("00001234567800000000ABCD").try_into().unwrap();
        let aad_ = hex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2");
        let pt = hex(
            "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD\
             EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA",
        );
        let want = hex(
            "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735\
             D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D\
             83DE3541E4C2B58177E065A9BF7B62EC",
        );
        let cipher = Sm4Gcm::new_from_slice(&key).unwrap();
        let got = cipher
            .encrypt(
                Nonce::<U12>::from_slice(&nonce),
                Payload {
                    msg: &pt,
                    aad: &aad_,
                },
            )
            .unwrap();
        assert_eq!(got, want);
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
}
