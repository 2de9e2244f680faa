//! Named crash points for the crash-safety tests: with `BCO_FAILPOINT=<name>` set, the
//! process aborts the first time it passes that point, as a SIGKILL would stop it there.
//! They exist only in builds with the `failpoints` feature, which only tests enable: in
//! any other build `hit` is empty and the variable means nothing.

#[cfg(feature = "failpoints")]
pub(crate) fn hit(name: &str) {
    use std::sync::OnceLock;
    static FAILPOINT: OnceLock<Option<String>> = OnceLock::new();
    let armed = FAILPOINT.get_or_init(|| std::env::var("BCO_FAILPOINT").ok().filter(|s| !s.is_empty()));
    if armed.as_deref() == Some(name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_name: &str) {}
