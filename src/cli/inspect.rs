//! `keyward cert inspect FILE...`: what is in PEM files — certificates (subject, issuer, SANs,
//! validity with days left, key algorithm and size, SHA-256 fingerprint), whether a chain is in
//! order, private keys (kind and algorithm only: key material is never printed) and whether a
//! key matches a certificate given alongside.

use std::fmt::Write as _;
use std::path::PathBuf;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::Digest;
use x509_parser::public_key::PublicKey;

/// The report, and whether everything was readable and consistent.
pub fn inspect(files: &[PathBuf]) -> (String, bool) {
    let mut out = String::new();
    let mut ok = true;
    let now = crate::tls::unix_now();
    let mut leaves: Vec<(String, CertificateDer<'static>)> = Vec::new();
    let mut keys: Vec<(String, PrivateKeyDer<'static>)> = Vec::new();
    for file in files {
        let shown = file.display().to_string();
        let _ = writeln!(out, "{shown}:");
        let bytes = match std::fs::read(file) {
            Ok(b) => b,
            Err(e) => {
                let _ = writeln!(out, "  cannot read: {}", crate::config::io_reason(&e));
                ok = false;
                continue;
            }
        };
        let certs: Vec<CertificateDer<'static>> =
            match CertificateDer::pem_slice_iter(&bytes).collect() {
                Ok(c) => c,
                Err(e) => {
                    let _ = writeln!(out, "  malformed PEM: {e}");
                    ok = false;
                    continue;
                }
            };
        let mut subjects = Vec::new();
        for (i, der) in certs.iter().enumerate() {
            match x509_parser::parse_x509_certificate(der.as_ref()) {
                Ok((_, cert)) => {
                    let not_before = cert.validity().not_before.timestamp();
                    let not_after = cert.validity().not_after.timestamp();
                    let days = (not_after - now).div_euclid(86_400);
                    let state = if now < not_before {
                        "NOT YET VALID".to_owned()
                    } else if now > not_after {
                        format!("EXPIRED {} days ago", -days)
                    } else {
                        format!("{days} days left")
                    };
                    let sans: Vec<String> = cert
                        .subject_alternative_name()
                        .ok()
                        .flatten()
                        .map(|e| {
                            e.value
                                .general_names
                                .iter()
                                .map(crate::tls::san_text)
                                .collect()
                        })
                        .unwrap_or_default();
                    let role = if cert.is_ca() {
                        "CA certificate"
                    } else {
                        "certificate"
                    };
                    let _ = writeln!(out, "  [{i}] {role}");
                    let _ = writeln!(out, "      subject:     {}", cert.subject());
                    let _ = writeln!(out, "      issuer:      {}", cert.issuer());
                    if !sans.is_empty() {
                        let _ = writeln!(out, "      SANs:        {}", sans.join(", "));
                    }
                    let _ = writeln!(out, "      serial:      {}", cert.raw_serial_as_string());
                    let _ = writeln!(
                        out,
                        "      valid:       {} .. {} ({state})",
                        crate::tls::rfc3339(not_before),
                        crate::tls::rfc3339(not_after)
                    );
                    let _ = writeln!(out, "      key:         {}", key_description(&cert));
                    let _ = writeln!(
                        out,
                        "      sha256:      {}",
                        hex::encode(sha2::Sha256::digest(der.as_ref()))
                    );
                    subjects.push((cert.subject().to_string(), cert.issuer().to_string()));
                    if i == 0 {
                        leaves.push((shown.clone(), der.clone()));
                    }
                }
                Err(e) => {
                    let _ = writeln!(out, "  [{i}] not a valid X.509 certificate: {e}");
                    ok = false;
                }
            }
        }
        if subjects.len() > 1 {
            let in_order = subjects.windows(2).all(|w| w[0].1 == w[1].0);
            let _ = writeln!(
                out,
                "  chain: {}",
                if in_order {
                    "in order (each certificate is issued by the next)"
                } else {
                    "NOT in order: a certificate's issuer is not the next certificate's subject"
                }
            );
            ok &= in_order;
        }
        match PrivateKeyDer::from_pem_slice(&bytes) {
            Ok(key) => {
                let kind = match &key {
                    PrivateKeyDer::Pkcs1(_) => "PKCS#1 (RSA)",
                    PrivateKeyDer::Sec1(_) => "SEC1 (EC)",
                    PrivateKeyDer::Pkcs8(_) => "PKCS#8",
                    _ => "unknown",
                };
                let _ = writeln!(out, "  private key: {kind} (material not shown)");
                keys.push((shown.clone(), key));
            }
            Err(rustls::pki_types::pem::Error::NoItemsFound) => {}
            Err(e) => {
                let _ = writeln!(out, "  private key: malformed PEM: {e}");
                ok = false;
            }
        }
        if certs.is_empty() && !keys.iter().any(|(f, _)| *f == shown) {
            let _ = writeln!(out, "  no certificate or private key found");
            ok = false;
        }
    }
    let provider = crate::tls::provider();
    for (key_file, key) in &keys {
        // A key given with certificates must belong to one of them (exit 1 otherwise).
        let mut matched = leaves.is_empty();
        for (cert_file, leaf) in &leaves {
            let verdict = match rustls::sign::CertifiedKey::from_der(
                vec![leaf.clone()],
                key.clone_key(),
                &provider,
            ) {
                Ok(_) => {
                    matched = true;
                    "MATCHES".to_owned()
                }
                Err(rustls::Error::InconsistentKeys(_)) => "does not match".to_owned(),
                Err(e) => format!("cannot be compared with ({e})"),
            };
            let _ = writeln!(out, "key {key_file} {verdict} certificate {cert_file}");
        }
        if !matched {
            let _ = writeln!(
                out,
                "key {key_file} matches none of the certificates given: it cannot be used with them"
            );
            ok = false;
        }
    }
    (out, ok)
}

fn key_description(cert: &x509_parser::certificate::X509Certificate<'_>) -> String {
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => format!("RSA {} bits", rsa.key_size()),
        Ok(PublicKey::EC(point)) => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|oid| match oid.to_id_string().as_str() {
                    "1.2.840.10045.3.1.7" => "P-256".to_owned(),
                    "1.3.132.0.34" => "P-384".to_owned(),
                    "1.3.132.0.35" => "P-521".to_owned(),
                    other => other.to_owned(),
                });
            format!(
                "EC {} ({} bits)",
                curve.unwrap_or_default(),
                point.key_size()
            )
        }
        Ok(PublicKey::Unknown(_)) | Ok(_) => match spki.algorithm.algorithm.to_id_string().as_str()
        {
            "1.3.101.112" => "Ed25519".to_owned(),
            "1.3.101.113" => "Ed448".to_owned(),
            other => format!("algorithm {other}"),
        },
        Err(e) => format!("unparsable ({e})"),
    }
}
