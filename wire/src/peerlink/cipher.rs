//! AES-256-GCM from aws-lc-rs: the cipher snow runs the handshake with
//! (`AwsResolver`), then each direction's key and counter nonce
//! (`Direction`), with Noise's REKEY.

use std::time::Instant;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::CryptoResolver;
use snow::types::{Cipher, Dh, Hash, Random};
use zeroize::Zeroizing;

use super::{LinkError, REKEY_AGE, REKEY_FRAMES, TAG};

/// AES-256-GCM from aws-lc-rs, in the shape snow wants.
#[derive(Default)]
struct AwsAesGcm {
    key: Option<LessSafeKey>,
}

fn noise_nonce(n: u64) -> Nonce {
    // Noise AESGCM: 32 bits of zeros, then the counter big-endian.
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&n.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

impl Cipher for AwsAesGcm {
    fn name(&self) -> &'static str {
        "AESGCM"
    }

    fn set(&mut self, key: &[u8; 32]) {
        self.key = UnboundKey::new(&AES_256_GCM, key)
            .ok()
            .map(LessSafeKey::new);
    }

    fn encrypt(&self, nonce: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        let len = plaintext.len();
        let (Some(key), Some(body)) = (&self.key, out.get_mut(..len)) else {
            return 0;
        };
        body.copy_from_slice(plaintext);
        match key.seal_in_place_separate_tag(noise_nonce(nonce), Aad::from(authtext), body) {
            Ok(tag) => match out.get_mut(len..len + TAG) {
                Some(slot) => {
                    slot.copy_from_slice(tag.as_ref());
                    len + TAG
                }
                None => 0,
            },
            Err(_) => 0,
        }
    }

    fn decrypt(
        &self,
        nonce: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        let key = self.key.as_ref().ok_or(snow::Error::Decrypt)?;
        let len = ciphertext
            .len()
            .checked_sub(TAG)
            .ok_or(snow::Error::Decrypt)?;
        let (body, tag) = ciphertext.split_at(len);
        let plain = out.get_mut(..len).ok_or(snow::Error::Decrypt)?;
        key.open_separate_gather(noise_nonce(nonce), Aad::from(authtext), body, tag, plain)
            .map_err(|_| snow::Error::Decrypt)?;
        Ok(len)
    }
}

pub(super) struct AwsResolver;

impl CryptoResolver for AwsResolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        None
    }
    fn resolve_dh(&self, _: &DHChoice) -> Option<Box<dyn Dh>> {
        None
    }
    fn resolve_hash(&self, _: &HashChoice) -> Option<Box<dyn Hash>> {
        None
    }
    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        matches!(choice, CipherChoice::AESGCM)
            .then(|| Box::new(AwsAesGcm::default()) as Box<dyn Cipher>)
    }
}

/// One direction's key and nonce counter.
pub(super) struct Direction {
    pub(super) key: LessSafeKey,
    nonce: u64,
    pub(super) frames: u64,
    keyed_at: Instant,
}

impl Direction {
    pub(super) fn new(raw: &[u8; 32]) -> Result<Direction, LinkError> {
        let key = UnboundKey::new(&AES_256_GCM, raw)
            .map_err(|_| LinkError::Handshake(snow::Error::Decrypt))?;
        Ok(Direction {
            key: LessSafeKey::new(key),
            nonce: 0,
            frames: 0,
            keyed_at: Instant::now(),
        })
    }

    pub(super) fn next_nonce(&mut self) -> Result<Nonce, LinkError> {
        // The last nonce belongs to REKEY; a link never gets near it.
        if self.nonce >= u64::MAX - 1 {
            return Err(LinkError::Tampered);
        }
        let n = noise_nonce(self.nonce);
        self.nonce += 1;
        self.frames += 1;
        Ok(n)
    }

    /// Noise's REKEY(k): the first 32 bytes of ENCRYPT(k, 2^64-1, "", zeros).
    pub(super) fn rekey(&mut self) -> Result<(), LinkError> {
        let mut next = Zeroizing::new([0u8; 32]);
        // The tag is not part of the new key.
        let _tag = self
            .key
            .seal_in_place_separate_tag(noise_nonce(u64::MAX), Aad::empty(), &mut next[..])
            .map_err(|_| LinkError::Tampered)?;
        let key = UnboundKey::new(&AES_256_GCM, &next[..]).map_err(|_| LinkError::Tampered)?;
        self.key = LessSafeKey::new(key);
        self.frames = 0;
        self.keyed_at = Instant::now();
        Ok(())
    }

    pub(super) fn due(&self) -> bool {
        self.frames >= REKEY_FRAMES || self.keyed_at.elapsed() >= REKEY_AGE
    }
}

#[cfg(test)]
mod tests {
    use snow::resolvers::DefaultResolver;

    use super::*;
    use crate::peerlink::testing::KEY;

    /// Checked against snow's own AESGCM (RustCrypto), not against itself:
    /// the same key, nonce and data give the same bytes, at nonces whose
    /// big-endian layout a wrong byte order or offset would change, and our
    /// per-direction REKEY gives the key snow's REKEY gives.
    #[test]
    fn aws_cipher_agrees_with_snows_aesgcm() {
        let mut theirs = DefaultResolver
            .resolve_cipher(&CipherChoice::AESGCM)
            .expect("snow's AESGCM");
        theirs.set(&KEY);
        let mut ours = AwsAesGcm::default();
        ours.set(&KEY);
        for nonce in [0, 1, 9, 0x0102_0304_0506_0708, (1 << 40) + 5, u64::MAX - 1] {
            let (mut a, mut b) = ([0u8; 11 + TAG], [0u8; 11 + TAG]);
            assert_eq!(ours.encrypt(nonce, b"ad", b"hello noise", &mut a), 11 + TAG);
            assert_eq!(
                theirs.encrypt(nonce, b"ad", b"hello noise", &mut b),
                11 + TAG
            );
            assert_eq!(a, b, "nonce {nonce:#x}");
            let mut back = [0u8; 11];
            assert_eq!(theirs.decrypt(nonce, b"ad", &a, &mut back).unwrap(), 11);
            assert_eq!(&back, b"hello noise");
        }
        let mut direction = Direction::new(&KEY).unwrap();
        direction.rekey().unwrap();
        theirs.rekey();
        let mut body = *b"after rekey";
        let tag = direction
            .key
            .seal_in_place_separate_tag(noise_nonce(3), Aad::empty(), &mut body)
            .unwrap();
        let mut expected = [0u8; 11 + TAG];
        theirs.encrypt(3, &[], b"after rekey", &mut expected);
        assert_eq!(&expected[..11], &body);
        assert_eq!(&expected[11..], tag.as_ref());
    }

    #[test]
    fn aws_cipher_refuses_what_it_must() {
        let mut c = AwsAesGcm::default();
        c.set(&KEY);
        let mut out = [0u8; 5 + TAG];
        assert_eq!(c.encrypt(9, b"ad", b"hello", &mut out), 5 + TAG);
        let mut back = [0u8; 5];
        assert_eq!(c.decrypt(9, b"ad", &out, &mut back).unwrap(), 5);
        assert_eq!(&back, b"hello");
        assert!(
            c.decrypt(10, b"ad", &out, &mut back).is_err(),
            "another nonce must fail"
        );
        assert!(
            c.decrypt(9, b"xx", &out, &mut back).is_err(),
            "other associated data must fail"
        );
        assert!(
            c.decrypt(9, b"ad", &out[..4], &mut back).is_err(),
            "short input must fail"
        );
    }
}
