//! Named crash points for the crash-safety tests: with `BCO_FAILPOINT=<name>` set, the
//! process aborts the first time it passes that point, as a SIGKILL would stop it there.
//! Unset (always, in production), a check is one comparison against a cached empty value.

use std::sync::OnceLock;

static FAILPOINT: OnceLock<Option<String>> = OnceLock::new();

pub fn hit(name: &str) {
    let armed = FAILPOINT.get_or_init(|| std::env::var("BCO_FAILPOINT").ok().filter(|s| !s.is_empty()));
    if armed.as_deref() == Some(name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
