//! x509-limbo: every SERVER case of `../shared/testdata/x509-limbo/limbo.json` (third-party
//! data, read in place; `KEYWARD_LIMBO` overrides the path) through keyward's own verifier in
//! verify-full and verify-ca modes. Divergences from the expected result are listed, with a
//! reason each, in `tests/limbo-divergences.txt`; any other divergence, or a listed one that no
//! longer happens, fails.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use keyward::config::TlsMode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::RootCertStore;
use serde::Deserialize;

use crate::support::require;

#[derive(Deserialize)]
struct Limbo {
    testcases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    id: String,
    validation_kind: String,
    #[serde(default)]
    trusted_certs: Option<Vec<String>>,
    #[serde(default)]
    untrusted_intermediates: Option<Vec<String>>,
    peer_certificate: String,
    validation_time: Option<String>,
    #[serde(default)]
    signature_algorithms: Option<Vec<String>>,
    #[serde(default)]
    key_usage: Option<Vec<String>>,
    #[serde(default)]
    extended_key_usage: Option<Vec<String>>,
    expected_result: String,
    expected_peer_name: Option<PeerName>,
    max_chain_depth: Option<u32>,
}

#[derive(Deserialize)]
struct PeerName {
    value: String,
}

fn limbo_path() -> PathBuf {
    std::env::var_os("KEYWARD_LIMBO")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../shared/testdata/x509-limbo/limbo.json")
        })
}

/// Why a case is not run: the harness cannot express what it asks for.
fn unsupported(case: &Case) -> Option<&'static str> {
    if case.validation_kind != "SERVER" {
        return Some("not a server case");
    }
    if case.max_chain_depth.is_some() {
        return Some("max_chain_depth is not configurable in rustls");
    }
    if case.key_usage.as_ref().is_some_and(|k| !k.is_empty()) {
        return Some("key_usage constraints are not configurable in rustls");
    }
    if case
        .signature_algorithms
        .as_ref()
        .is_some_and(|s| !s.is_empty())
    {
        return Some("signature algorithm restrictions are not configurable");
    }
    if case
        .extended_key_usage
        .as_ref()
        .is_some_and(|e| e.iter().any(|u| u != "serverAuth"))
    {
        return Some("EKUs other than serverAuth are not what a TLS client checks");
    }
    None
}

fn verify(case: &Case, mode: TlsMode) -> bool {
    let provider = keyward::tls::provider();
    let mut roots = RootCertStore::empty();
    for pem in case.trusted_certs.iter().flatten() {
        if let Ok(der) = CertificateDer::from_pem_slice(pem.as_bytes()) {
            let _ = roots.add(der);
        }
    }
    // An empty trust store (every anchor rejected) is a rejection, not a harness failure.
    let Ok(verifier) = keyward::tls::verify::server_verifier(mode, Arc::new(roots), provider)
    else {
        return false;
    };
    let Ok(ee) = CertificateDer::from_pem_slice(case.peer_certificate.as_bytes()) else {
        return false;
    };
    let intermediates: Vec<CertificateDer<'static>> = case
        .untrusted_intermediates
        .iter()
        .flatten()
        .filter_map(|p| CertificateDer::from_pem_slice(p.as_bytes()).ok())
        .collect();
    let Some(name) = case
        .expected_peer_name
        .as_ref()
        .and_then(|n| ServerName::try_from(n.value.clone()).ok())
    else {
        return false;
    };
    let now = match &case.validation_time {
        Some(t) => {
            let t = humantime::parse_rfc3339(&t.replace("+00:00", "Z")).expect("validation_time");
            UnixTime::since_unix_epoch(t.duration_since(std::time::UNIX_EPOCH).unwrap())
        }
        None => UnixTime::now(),
    };
    verifier
        .verify_server_cert(&ee, &intermediates, &name, &[], now)
        .is_ok()
}

fn listed() -> BTreeMap<(String, String), String> {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/limbo-divergences.txt"),
    )
    .unwrap();
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let mut parts = line.splitn(3, char::is_whitespace);
        let (mode, id, reason) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap_or("").trim(),
        );
        assert!(!reason.is_empty(), "divergence without a reason: {line}");
        out.insert((mode.to_owned(), id.to_owned()), reason.to_owned());
    }
    out
}

#[test]
fn every_limbo_server_case_matches_or_is_a_listed_divergence() {
    let path = limbo_path();
    if !require(&format!("x509-limbo at {}", path.display()), path.exists()) {
        return;
    }
    let limbo: Limbo = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let listed = listed();
    let mut found = BTreeMap::new();
    let (mut ran, mut skipped) = (0, 0);
    for case in &limbo.testcases {
        if unsupported(case).is_some() {
            skipped += 1;
            continue;
        }
        for mode in [TlsMode::VerifyFull, TlsMode::VerifyCa] {
            ran += 1;
            let accepted = verify(case, mode);
            let expected = case.expected_result == "SUCCESS";
            if accepted != expected {
                let what = if accepted {
                    "accepts, expected FAILURE"
                } else {
                    "rejects, expected SUCCESS"
                };
                found.insert((mode.as_str().to_owned(), case.id.clone()), what);
            }
        }
    }
    eprintln!(
        "x509-limbo: {ran} case runs, {skipped} cases skipped, {} divergences (all listed)",
        found.len()
    );
    let new: Vec<String> = found
        .iter()
        .filter(|(k, _)| !listed.contains_key(*k))
        .map(|((m, id), what)| format!("{m} {id} TODO ({what})"))
        .collect();
    let stale: Vec<String> = listed
        .keys()
        .filter(|k| !found.contains_key(*k))
        .map(|(m, id)| format!("{m} {id}"))
        .collect();
    assert!(
        new.is_empty() && stale.is_empty(),
        "unlisted divergences:\n{}\n\nlisted but no longer diverging:\n{}",
        new.join("\n"),
        stale.join("\n")
    );
    // The verify-ca relaxation must only ever change hostname outcomes.
    for (mode, id) in found.keys() {
        if mode == "verify-ca" && !found.contains_key(&("verify-full".to_owned(), id.clone())) {
            assert!(
                id.contains("san")
                    || id.contains("name")
                    || id.contains("wildcard")
                    || id.contains("cn"),
                "verify-ca diverges on a non-name case: {id}"
            );
        }
    }
}
