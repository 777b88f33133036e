//! The path and query keyward sends upstream for an app's request: never a panic; when not
//! refused, the path stays under the upstream's base path with no dot segment left (`.`,
//! `..`, `%2e` in any case), and the query carries the injected API-key parameter exactly once
//! with keyward's value (any the app sent, however encoded, is taken out).
#![no_main]

use keyward::http::upstream_path;
use libfuzzer_sys::fuzz_target;

fn is_dots(segment: &str) -> bool {
    let lower = segment.to_ascii_lowercase().replace("%2e", ".");
    lower == "." || lower == ".."
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let base = ["", "/v1", "/v1/api"][pick as usize % 3];
    // What hyper hands keyward: a request-target parsed as the `http` crate parses it.
    let Ok(target) = http::uri::PathAndQuery::try_from(rest) else {
        return;
    };
    let (path, query) = (target.path(), target.query());
    let Ok(out) = upstream_path(base, path, query, Some("api_key"), Some(("api_key", "K"))) else {
        return;
    };
    let (out_path, out_query) = out.split_once('?').unwrap_or((&out, ""));
    let below = out_path.strip_prefix(base).expect("under the base path");
    assert!(below.starts_with('/'), "{out:?}");
    assert!(!below.split('/').any(is_dots), "{out:?}");
    let keys: Vec<_> = form_urlencoded::parse(out_query.as_bytes())
        .filter(|(k, _)| k == "api_key")
        .collect();
    assert_eq!(keys.len(), 1, "{out:?}");
    assert_eq!(keys[0].1, "K", "{out:?}");
});
