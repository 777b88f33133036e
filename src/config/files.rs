//! What a resource is built from, beyond its settings: the files it reads (watched for
//! reload) and the secrets it names, and the fingerprint of all of it that tells a reload
//! whether the resource changed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use zeroize::Zeroizing;

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

/// A file's bytes, or why it could not be read.
type FileRead = Result<Zeroizing<Vec<u8>>, (std::io::ErrorKind, String)>;

/// An [`Env`] that remembers what a build read: each file is read once (later reads get the
/// same bytes) and each variable looked up once, so [`Recorded::fingerprint`] hashes exactly
/// the material the build used. (Reading the files again to fingerprint them would let a write
/// between the two reads publish stale material under the new fingerprint, and the next
/// reload would skip it.) What it holds is zeroized when it is dropped.
pub struct Recorded<'a> {
    env: &'a dyn Env,
    files: Mutex<BTreeMap<PathBuf, FileRead>>,
    vars: Mutex<BTreeMap<String, Option<Zeroizing<String>>>>,
}

impl<'a> Recorded<'a> {
    /// Reads through `env`.
    pub fn new(env: &'a dyn Env) -> Self {
        Self {
            env,
            files: Mutex::new(BTreeMap::new()),
            vars: Mutex::new(BTreeMap::new()),
        }
    }

    /// What a resource's runtime was built from: its settings (without file positions), the
    /// bytes of every file and the value of every variable the build read, hashed. Equal
    /// fingerprints: a reload keeps the running snapshot (and its HTTP pools) instead of
    /// replacing it.
    pub fn fingerprint(&self, res: &ResourceConfig) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(without_sites(&format!("{res:?}")).as_bytes());
        let files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        for (path, read) in files.iter() {
            h.update(b"\0file\0");
            h.update(path.as_os_str().as_encoded_bytes());
            match read {
                Ok(bytes) => h.update(&bytes[..]),
                Err((_, e)) => h.update(e.as_bytes()),
            }
        }
        let vars = self.vars.lock().unwrap_or_else(|e| e.into_inner());
        for (name, value) in vars.iter() {
            h.update(b"\0var\0");
            h.update(name.as_bytes());
            h.update(value.as_ref().map_or(&b"\0unset"[..], |v| v.as_bytes()));
        }
        h.finalize().into()
    }
}

impl Env for Recorded<'_> {
    fn var(&self, name: &str) -> Option<String> {
        let mut vars = self.vars.lock().unwrap_or_else(|e| e.into_inner());
        vars.entry(name.to_owned())
            .or_insert_with(|| self.env.var(name).map(Zeroizing::new))
            .as_deref()
            .cloned()
    }

    fn read(&self, path: &Path) -> std::io::Result<Zeroizing<Vec<u8>>> {
        let mut files = self.files.lock().unwrap_or_else(|e| e.into_inner());
        let read = files
            .entry(path.to_owned())
            .or_insert_with(|| self.env.read(path).map_err(|e| (e.kind(), e.to_string())));
        match read {
            Ok(bytes) => Ok(bytes.clone()),
            Err((kind, e)) => Err(std::io::Error::new(*kind, e.clone())),
        }
    }
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
