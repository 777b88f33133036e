//! AWS Signature Version 4 with the `aws-sigv4` crate (never by hand). Signing happens last,
//! after every other header change. Credentials come from the config's secrets, else the
//! standard environment variables, else the shared credentials file (`AWS_PROFILE`).

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use tracing::{info, warn};

use crate::config::AwsCredentials;
use crate::error::{ConnError, Reason, Side};
use crate::secret::Env;

/// A resource's request signer.
#[derive(Debug)]
pub struct Signer {
    service: String,
    region: String,
    identity: Mutex<Identity>,
    /// Set when the credentials came from the shared credentials file: re-read when it changes.
    shared_file: Option<SharedFile>,
    /// Sign `UNSIGNED-PAYLOAD` and stream the body.
    pub unsigned_payload: bool,
    /// Largest body buffered for hashing.
    pub max_body: u64,
}

impl Signer {
    /// A signer for resolved credentials.
    pub fn new(
        service: &str,
        region: &str,
        resolved: Resolved,
        unsigned_payload: bool,
        max_body: u64,
    ) -> Self {
        Self {
            service: service.to_owned(),
            region: region.to_owned(),
            identity: Mutex::new(resolved.credentials.into()),
            shared_file: resolved.shared_file,
            unsigned_payload,
            max_body,
        }
    }

    /// The identity to sign with; from the shared credentials file, re-read when its
    /// modification time changed (a broken file keeps the previous credentials, with a warning).
    fn identity(&self) -> Identity {
        if let Some(file) = &self.shared_file {
            let mtime = std::fs::metadata(&file.path)
                .and_then(|m| m.modified())
                .ok();
            let changed = file.mtime.lock().map(|mut seen| {
                let changed = *seen != mtime;
                *seen = mtime;
                changed
            });
            if changed.unwrap_or(false) {
                match from_shared_file(&file.path, &file.profile) {
                    Ok(creds) => {
                        info!(file = %file.path.display(), profile = %file.profile, "AWS credentials re-read");
                        if let Ok(mut id) = self.identity.lock() {
                            *id = creds.into();
                        }
                    }
                    Err(e) => warn!("keeping the previous AWS credentials: {e}"),
                }
            }
        }
        match self.identity.lock() {
            Ok(id) => id.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Signs `request` at `time`; `body` is the whole payload, or `None` for an unsigned one.
    pub fn sign<B>(
        &self,
        request: &mut http::Request<B>,
        body: Option<&[u8]>,
        time: SystemTime,
    ) -> Result<(), ConnError> {
        let fail = |e: String| {
            ConnError::new(
                Side::Internal,
                Reason::Signing,
                format!("aws_sigv4 signing failed: {e}"),
            )
        };
        let mut settings = SigningSettings::default();
        settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
        if self.service == "s3" {
            // S3 signs the path as sent: single encoding, no normalization.
            settings.percent_encoding_mode = PercentEncodingMode::Single;
            settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
        }
        let identity = self.identity();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(&self.service)
            .time(time)
            .settings(settings)
            .build()
            .map_err(|e| fail(e.to_string()))?
            .into();
        let headers: Vec<(&str, &str)> = request
            .headers()
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v)))
            .collect();
        let signable_body = match body {
            Some(bytes) => SignableBody::Bytes(bytes),
            None => SignableBody::UnsignedPayload,
        };
        let uri = request.uri().to_string();
        let signable = SignableRequest::new(
            request.method().as_str(),
            uri,
            headers.into_iter(),
            signable_body,
        )
        .map_err(|e| fail(e.to_string()))?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| fail(e.to_string()))?
            .into_parts();
        instructions.apply_to_request_http1x(request);
        for name in [http::header::AUTHORIZATION.as_str(), "x-amz-security-token"] {
            if let Some(v) = request.headers_mut().get_mut(name) {
                v.set_sensitive(true);
            }
        }
        Ok(())
    }
}

impl Signer {
    /// A presigned URL (signature in the query string) for `GET url`, valid for `expires`.
    /// The returned query keeps `url`'s own parameters first, then the `X-Amz-*` ones in
    /// the order SigV4 presigning defines.
    pub fn presign(
        &self,
        url: &str,
        expires: std::time::Duration,
        time: SystemTime,
    ) -> Result<String, String> {
        let mut settings = SigningSettings::default();
        settings.signature_location = aws_sigv4::http_request::SignatureLocation::QueryParams;
        settings.expires_in = Some(expires);
        let identity = self.identity();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name(&self.service)
            .time(time)
            .settings(settings)
            .build()
            .map_err(|e| e.to_string())?
            .into();
        let signable =
            SignableRequest::new("GET", url, std::iter::empty(), SignableBody::Bytes(&[]))
                .map_err(|e| e.to_string())?;
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| e.to_string())?
            .into_parts();
        // botocore's order: the X-Amz-* parameters as signed, the session token and the
        // signature last.
        let mut params: Vec<_> = instructions.params().to_vec();
        let last = |name: &str| match name {
            "X-Amz-Signature" => 2,
            "X-Amz-Security-Token" => 1,
            _ => 0,
        };
        params.sort_by_key(|(name, _)| last(name));
        let mut out = url.to_owned();
        let mut sep = if out.contains('?') { '&' } else { '?' };
        for (name, value) in params {
            out.push(sep);
            sep = '&';
            out.push_str(name);
            out.push('=');
            out.push_str(&uri_encode(&value));
        }
        Ok(out)
    }
}

/// SigV4 URI encoding: everything but the unreserved characters `A-Za-z0-9-_.~`.
pub fn uri_encode(value: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(value, SET).to_string()
}

/// Where signing credentials came from.
#[derive(Debug)]
pub struct Resolved {
    /// The credentials now.
    pub credentials: Credentials,
    /// The shared credentials file they were read from, if so.
    pub shared_file: Option<SharedFile>,
}

/// A shared credentials file and profile, with the modification time last read.
#[derive(Debug)]
pub struct SharedFile {
    path: PathBuf,
    profile: String,
    mtime: Mutex<Option<SystemTime>>,
}

/// Credentials from the config, else `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
/// `AWS_SESSION_TOKEN`, else the shared credentials file's `AWS_PROFILE` (or `default`).
pub fn resolve_credentials(config: &AwsCredentials, env: &dyn Env) -> Result<Resolved, String> {
    let fixed = |credentials| {
        Ok(Resolved {
            credentials,
            shared_file: None,
        })
    };
    if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        let token = match &config.session_token {
            Some(t) => Some(
                t.source
                    .resolve(env)
                    .map_err(|e| e.to_string())?
                    .expose()
                    .to_owned(),
            ),
            None => None,
        };
        let id = id.source.resolve(env).map_err(|e| e.to_string())?;
        let secret = secret.source.resolve(env).map_err(|e| e.to_string())?;
        return fixed(Credentials::new(
            id.expose(),
            secret.expose(),
            token,
            None,
            "keyward-config",
        ));
    }
    if let (Some(id), Some(secret)) = (
        env.var("AWS_ACCESS_KEY_ID"),
        env.var("AWS_SECRET_ACCESS_KEY"),
    ) {
        return fixed(Credentials::new(
            id,
            secret,
            env.var("AWS_SESSION_TOKEN"),
            None,
            "environment",
        ));
    }
    let path = env
        .var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| env.var("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")))
        .ok_or_else(|| "no AWS credentials: set access_key_id/secret_access_key, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or a shared credentials file".to_owned())?;
    let profile = env
        .var("AWS_PROFILE")
        .unwrap_or_else(|| "default".to_owned());
    let mtime = std::fs::metadata(&path).and_then(|m| m.modified()).ok();
    let credentials = from_shared_file(&path, &profile)?;
    Ok(Resolved {
        credentials,
        shared_file: Some(SharedFile {
            path,
            profile,
            mtime: Mutex::new(mtime),
        }),
    })
}

fn from_shared_file(path: &std::path::Path, profile: &str) -> Result<Credentials, String> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!("no AWS credentials in the config or environment, and the shared credentials file {shown:?} cannot be read: {}", crate::config::io_reason(&e))
    })?;
    let values = ini_section(&text, profile);
    let get = |k: &str| {
        values
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    match (get("aws_access_key_id"), get("aws_secret_access_key")) {
        (Some(id), Some(secret)) => Ok(Credentials::new(
            id,
            secret,
            get("aws_session_token"),
            None,
            "shared-credentials-file",
        )),
        _ => Err(format!(
            "profile [{profile}] in {shown:?} has no aws_access_key_id/aws_secret_access_key"
        )),
    }
}

/// The key = value pairs of `[section]` in an INI text.
fn ini_section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_owned(), v.trim().to_owned()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_env_then_the_shared_file_profile() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(&file, "[default]\naws_access_key_id = AKIDDEFAULT\naws_secret_access_key = s1\n\n[prod]\naws_access_key_id=AKIDPROD\naws_secret_access_key=s2\naws_session_token=tok\n").unwrap();
        let path = file.display().to_string();
        let env_with = move |vars: Vec<(&'static str, String)>| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        };
        let none = AwsCredentials::default();
        let c = resolve_credentials(
            &none,
            &env_with(vec![
                ("AWS_ACCESS_KEY_ID", "AKIDENV".into()),
                ("AWS_SECRET_ACCESS_KEY", "x".into()),
            ]),
        )
        .unwrap();
        assert_eq!(c.credentials.access_key_id(), "AKIDENV");
        let c = resolve_credentials(
            &none,
            &env_with(vec![("AWS_SHARED_CREDENTIALS_FILE", path.clone())]),
        )
        .unwrap();
        assert_eq!(c.credentials.access_key_id(), "AKIDDEFAULT");
        let c = resolve_credentials(
            &none,
            &env_with(vec![
                ("AWS_SHARED_CREDENTIALS_FILE", path.clone()),
                ("AWS_PROFILE", "prod".into()),
            ]),
        )
        .unwrap();
        assert_eq!(
            (c.credentials.access_key_id(), c.credentials.session_token()),
            ("AKIDPROD", Some("tok"))
        );
        let err = resolve_credentials(
            &none,
            &env_with(vec![
                ("AWS_SHARED_CREDENTIALS_FILE", path),
                ("AWS_PROFILE", "nope".into()),
            ]),
        )
        .unwrap_err();
        assert!(err.contains("profile [nope]"), "{err}");
    }

    #[test]
    fn a_changed_shared_credentials_file_is_re_read_for_the_next_signature() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = AKIDOLD\naws_secret_access_key = s1\n",
        )
        .unwrap();
        let path = file.display().to_string();
        let env = move |k: &str| (k == "AWS_SHARED_CREDENTIALS_FILE").then(|| path.clone());
        let signer = Signer::new(
            "execute-api",
            "eu-west-1",
            resolve_credentials(&AwsCredentials::default(), &env).unwrap(),
            false,
            1024,
        );
        let credential_of = |signer: &Signer| {
            let mut req = http::Request::get("https://api.example/x")
                .body(())
                .unwrap();
            signer.sign(&mut req, Some(b""), SystemTime::now()).unwrap();
            let auth = req.headers()["authorization"].to_str().unwrap().to_owned();
            auth.split("Credential=")
                .nth(1)
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_owned()
        };
        assert_eq!(credential_of(&signer), "AKIDOLD");
        // Rotated (a different size, so the change is seen even within one mtime tick).
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = AKIDNEWER\naws_secret_access_key = s2\n",
        )
        .unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(2);
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert_eq!(credential_of(&signer), "AKIDNEWER");
        // A broken rewrite keeps the previous credentials.
        std::fs::write(&file, "garbage").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later + std::time::Duration::from_secs(2))
            .unwrap();
        assert_eq!(credential_of(&signer), "AKIDNEWER");
    }
}
