//! Encryption of stored secrets: AES-256-GCM under `ENCRYPTION_KEY`.
//!
//! Tenant credentials (and later encrypted sink fields) are stored as text in this format:
//!
//! ```text
//! v1:<key id>:<base64(nonce ‖ ciphertext ‖ tag)>
//! ```
//!
//! - a random 96-bit nonce per value (never reused under one key: 2^32 values per key keeps the
//!   collision chance negligible);
//! - the key id is the first 8 hex characters of SHA-256(key): it names the key without revealing
//!   it, so a [`Keyring`] holding the current key and the previous one (`ENCRYPTION_KEY_PREVIOUS`)
//!   can read values written under either while new values use the current one;
//! - associated data binds a value to where it is stored (e.g. `tenant_credentials/acme/twilio`),
//!   so a ciphertext copied into another row fails to decrypt.
//!
//! Values stored as bytes rather than text (archived request bodies) use the binary form of the
//! same thing, without base64: `v1b:<key id>:` then nonce ‖ ciphertext ‖ tag
//! ([`Keyring::seal`]); [`Keyring::open`] reads both forms.

use aes_gcm::aead::{Aead, AeadInOut, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};

const VERSION: &str = "v1";

/// The binary form's prefix ([`Keyring::seal`]), before `<key id>:`.
const BINARY: &[u8] = b"v1b:";

/// AES-GCM's nonce, before the ciphertext.
const NONCE_LEN: usize = 12;

/// AES-GCM's authentication tag, appended to the ciphertext.
const TAG_LEN: usize = 16;

/// Why a value could not be encrypted or decrypted. Never carries key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    #[error("the key must be exactly 64 hex characters (32 bytes)")]
    BadKey,
    #[error(
        "not an encrypted value (expected v1:<key id>:<data>, or for an archived body v1b:<key id>: and the sealed bytes): the stored value was not written by the engine, or was cut or edited"
    )]
    Format,
    #[error("encrypted with key {0}, which is neither ENCRYPTION_KEY nor ENCRYPTION_KEY_PREVIOUS")]
    UnknownKey(String),
    #[error("decryption failed: wrong key, or the value was altered or moved")]
    Decrypt,
}

/// One AES-256 key and its id.
#[derive(Clone)]
struct KeyEntry {
    id: String,
    cipher: Aes256Gcm,
}

impl KeyEntry {
    fn from_hex(hex_key: &str) -> Result<KeyEntry, CryptoError> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| CryptoError::BadKey)?;
        if bytes.len() != 32 {
            return Err(CryptoError::BadKey);
        }
        let id = hex::encode(&Sha256::digest(&bytes)[..4]);
        let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| CryptoError::BadKey)?;
        Ok(KeyEntry { id, cipher })
    }
}

/// The current key, and older keys still accepted for reading.
#[derive(Clone)]
pub struct Keyring {
    current: KeyEntry,
    previous: Vec<KeyEntry>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field(
                "previous",
                &self.previous.iter().map(|k| &k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    /// From hex keys: the current one and any previous ones.
    pub fn new(current: &str, previous: &[&str]) -> Result<Keyring, CryptoError> {
        Ok(Keyring {
            current: KeyEntry::from_hex(current)?,
            previous: previous
                .iter()
                .map(|k| KeyEntry::from_hex(k))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Id of the key new values are written under.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// Encrypt `plaintext`, bound to `context`.
    pub fn encrypt(&self, plaintext: &[u8], context: &str) -> String {
        let data = self.seal_after(
            Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN),
            plaintext,
            context,
        );
        let id = &self.current.id;
        let text = base64::encoded_len(data.len(), true).unwrap_or_default();
        let mut out = String::with_capacity(VERSION.len() + id.len() + 2 + text);
        out.push_str(VERSION);
        out.push(':');
        out.push_str(id);
        out.push(':');
        STANDARD.encode_string(&data, &mut out);
        out
    }

    /// Encrypt `plaintext`, bound to `context`, in the binary form (`v1b:<key id>:` and the raw
    /// nonce ‖ ciphertext ‖ tag): for values stored as bytes (archived bodies), where base64 was
    /// a third more bytes and the larger part of the sealing's CPU. [`Keyring::open`] reads it.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Vec<u8> {
        let id = self.current.id.as_bytes();
        let mut out =
            Vec::with_capacity(BINARY.len() + id.len() + 1 + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(BINARY);
        out.extend_from_slice(id);
        out.push(b':');
        self.seal_after(out, plaintext, context)
    }

    /// `out` with nonce ‖ ciphertext ‖ tag appended: a fresh random nonce, the plaintext copied
    /// once and sealed in place (an archived body is sealed on every event, and growing buffers
    /// by doubling was a tenth of the worker's fresh pages under load).
    fn seal_after(&self, mut out: Vec<u8>, plaintext: &[u8], context: &str) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the OS random generator is available");
        let start = out.len() + NONCE_LEN;
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .current
            .cipher
            .encrypt_inout_detached(
                &Nonce::from(nonce),
                context.as_bytes(),
                (&mut out[start..]).into(),
            )
            .expect("AES-GCM encryption cannot fail for in-memory buffers");
        out.extend_from_slice(&tag);
        out
    }

    /// Decrypt a value in either form, text ([`Keyring::encrypt`]) or binary
    /// ([`Keyring::seal`]), with the `context` it was sealed to.
    pub fn open(&self, value: &[u8], context: &str) -> Result<Vec<u8>, CryptoError> {
        let Some(rest) = value.strip_prefix(BINARY) else {
            let text = std::str::from_utf8(value).map_err(|_| CryptoError::Format)?;
            return self.decrypt(text, context);
        };
        let colon = rest
            .iter()
            .position(|&b| b == b':')
            .ok_or(CryptoError::Format)?;
        let id = std::str::from_utf8(&rest[..colon]).map_err(|_| CryptoError::Format)?;
        self.open_data(id, &rest[colon + 1..], context)
    }

    /// Decrypt a value written by [`Keyring::encrypt`] with the same `context`.
    pub fn decrypt(&self, value: &str, context: &str) -> Result<Vec<u8>, CryptoError> {
        let mut parts = value.trim().splitn(3, ':');
        let (Some(VERSION), Some(id), Some(data)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(CryptoError::Format);
        };
        let data = STANDARD.decode(data).map_err(|_| CryptoError::Format)?;
        self.open_data(id, &data, context)
    }

    /// nonce ‖ ciphertext ‖ tag sealed under key `id` to `context`, opened.
    fn open_data(&self, id: &str, data: &[u8], context: &str) -> Result<Vec<u8>, CryptoError> {
        let key = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .ok_or_else(|| CryptoError::UnknownKey(id.to_string()))?;
        if data.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Format);
        }
        let (nonce, sealed) = data.split_at(NONCE_LEN);
        let nonce = Nonce::try_from(nonce).map_err(|_| CryptoError::Format)?;
        key.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: sealed,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| CryptoError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    const K2: &str = "1f1e1d1c1b1a191817161514131211100f0e0d0c0b0a09080706050403020100";

    /// The GCM specification's Test Case 15 (McGrew & Viega, "The Galois/Counter Mode of
    /// Operation", AES-256, 96-bit IV, no additional data) in the keyring's format: the
    /// published ciphertext and tag decrypt to the published plaintext, so values stored by any
    /// version of the cipher crate stay readable.
    #[test]
    fn reads_the_published_gcm_test_vector() {
        let key = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
        let ring = Keyring::new(key, &[]).unwrap();
        let sealed = hex::decode(concat!(
            "cafebabefacedbaddecaf888",
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa",
            "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
            "b094dac5d93471bdec1a502270e3cc6c",
        ))
        .unwrap();
        let value = format!("v1:{}:{}", ring.current_id(), STANDARD.encode(&sealed));
        let plain = ring.decrypt(&value, "").unwrap();
        assert_eq!(
            hex::encode(&plain),
            concat!(
                "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72",
                "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
            )
        );
        assert_eq!(ring.decrypt(&value, "other"), Err(CryptoError::Decrypt));
        // the same sealed bytes in the binary form
        let binary = [format!("v1b:{}:", ring.current_id()).as_bytes(), &sealed].concat();
        assert_eq!(ring.open(&binary, "").unwrap(), plain);
        assert_eq!(ring.open(value.as_bytes(), "").unwrap(), plain);
    }

    #[test]
    fn the_binary_form_seals_and_opens_like_the_text_form() {
        let ring = Keyring::new(K1, &[]).unwrap();
        let body = br#"{"message":{"type":"end-of-call-report"}}"#;
        let sealed = ring.seal(body, "engine_events/vapi/e1");
        let head = format!("v1b:{}:", ring.current_id());
        assert!(sealed.starts_with(head.as_bytes()));
        assert_eq!(sealed.len(), head.len() + NONCE_LEN + body.len() + TAG_LEN);
        assert!(!sealed.windows(7).any(|w| w == b"message"));
        assert_ne!(
            ring.seal(body, "engine_events/vapi/e1"),
            sealed,
            "fresh nonce"
        );
        assert_eq!(ring.open(&sealed, "engine_events/vapi/e1").unwrap(), body);
        assert_eq!(
            ring.open(&sealed, "engine_events/vapi/e2"),
            Err(CryptoError::Decrypt),
            "bound to where it is stored"
        );
        // readable after rotation, not without the key
        let rotated = Keyring::new(K2, &[K1]).unwrap();
        assert_eq!(
            rotated.open(&sealed, "engine_events/vapi/e1").unwrap(),
            body
        );
        let other = Keyring::new(K2, &[]).unwrap();
        assert!(matches!(
            other.open(&sealed, "engine_events/vapi/e1"),
            Err(CryptoError::UnknownKey(_))
        ));
        // altered or cut short: refused, no panic
        let mut altered = sealed.clone();
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(
            ring.open(&altered, "engine_events/vapi/e1"),
            Err(CryptoError::Decrypt)
        );
        for bad in [
            &sealed[..head.len() + 20],
            b"v1b:no-colon".as_slice(),
            b"\xff\xfe",
        ] {
            assert!(ring.open(bad, "engine_events/vapi/e1").is_err());
        }
    }

    #[test]
    fn roundtrip_and_random_nonce() {
        let ring = Keyring::new(K1, &[]).unwrap();
        let a = ring.encrypt(b"auth-token", "ctx");
        let b = ring.encrypt(b"auth-token", "ctx");
        assert_ne!(a, b, "fresh nonce per value");
        assert!(a.starts_with(&format!("v1:{}:", ring.current_id())));
        assert_eq!(ring.decrypt(&a, "ctx").unwrap(), b"auth-token");
        assert!(!a.contains("auth-token"));
    }

    /// Sealed in place: nonce ‖ ciphertext ‖ tag for any length, the empty value and lengths
    /// around AES blocks and base64 groups included, and each reads back.
    #[test]
    fn every_length_seals_to_nonce_ciphertext_and_tag() {
        let ring = Keyring::new(K1, &[]).unwrap();
        for len in [0usize, 1, 2, 3, 15, 16, 17, 47, 48, 2700] {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let value = ring.encrypt(&plain, "ctx");
            let data = value.rsplit(':').next().unwrap();
            assert_eq!(STANDARD.decode(data).unwrap().len(), 12 + len + TAG_LEN);
            assert_eq!(ring.decrypt(&value, "ctx").unwrap(), plain, "length {len}");
        }
    }

    #[test]
    fn context_binds_the_value() {
        let ring = Keyring::new(K1, &[]).unwrap();
        let v = ring.encrypt(b"s", "tenant_credentials/acme/twilio");
        assert_eq!(
            ring.decrypt(&v, "tenant_credentials/evil/twilio"),
            Err(CryptoError::Decrypt)
        );
    }

    #[test]
    fn rotation_reads_old_writes_new() {
        let old = Keyring::new(K1, &[]).unwrap();
        let written = old.encrypt(b"s", "c");
        let rotated = Keyring::new(K2, &[K1]).unwrap();
        assert_eq!(rotated.decrypt(&written, "c").unwrap(), b"s");
        assert_ne!(rotated.current_id(), old.current_id());
        let fresh = rotated.encrypt(b"s", "c");
        assert!(fresh.starts_with(&format!("v1:{}:", rotated.current_id())));
        // a keyring without the old key names the missing key
        let only_new = Keyring::new(K2, &[]).unwrap();
        assert_eq!(
            only_new.decrypt(&written, "c"),
            Err(CryptoError::UnknownKey(old.current_id().to_string()))
        );
    }

    #[test]
    fn tampering_and_garbage_fail_cleanly() {
        let ring = Keyring::new(K1, &[]).unwrap();
        let v = ring.encrypt(b"secret", "c");
        let mut bytes = v.clone().into_bytes();
        // a character in the middle of the data (the end holds base64 padding)
        let mid = "v1:".len() + 8 + 1 + 10;
        bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert_eq!(ring.decrypt(&tampered, "c"), Err(CryptoError::Decrypt));
        for junk in ["", "v1", "v1:x", "v2:a:b", "v1:zz:!!!", "v1:abc:AAAA"] {
            assert!(ring.decrypt(junk, "c").is_err(), "{junk}");
        }
        assert_eq!(Keyring::new("abcd", &[]).unwrap_err(), CryptoError::BadKey);
    }
}
