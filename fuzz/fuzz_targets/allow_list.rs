//! The `listen_tls.allow` name matcher never panics (any UTF-8, multi-byte characters
//! included) and agrees with an independent reference: `*` stands for one or more characters
//! other than the separator (`.` for DNS names and CNs, `/` for URIs); DNS names compare
//! without regard to ASCII case, URIs exactly.
#![no_main]

use keyward::tls::inbound::name_matches;
use libfuzzer_sys::fuzz_target;

/// The reference: dynamic programming over characters.
fn reference(pattern: &[char], name: &[char], uri: bool) -> bool {
    let sep = if uri { '/' } else { '.' };
    let same = |a: char, b: char| {
        if uri {
            a == b
        } else {
            a.eq_ignore_ascii_case(&b)
        }
    };
    // m[i][j]: pattern[i..] matches name[j..].
    let (p, n) = (pattern.len(), name.len());
    let mut m = vec![vec![false; n + 1]; p + 1];
    m[p][n] = true;
    for i in (0..p).rev() {
        for j in (0..=n).rev() {
            m[i][j] = if pattern[i] == '*' {
                // One or more non-separator characters, then the rest of the pattern.
                (j + 1..=n)
                    .take_while(|&k| name[k - 1] != sep)
                    .any(|k| m[i + 1][k])
            } else {
                j < n && same(pattern[i], name[j]) && m[i + 1][j + 1]
            };
        }
    }
    m[0][0]
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Some((pattern, name)) = text.split_once('\n') else {
        return;
    };
    let (uri, pattern) = match pattern.strip_prefix('U') {
        Some(p) => (true, p),
        None => (false, pattern),
    };
    // Bounded so the reference (quadratic per star) stays fast.
    if pattern.len() > 32 || name.len() > 64 || pattern.matches('*').count() > 4 {
        return;
    }
    let got = name_matches(pattern, name, uri);
    let want = reference(
        &pattern.chars().collect::<Vec<_>>(),
        &name.chars().collect::<Vec<_>>(),
        uri,
    );
    assert_eq!(got, want, "pattern {pattern:?} name {name:?} uri {uri}");
});
