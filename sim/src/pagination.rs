//! Bitbucket's page envelope: `{"pagelen","values","page","size","next"}`.

use serde_json::{Value, json};

use super::config::MAX_PAGELEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub page: u64,
    pub pagelen: u32,
}

/// Reads `page` and `pagelen` from a query string. `pagelen` is clamped to 1..=100 as
/// Bitbucket caps it; text that is not a number is a 400 (`Err` holds the message).
pub fn parse_page_query(query: Option<&str>, default_pagelen: u32) -> Result<PageRequest, String> {
    let mut page = 1u64;
    let mut pagelen = default_pagelen;
    let mut seen_page = false;
    let mut seen_pagelen = false;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match name.as_ref() {
            // The first occurrence wins, like most web frameworks.
            "page" if !seen_page => {
                seen_page = true;
                page = parse_count(&value).ok_or_else(|| format!("Invalid page: {value}"))?;
                if page == 0 {
                    return Err("Invalid page: pages start at 1".into());
                }
            }
            "pagelen" if !seen_pagelen => {
                seen_pagelen = true;
                let n = parse_count(&value).ok_or_else(|| format!("Invalid pagelen: {value}"))?;
                pagelen = n.clamp(1, u64::from(MAX_PAGELEN)) as u32;
            }
            _ => {}
        }
    }
    Ok(PageRequest { page, pagelen })
}

/// A non-negative decimal; absurdly large values saturate instead of failing.
fn parse_count(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse().unwrap_or(u64::MAX))
}

/// Builds the page of `items`, rendering only the items on it, or `None` when `page`
/// lies past the last page (Bitbucket: 404 "Invalid page"). `self_url` is the absolute
/// URL of the collection, without query.
pub fn page<T>(items: &[T], request: PageRequest, self_url: &str, render: impl Fn(&T) -> Value) -> Option<Value> {
    let size = items.len() as u64;
    let pagelen = u64::from(request.pagelen);
    let start = request.page.saturating_sub(1).saturating_mul(pagelen);
    if request.page > 1 && start >= size {
        return None;
    }
    let start = usize::try_from(start).unwrap_or(usize::MAX);
    let page_values: Vec<Value> = items.iter().skip(start).take(request.pagelen as usize).map(render).collect();
    let end = start.saturating_add(page_values.len()) as u64;
    let mut out = json!({
        "pagelen": request.pagelen,
        "values": page_values,
        "page": request.page,
        "size": size,
    });
    if end < size {
        out["next"] = Value::from(format!("{self_url}?pagelen={}&page={}", request.pagelen, request.page.saturating_add(1)));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn next_is_absent_on_the_last_page() {
        let values: Vec<u64> = (0..25).collect();
        let req = |page| PageRequest { page, pagelen: 10 };
        let render = |v: &u64| Value::from(*v);
        let first = page(&values, req(1), "http://h/x", render).expect("page 1");
        assert_eq!(first["next"], "http://h/x?pagelen=10&page=2");
        assert_eq!(first["size"], 25);
        let last = page(&values, req(3), "http://h/x", render).expect("page 3");
        assert_eq!(last["values"].as_array().map(Vec::len), Some(5));
        assert!(last.get("next").is_none());
        assert!(page(&values, req(4), "http://h/x", render).is_none());
        assert!(page(&[], req(1), "http://h/x", render).is_some(), "an empty list has a page 1");
    }

    #[test]
    fn pagelen_is_clamped_and_garbage_refused() {
        assert_eq!(parse_page_query(Some("pagelen=1000000000000000000000000&page=2"), 10), Ok(PageRequest { page: 2, pagelen: 100 }));
        assert_eq!(parse_page_query(None, 10), Ok(PageRequest { page: 1, pagelen: 10 }));
        assert!(parse_page_query(Some("page=abc"), 10).is_err());
        assert!(parse_page_query(Some("page=0"), 10).is_err());
        assert!(parse_page_query(Some("pagelen=-1"), 10).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_queries_never_panic(q in ".*", n in 0usize..300, default in 1u32..=100) {
            if let Ok(req) = parse_page_query(Some(&q), default) {
                let values: Vec<usize> = (0..n).collect();
                let _ = page(&values, req, "http://h/x", |v| Value::from(*v));
            }
        }
    }
}
