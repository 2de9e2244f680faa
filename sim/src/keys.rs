//! Which public keys Bitbucket accepts as access keys, and how it stores them.

use ssh_key::public::KeyData;
use ssh_key::{HashAlg, PublicKey};

/// Bitbucket's minimum RSA modulus size.
pub const MIN_RSA_BITS: usize = 2048;

/// A public key as Bitbucket keeps it: the comment split off the key material.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedKey {
    /// `<type> <base64>`, the form Bitbucket answers in `key`.
    pub key: String,
    pub comment: String,
    /// `SHA256:<base64 without padding>`, as `ssh-keygen -l` prints it.
    pub fingerprint: String,
}

/// Why a key was refused; the message is what the API user reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejection {
    #[error("Invalid SSH public key: expected one OpenSSH authorized_keys line such as \"ssh-ed25519 AAAA... comment\".")]
    Unparseable,
    #[error("Unsupported key type {0}: use ssh-ed25519, ecdsa-sha2-nistp256/384/521, or ssh-rsa of at least 2048 bits.")]
    UnsupportedType(String),
    #[error("RSA keys must be at least {MIN_RSA_BITS} bits; this key has {0} bits.")]
    RsaTooShort(usize),
}

/// Parses and validates a key the way Bitbucket's "Add key" does.
pub fn accept_public_key(input: &str) -> Result<AcceptedKey, KeyRejection> {
    let line = input.trim();
    // One line only: a pasted file with several keys is a user error, not a key.
    if line.is_empty() || line.contains(['\n', '\r']) {
        return Err(KeyRejection::Unparseable);
    }
    let parsed = PublicKey::from_openssh(line).map_err(|_| KeyRejection::Unparseable)?;
    check_key_type(parsed.key_data())?;
    let comment = parsed.comment().trim().to_owned();
    let bare = PublicKey::new(parsed.key_data().clone(), "");
    let key = bare.to_openssh().map_err(|_| KeyRejection::Unparseable)?;
    Ok(AcceptedKey { key, comment, fingerprint: parsed.fingerprint(HashAlg::Sha256).to_string() })
}

/// The fingerprint of a key line (with or without comment), or `None` if it is no key.
pub fn fingerprint(line: &str) -> Option<String> {
    PublicKey::from_openssh(line.trim()).ok().map(|k| k.fingerprint(HashAlg::Sha256).to_string())
}

fn check_key_type(data: &KeyData) -> Result<(), KeyRejection> {
    match data {
        KeyData::Ed25519(_) | KeyData::Ecdsa(_) => Ok(()),
        KeyData::Rsa(rsa) => {
            let bits = rsa.n.as_positive_bytes().map(bit_length).ok_or(KeyRejection::Unparseable)?;
            if bits < MIN_RSA_BITS { Err(KeyRejection::RsaTooShort(bits)) } else { Ok(()) }
        }
        other => Err(KeyRejection::UnsupportedType(other.algorithm().as_str().to_owned())),
    }
}

/// Bit length of a big-endian unsigned integer.
fn bit_length(bytes: &[u8]) -> usize {
    let trimmed: &[u8] = match bytes.iter().position(|&b| b != 0) {
        Some(first) => &bytes[first..],
        None => return 0,
    };
    let leading = trimmed.first().map_or(0, |b| b.leading_zeros() as usize);
    trimmed.len() * 8 - leading
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // A real key from ssh-keygen, so the parser is checked against OpenSSH's format.
    const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIazEu89wgQZ4bqs3d63QSMzYVa0MuJ2e2gKTKqu+UUO";

    #[test]
    fn comment_is_split_off() {
        let key = accept_public_key(&format!("  {ED25519} ci@runner  \n")).expect("accepted");
        assert_eq!(key.key, ED25519);
        assert_eq!(key.comment, "ci@runner");
    }

    #[test]
    fn fingerprint_matches_bitbuckets_published_host_key_fingerprint() {
        let key = accept_public_key(ED25519).expect("accepted");
        assert_eq!(key.fingerprint, "SHA256:ybgmFkzwOSotHTHLJgHO0QN8L0xErw6vd0VhFA9m3SM");
        assert_eq!(fingerprint(ED25519).as_deref(), Some(key.fingerprint.as_str()));
    }

    #[test]
    fn garbage_and_multi_line_input_are_refused() {
        assert_eq!(accept_public_key("hello"), Err(KeyRejection::Unparseable));
        assert_eq!(accept_public_key("ssh-ed25519 !!!notbase64"), Err(KeyRejection::Unparseable));
        assert_eq!(accept_public_key(&format!("{ED25519}\n{ED25519}")), Err(KeyRejection::Unparseable));
    }

    #[test]
    fn bit_length_counts_significant_bits() {
        assert_eq!(bit_length(&[]), 0);
        assert_eq!(bit_length(&[0, 0]), 0);
        assert_eq!(bit_length(&[0, 1]), 1);
        assert_eq!(bit_length(&[0x80, 0]), 16);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(input in ".*") {
            let _ = accept_public_key(&input);
            let _ = fingerprint(&input);
        }

        #[test]
        fn arbitrary_base64_after_a_known_type_never_panics(
            algo in prop::sample::select(vec![
                "ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256",
                "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "x",
            ]),
            blob in prop::collection::vec(any::<u8>(), 0..600),
            comment in "[ -~]{0,20}",
        ) {
            use base64::Engine as _;
            let line = format!("{algo} {} {comment}", base64::engine::general_purpose::STANDARD.encode(&blob));
            let _ = accept_public_key(&line);
        }

        #[test]
        fn mutated_valid_key_never_panics(pos in 0usize..200, byte in any::<u8>()) {
            let mut bytes = ED25519.as_bytes().to_vec();
            if let Some(b) = bytes.get_mut(pos) { *b = byte; }
            let line = String::from_utf8_lossy(&bytes).into_owned();
            let _ = accept_public_key(&line);
        }
    }
}
