//! The mark every access key of an object carries in Bitbucket, in its comment and (by
//! default) as its label: which operator installation, object and UID it belongs to.
//!
//! One word with no spaces, `bitbucket-credentials-operator:<uid>:<cluster>:<namespace>/<name>`:
//! Bitbucket is only known to keep one-word comments, and a comment cut to its first word
//! still carries it. The UID comes first, so a label cut to Bitbucket's length limit
//! still names the object. Earlier versions wrote the comment
//! `bitbucket-credentials-operator cluster=<cluster> uid=<uid>`; its `uid=` word is
//! still read, so keys registered by them are neither orphaned nor duplicated.

const PREFIX: &str = "bitbucket-credentials-operator:";
/// The word earlier versions marked their keys with.
const LEGACY_UID: &str = "uid=";

/// Who a key belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Marker {
    pub uid: String,
    pub cluster: String,
    pub namespace: String,
    pub name: String,
}

impl Marker {
    pub(crate) fn new(uid: &str, cluster: &str, namespace: &str, name: &str) -> Self {
        Self { uid: uid.into(), cluster: cluster.into(), namespace: namespace.into(), name: name.into() }
    }

    /// The one-word form. A cluster name is reduced to letters, digits, `.`, `_` and `-`
    /// (anything else becomes `-`), so the word has no space and no `:` inside a part.
    pub(crate) fn token(&self) -> String {
        let clean =
            |s: &str| -> String { s.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect() };
        format!("{PREFIX}{}:{}:{}/{}", clean(&self.uid), clean(&self.cluster), clean(&self.namespace), clean(&self.name))
    }

    /// A marker word as `token` writes it; `None` for anything else. A token cut short
    /// after the UID still yields the UID (with empty other parts).
    pub(crate) fn parse(word: &str) -> Option<Marker> {
        let rest = word.trim().strip_prefix(PREFIX)?;
        let mut parts = rest.splitn(3, ':');
        let uid = parts.next().filter(|u| !u.is_empty())?;
        let cluster = parts.next().unwrap_or_default();
        let (namespace, name) = parts.next().unwrap_or_default().split_once('/').unwrap_or_default();
        Some(Marker::new(uid, cluster, namespace, name))
    }
}

/// Whether `text` (a key's comment or label) marks a key of the object with `uid`: a
/// marker word of this UID, or the `uid=` word of earlier versions.
pub(crate) fn marks(text: &str, uid: &str) -> bool {
    !uid.is_empty()
        && text
            .split_whitespace()
            .any(|w| Marker::parse(w).is_some_and(|m| m.uid == uid) || w.strip_prefix(LEGACY_UID).is_some_and(|u| u == uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b0e7a6c-1234-4000-8000-000000000000";

    #[test]
    fn a_marker_is_one_word_and_reads_back() {
        let m = Marker::new(UID, "prod eu/1", "team-a", "ci.key");
        let t = m.token();
        assert!(!t.contains(char::is_whitespace), "{t}");
        assert_eq!(t, format!("bitbucket-credentials-operator:{UID}:prod-eu-1:team-a/ci.key"));
        assert_eq!(Marker::parse(&t), Some(Marker::new(UID, "prod-eu-1", "team-a", "ci.key")));
        assert!(marks(&t, UID));
        assert!(marks(&format!("{t} trailing words"), UID));
        assert!(!marks(&t, "0b0e7a6c"));
    }

    #[test]
    fn markers_of_earlier_versions_are_still_read() {
        assert!(marks(&format!("bitbucket-credentials-operator cluster=a uid={UID}"), UID));
        assert!(!marks(&format!("bitbucket-credentials-operator cluster=a uid={UID}0"), UID));
        // Cut to its first word, an old comment names nobody.
        assert!(!marks("bitbucket-credentials-operator", UID));
        assert!(!marks("someone's laptop", UID));
        assert!(!marks("", UID));
        assert!(!marks("uid=", ""));
    }

    #[test]
    fn a_label_cut_short_still_names_the_uid() {
        let t = Marker::new(UID, "c", "ns", "n").token();
        let cut = &t[..PREFIX.len() + UID.len()];
        assert!(marks(cut, UID));
    }

    proptest::proptest! {
        #[test]
        fn parsing_any_text_never_panics(s in "\\PC{0,300}") {
            let _ = Marker::parse(&s);
            let _ = marks(&s, UID);
        }

        #[test]
        fn any_identity_round_trips(
            uid in "[0-9a-f-]{1,36}",
            cluster in "[a-zA-Z0-9._-]{0,40}",
            ns in "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
            name in "[a-z0-9]([-a-z0-9.]{0,60}[a-z0-9])?",
        ) {
            let m = Marker::new(&uid, &cluster, &ns, &name);
            let t = m.token();
            proptest::prop_assert!(!t.contains(char::is_whitespace));
            proptest::prop_assert_eq!(Marker::parse(&t), Some(m));
            proptest::prop_assert!(marks(&t, &uid));
        }
    }
}
