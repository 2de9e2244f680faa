//! Secret material as a type: it cannot be printed and is zeroized when dropped, so a
//! log line, an error message or a panic cannot leak it by accident.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// A secret string (API token, OAuth secret or access token, private key PEM).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(Zeroizing<String>);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(Zeroizing::new(value.into()))
    }

    /// The secret itself; call only where it is handed to its one legitimate consumer.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// From the bytes of a Secret's data field; `None` if they are not UTF-8.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let mut owned = bytes.to_vec();
        let value = String::from_utf8(owned.clone()).ok();
        owned.zeroize();
        value.map(Self::new)
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_hides_the_value() {
        let s = SecretString::new("hunter2-token");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
