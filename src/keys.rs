//! SSH key material: generation, the OpenSSH encodings and SHA256 fingerprints that
//! `ssh-keygen -l` prints. Private keys live only inside `KeyPair`, which cannot be
//! printed and whose secret parts are zeroized when dropped.

use std::fmt;

use rand_core::OsRng;
use ssh_key::private::{EcdsaKeypair, Ed25519Keypair, KeypairData, RsaKeypair};
use ssh_key::{EcdsaCurve as SshCurve, HashAlg, LineEnding, PrivateKey, PublicKey};
use thiserror::Error;

use crate::api::{EcdsaCurve, KeyType};
use crate::sensitive::SecretString;

pub const DEFAULT_RSA_BITS: u32 = 4096;
/// The RSA sizes the operator makes.
pub const RSA_SIZES: [u32; 3] = [2048, 3072, 4096];

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("cannot generate the key: {0}")]
    Generate(String),
    #[error("the Secret does not hold a usable OpenSSH private key")]
    Unreadable,
}

/// What kind of key to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySpec {
    pub key_type: KeyType,
    pub rsa_bits: u32,
    pub curve: EcdsaCurve,
}

impl KeySpec {
    /// An `rsaBits` outside 2048, 3072 and 4096 (an object stored before the CRD refused
    /// it) becomes the next size up, at most 4096: other sizes either cannot be told from
    /// the key read back (2049 would rotate on every reconcile) or cost minutes of CPU.
    pub fn new(key_type: KeyType, rsa_bits: Option<u32>, curve: Option<EcdsaCurve>) -> Self {
        let rsa_bits = RSA_SIZES.into_iter().find(|s| *s >= rsa_bits.unwrap_or(DEFAULT_RSA_BITS)).unwrap_or(DEFAULT_RSA_BITS);
        Self { key_type, rsa_bits, curve: curve.unwrap_or(EcdsaCurve::P256) }
    }

    /// Whether an existing key already is of this kind (a changed keyType means rotate).
    pub fn matches(&self, key: &KeyPair) -> bool {
        match (self.key_type, key.private.key_data()) {
            (KeyType::Ed25519, KeypairData::Ed25519(_)) => true,
            (KeyType::Rsa, KeypairData::Rsa(k)) => k.public.n.as_positive_bytes().map(|b| b.len() * 8).unwrap_or(0) as u32 == self.rsa_bits,
            (KeyType::Ecdsa, KeypairData::Ecdsa(k)) => ssh_curve(self.curve) == k.curve(),
            _ => false,
        }
    }
}

fn ssh_curve(c: EcdsaCurve) -> SshCurve {
    match c {
        EcdsaCurve::P256 => SshCurve::NistP256,
        EcdsaCurve::P384 => SshCurve::NistP384,
        EcdsaCurve::P521 => SshCurve::NistP521,
    }
}

/// A key pair. No `Debug` of the private half, no `Display`, no `Serialize`.
pub struct KeyPair {
    private: PrivateKey,
    openssh_private: SecretString,
    public_line: String,
    fingerprint: String,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair").field("fingerprint", &self.fingerprint).finish_non_exhaustive()
    }
}

impl KeyPair {
    /// Makes a new key. RSA takes seconds: call it from a blocking thread.
    pub fn generate(spec: KeySpec, comment: &str) -> Result<Self, KeyError> {
        let mut rng = OsRng;
        let data = match spec.key_type {
            KeyType::Ed25519 => KeypairData::from(Ed25519Keypair::random(&mut rng)),
            KeyType::Rsa => KeypairData::from(rsa_keypair(spec.rsa_bits)?),
            KeyType::Ecdsa => {
                KeypairData::from(EcdsaKeypair::random(&mut rng, ssh_curve(spec.curve)).map_err(|e| KeyError::Generate(e.to_string()))?)
            }
        };
        let private = PrivateKey::new(data, comment).map_err(|e| KeyError::Generate(e.to_string()))?;
        Self::from_private(private).map_err(|_| KeyError::Generate("cannot encode the key".into()))
    }

    /// Generation off the async workers, so an RSA key never stalls other reconciles.
    pub async fn generate_in_background(spec: KeySpec, comment: String) -> Result<Self, KeyError> {
        // An ed25519 key takes microseconds: a thread of the blocking pool would cost more.
        if spec.key_type == KeyType::Ed25519 {
            return Self::generate(spec, &comment);
        }
        tokio::task::spawn_blocking(move || Self::generate(spec, &comment)).await.map_err(|e| KeyError::Generate(e.to_string()))?
    }

    /// Reads an OpenSSH private key back from a Secret.
    pub fn from_openssh(pem: &[u8]) -> Result<Self, KeyError> {
        let private = PrivateKey::from_openssh(pem).map_err(|_| KeyError::Unreadable)?;
        if private.is_encrypted() {
            return Err(KeyError::Unreadable);
        }
        Self::from_private(private)
    }

    fn from_private(private: PrivateKey) -> Result<Self, KeyError> {
        let openssh_private = private.to_openssh(LineEnding::LF).map_err(|_| KeyError::Unreadable)?;
        let public_line = private.public_key().to_openssh().map_err(|_| KeyError::Unreadable)?;
        let fingerprint = private.public_key().fingerprint(HashAlg::Sha256).to_string();
        Ok(Self { openssh_private: SecretString::new(openssh_private.as_str()), public_line, fingerprint, private })
    }

    /// `SHA256:...` exactly as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The authorized_keys line, with comment.
    pub fn public_key(&self) -> &str {
        &self.public_line
    }

    /// `type base64`, without the comment (what Bitbucket returns in `key`).
    pub fn public_key_body(&self) -> &str {
        crate::bitbucket::key_body(&self.public_line)
    }

    /// The OpenSSH PEM of the private key: only for writing the Secret.
    pub fn private_openssh(&self) -> &SecretString {
        &self.openssh_private
    }
}

/// An RSA key pair made by AWS-LC (with its pairwise consistency check), handed to
/// ssh-key as PKCS#8. Every buffer that holds the private key is zeroized when dropped.
fn rsa_keypair(bits: u32) -> Result<RsaKeypair, KeyError> {
    use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
    use aws_lc_rs::rsa::{KeyPair as AwsKeyPair, KeySize};
    use rsa::pkcs8::DecodePrivateKey;
    let size = match bits {
        2048 => KeySize::Rsa2048,
        3072 => KeySize::Rsa3072,
        4096 => KeySize::Rsa4096,
        other => return Err(KeyError::Generate(format!("RSA keys of {other} bits are not made"))),
    };
    let generated = AwsKeyPair::generate(size).map_err(|_| KeyError::Generate("the RSA generator failed".into()))?;
    let der: Pkcs8V1Der<'static> = generated.as_der().map_err(|_| KeyError::Generate("cannot encode the RSA key".into()))?;
    let key = rsa::RsaPrivateKey::from_pkcs8_der(der.as_ref()).map_err(|_| KeyError::Generate("cannot read the RSA key".into()))?;
    RsaKeypair::try_from(&key).map_err(|e| KeyError::Generate(e.to_string()))
}

/// SHA256 fingerprint of an authorized_keys line, or `None` if it does not parse.
pub fn fingerprint_of_public(line: &str) -> Option<String> {
    PublicKey::from_openssh(line.trim()).ok().map(|k| k.fingerprint(HashAlg::Sha256).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitbucket_host_key_fingerprints_match_the_published_ones() {
        for (line, expected) in crate::api::DEFAULT_KNOWN_HOSTS.lines().zip([
            "SHA256:ybgmFkzwOSotHTHLJgHO0QN8L0xErw6vd0VhFA9m3SM",
            "SHA256:FC73VB6C4OQLSCrjEayhMp9UMxS97caD/Yyi2bhW/J0",
            "SHA256:46OSHA1Rmj8E8ERTC6xkNcmGOw9oFxYr0WF6zWW8l1E",
        ]) {
            let key = line.split_once(' ').map(|(_, k)| k).unwrap_or_default();
            assert_eq!(fingerprint_of_public(key).as_deref(), Some(expected), "{line}");
        }
    }

    #[test]
    fn a_generated_key_reads_back_with_the_same_fingerprint() {
        for spec in [
            KeySpec::new(KeyType::Ed25519, None, None),
            KeySpec::new(KeyType::Ecdsa, None, Some(EcdsaCurve::P384)),
            KeySpec::new(KeyType::Ecdsa, None, Some(EcdsaCurve::P521)),
            KeySpec::new(KeyType::Rsa, Some(2048), None),
            KeySpec::new(KeyType::Rsa, Some(3072), None),
        ] {
            let k = KeyPair::generate(spec, "bco test").expect("generate");
            let back = KeyPair::from_openssh(k.private_openssh().expose().as_bytes()).expect("parse");
            assert_eq!(back.fingerprint(), k.fingerprint());
            assert_eq!(fingerprint_of_public(k.public_key()).as_deref(), Some(k.fingerprint()));
            assert!(spec.matches(&back), "{spec:?}");
            assert!(k.public_key().ends_with(" bco test"));
            assert!(!format!("{k:?}").contains("PRIVATE"));
        }
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert!(KeyPair::from_openssh(b"-----BEGIN OPENSSH PRIVATE KEY-----\nnope\n").is_err());
        assert!(fingerprint_of_public("ssh-ed25519 !!!").is_none());
    }

    proptest::proptest! {
        #[test]
        fn reading_any_secret_bytes_as_a_private_key_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = KeyPair::from_openssh(&bytes);
        }

        #[test]
        fn a_corrupted_private_key_never_panics(pos in 0usize..400, byte in proptest::prelude::any::<u8>()) {
            static PEM: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let pem = PEM.get_or_init(|| {
                KeyPair::generate(KeySpec::new(KeyType::Ed25519, None, None), "fuzz").unwrap().private_openssh().expose().as_bytes().to_vec()
            });
            let mut bytes = pem.clone();
            let i = pos % bytes.len();
            bytes[i] = byte;
            let _ = KeyPair::from_openssh(&bytes);
        }

        #[test]
        fn any_public_key_line_never_panics(line in ".*") {
            let _ = fingerprint_of_public(&line);
        }
    }
}
