//! The Bitbucket URLs the operator may talk to (`--allowed-bitbucket-urls`): the
//! operator's choice, not the tenant's. A workspace's `apiURL` and `siteURL` must each lie
//! under one of them, compared by scheme, host, port and whole path segments after
//! normalization, so that `https://bitbucket.org.evil.test`, `https://bitbucket.org@evil.test`
//! or `https://api.bitbucket.org/2.0evil` never pass for `https://bitbucket.org` or
//! `https://api.bitbucket.org/2.0`.

use std::fmt;

use super::Error;

/// Bitbucket Cloud's own API and site.
pub const BITBUCKET_CLOUD: &[&str] = &["https://api.bitbucket.org/2.0", "https://bitbucket.org"];

/// A URL reduced to what decides where a request goes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Location {
    scheme: String,
    host: String,
    port: u16,
    segments: Vec<String>,
}

impl Location {
    /// Parses and normalizes `raw`: http or https only, a host, no user info, no query,
    /// no fragment. Host lowercase, default port made explicit, empty path segments
    /// (trailing or doubled slashes) dropped, `.` and `..` resolved.
    pub(crate) fn parse(raw: &str) -> Result<Location, String> {
        let url = url::Url::parse(raw.trim()).map_err(|e| format!("not a URL ({e})"))?;
        if url.query().is_some() {
            return Err("a Bitbucket URL must not carry a query".into());
        }
        Self::of(&url)
    }

    /// Where a request to `raw` goes (a query is fine there).
    pub(crate) fn of_request(raw: &str) -> Result<Location, String> {
        Self::of(&url::Url::parse(raw).map_err(|e| format!("not a URL ({e})"))?)
    }

    fn of(url: &url::Url) -> Result<Location, String> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("scheme {} is neither https nor http", url.scheme()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err("a Bitbucket URL must not carry user info (user@ or user:password@)".into());
        }
        if url.fragment().is_some() {
            return Err("a Bitbucket URL must not carry a fragment".into());
        }
        let host = url.host_str().filter(|h| !h.is_empty()).ok_or("no host")?;
        let port = url.port_or_known_default().ok_or("no port")?;
        let segments = url.path_segments().map(|s| s.filter(|s| !s.is_empty()).map(String::from).collect()).unwrap_or_default();
        Ok(Location { scheme: url.scheme().to_string(), host: host.trim_end_matches('.').to_ascii_lowercase(), port, segments })
    }

    /// Whether `self` is `prefix` or lies below it.
    pub(crate) fn is_under(&self, prefix: &Location) -> bool {
        self.scheme == prefix.scheme && self.host == prefix.host && self.port == prefix.port && self.segments.starts_with(&prefix.segments)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)?;
        for s in &self.segments {
            write!(f, "/{s}")?;
        }
        Ok(())
    }
}

/// The list of allowed URL prefixes.
#[derive(Clone, Debug)]
pub struct AllowedUrls {
    prefixes: Vec<Location>,
    /// As configured, for messages.
    listed: Vec<String>,
}

impl Default for AllowedUrls {
    fn default() -> Self {
        Self::parse(BITBUCKET_CLOUD.iter().copied()).unwrap_or(AllowedUrls { prefixes: Vec::new(), listed: Vec::new() })
    }
}

impl AllowedUrls {
    /// The allowed prefixes; an entry that is not an http(s) URL with a host is an error.
    pub fn parse<'a>(urls: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut prefixes = Vec::new();
        let mut listed = Vec::new();
        for raw in urls.into_iter().map(str::trim).filter(|u| !u.is_empty()) {
            prefixes.push(Location::parse(raw).map_err(|e| format!("allowed Bitbucket URL {raw}: {e}"))?);
            listed.push(raw.trim_end_matches('/').to_string());
        }
        if prefixes.is_empty() {
            return Err("no allowed Bitbucket URL: list at least one".into());
        }
        Ok(AllowedUrls { prefixes, listed })
    }

    /// Where `url` goes if it is allowed; `UrlNotAllowed` otherwise.
    pub(crate) fn check(&self, url: &str) -> Result<Location, Error> {
        let refuse = |why: String| Error::UrlNotAllowed { url: redacted(url), why, allowed: self.listed.clone() };
        let location = Location::parse(url).map_err(refuse)?;
        if self.prefixes.iter().any(|p| location.is_under(p)) {
            Ok(location)
        } else {
            Err(refuse("it is not under any URL the operator allows".into()))
        }
    }
}

/// `url` for a message: user info (which may hold a password) replaced.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if !u.username().is_empty() || u.password().is_some() => {
            let _ = u.set_username("redacted");
            let _ = u.set_password(None);
            u.to_string()
        }
        Ok(_) => url.to_string(),
        Err(_) => url.chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(list: &[&str], url: &str) -> bool {
        AllowedUrls::parse(list.iter().copied()).unwrap().check(url).is_ok()
    }

    #[test]
    fn bitbucket_cloud_is_allowed_by_default() {
        let d = AllowedUrls::default();
        for u in [
            "https://api.bitbucket.org/2.0",
            "https://api.bitbucket.org/2.0/",
            "https://API.Bitbucket.ORG/2.0",
            "https://api.bitbucket.org:443/2.0",
            "https://api.bitbucket.org/2.0/repositories/acme/api/deploy-keys",
            "https://bitbucket.org",
            "https://bitbucket.org/",
            "https://bitbucket.org/site/oauth2/access_token",
        ] {
            assert!(d.check(u).is_ok(), "{u} should be allowed");
        }
    }

    #[test]
    fn look_alikes_are_refused() {
        let d = AllowedUrls::default();
        for u in [
            "https://bitbucket.org.evil.test",
            "https://bitbucket.org@evil.test",
            "https://user:pass@bitbucket.org",
            "https://evil.test/bitbucket.org",
            "https://evilbitbucket.org",
            "http://bitbucket.org",
            "http://api.bitbucket.org/2.0",
            "https://bitbucket.org:8443",
            "https://api.bitbucket.org/2.0evil",
            "https://api.bitbucket.org/3.0",
            "https://api.bitbucket.org/2.0/../evil",
            "https://api.bitbucket.org/2.0/%2e%2e/evil",
            "https://api.bitbucket.org",
            "https://bitbucket.org?x=1",
            "https://bitbucket.org#x",
            "ftp://bitbucket.org",
            "bitbucket.org",
            "",
        ] {
            assert!(d.check(u).is_err(), "{u} should be refused");
        }
    }

    #[test]
    fn http_is_allowed_only_when_listed() {
        assert!(allows(&["http://127.0.0.1:8080"], "http://127.0.0.1:8080/2.0"));
        assert!(allows(&["http://127.0.0.1:8080/"], "http://127.0.0.1:8080"));
        assert!(!allows(&["http://127.0.0.1:8080"], "http://127.0.0.1:8081/2.0"));
        assert!(!allows(&["http://127.0.0.1:8080"], "https://127.0.0.1:8080/2.0"));
        assert!(!allows(&["https://bb.example"], "http://bb.example"));
        assert!(allows(&["http://bb.example"], "http://bb.example:80/x"));
    }

    #[test]
    fn a_bad_list_is_an_error() {
        assert!(AllowedUrls::parse(["not a url"]).is_err());
        assert!(AllowedUrls::parse(["ftp://x"]).is_err());
        assert!(AllowedUrls::parse([""]).is_err());
        assert!(AllowedUrls::parse(["https://u@x"]).is_err());
    }

    #[test]
    fn the_refusal_names_the_url_but_no_password() {
        let e = AllowedUrls::default().check("https://me:hunter2@evil.test/2.0").unwrap_err();
        let m = e.to_string();
        assert!(!m.contains("hunter2"), "{m}");
        assert!(m.contains("evil.test") && m.contains("--allowed-bitbucket-urls"), "{m}");
        assert_eq!(e.reason(), "URLNotAllowed");
        assert!(!e.is_transient());
    }

    proptest::proptest! {
        #[test]
        fn nothing_on_another_host_passes(host in "[a-z0-9.@:-]{0,30}", path in "[a-z0-9./%@-]{0,30}") {
            let url = format!("https://{host}/{path}");
            if let Ok(l) = AllowedUrls::default().check(&url) {
                proptest::prop_assert!(l.host == "bitbucket.org" || l.host == "api.bitbucket.org", "{url} -> {l}");
            }
        }
    }
}
