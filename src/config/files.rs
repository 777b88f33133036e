//! What a resource is built from, beyond its settings: the files it reads (watched for
//! reload) and the secrets it names, and the fingerprint of all of it that tells a reload
//! whether the resource changed.

use std::path::{Path, PathBuf};

use super::types::{Auth, ResourceConfig, SecretRef, TlsSettings};
use crate::secret::Env;

/// The TLS files of one resource (secrets are in [`resource_secrets`]).
pub fn resource_files(res: &ResourceConfig) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut tls = |t: &TlsSettings| {
        files.extend(t.ca.iter().map(|f| f.path.clone()));
        if let Some(c) = &t.client {
            files.push(c.cert.path.clone());
            files.push(c.key.path.clone());
        }
    };
    tls(&res.tls);
    if let Auth::OAuth2(o) = &res.auth {
        tls(&o.tls);
    }
    if let Some(l) = &res.listen_tls {
        files.push(l.cert.path.clone());
        files.push(l.key.path.clone());
        files.extend(l.client_ca.iter().map(|f| f.path.clone()));
    }
    files.extend(
        resource_secrets(res)
            .iter()
            .filter_map(|s| s.source.file())
            .map(Path::to_path_buf),
    );
    files
}

/// Every secret one resource names.
pub(crate) fn resource_secrets(res: &ResourceConfig) -> Vec<&SecretRef> {
    let mut secrets = auth_secrets_of(&res.auth);
    secrets.extend(res.headers.iter().map(|(_, s)| s));
    secrets.extend(res.db.client_password.iter());
    secrets
}

/// What a resource's runtime is built from: its settings (without file positions), the bytes
/// of its files and its secret values, hashed. Equal fingerprints: a reload keeps the running
/// snapshot (and its HTTP pools) instead of replacing it.
pub fn fingerprint(res: &ResourceConfig, env: &dyn Env) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(without_sites(&format!("{res:?}")).as_bytes());
    for file in resource_files(res) {
        h.update(file.as_os_str().as_encoded_bytes());
        h.update(std::fs::read(&file).unwrap_or_default());
    }
    for secret in resource_secrets(res) {
        match secret.source.resolve(env) {
            Ok(v) => h.update(v.expose().as_bytes()),
            Err(e) => h.update(e.to_string().as_bytes()),
        }
    }
    h.finalize().into()
}

/// Drops `Site { .. }` (line, column, key path) from a Debug rendering: moving a resource in
/// the file does not change it.
fn without_sites(debug: &str) -> String {
    let mut out = String::with_capacity(debug.len());
    let mut rest = debug;
    while let Some(i) = rest.find("Site {") {
        out.push_str(&rest[..i]);
        match rest[i..].find('}') {
            Some(j) => rest = &rest[i + j + 1..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// The secrets an auth block names.
pub(crate) fn auth_secrets_of(auth: &Auth) -> Vec<&SecretRef> {
    match auth {
        Auth::None => vec![],
        Auth::Password { password, .. } => password.iter().collect(),
        Auth::RdsIam { credentials: c, .. } | Auth::AwsSigV4 { credentials: c, .. } => {
            [&c.access_key_id, &c.secret_access_key, &c.session_token]
                .into_iter()
                .flatten()
                .collect()
        }
        Auth::ApiKey { value, .. } => vec![value],
        Auth::Basic { password, .. } => vec![password],
        Auth::Bearer { token } => vec![token],
        Auth::OAuth2(o) => [&o.client_secret, &o.refresh_token]
            .into_iter()
            .flatten()
            .collect(),
    }
}
