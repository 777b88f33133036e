//! AWS Signature Version 4 with the `aws-sigv4` crate (never by hand). Signing happens last,
//! after every other header change. Credentials come from the config's secrets, else the
//! standard environment variables, else the shared credentials file (`AWS_PROFILE`).

use std::path::PathBuf;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use crate::config::AwsCredentials;
use crate::error::{ConnError, Reason, Side};
use crate::secret::Env;

/// A resource's request signer.
#[derive(Debug)]
pub struct Signer {
    service: String,
    region: String,
    identity: Identity,
    /// Sign `UNSIGNED-PAYLOAD` and stream the body.
    pub unsigned_payload: bool,
    /// Largest body buffered for hashing.
    pub max_body: u64,
}

impl Signer {
    /// A signer; `credentials` are already resolved.
    pub fn new(
        service: &str,
        region: &str,
        credentials: Credentials,
        unsigned_payload: bool,
        max_body: u64,
    ) -> Self {
        Self {
            service: service.to_owned(),
            region: region.to_owned(),
            identity: credentials.into(),
            unsigned_payload,
            max_body,
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
        let params = v4::SigningParams::builder()
            .identity(&self.identity)
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

/// Credentials from the config, else `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
/// `AWS_SESSION_TOKEN`, else the shared credentials file's `AWS_PROFILE` (or `default`).
pub fn resolve_credentials(config: &AwsCredentials, env: &dyn Env) -> Result<Credentials, String> {
    if let (Some(id), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
        let token = match &config.session_token {
            Some(t) => Some(t.source.resolve(env)?.expose().to_owned()),
            None => None,
        };
        let id = id.source.resolve(env)?;
        let secret = secret.source.resolve(env)?;
        return Ok(Credentials::new(
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
        return Ok(Credentials::new(
            id,
            secret,
            env.var("AWS_SESSION_TOKEN"),
            None,
            "environment",
        ));
    }
    let file = env
        .var("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| {
            env.var("HOME")
                .map(|h| PathBuf::from(h).join(".aws/credentials"))
        });
    let profile = env
        .var("AWS_PROFILE")
        .unwrap_or_else(|| "default".to_owned());
    let Some(file) = file else {
        return Err("no AWS credentials: set access_key_id/secret_access_key, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or a shared credentials file".to_owned());
    };
    let text = std::fs::read_to_string(&file).map_err(|e| {
        format!(
            "no AWS credentials in the config or environment, and the shared credentials file {:?} cannot be read: {}",
            file.display().to_string(),
            crate::config::io_reason(&e)
        )
    })?;
    let values = ini_section(&text, &profile);
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
            "profile [{profile}] in {:?} has no aws_access_key_id/aws_secret_access_key",
            file.display().to_string()
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
        assert_eq!(c.access_key_id(), "AKIDENV");
        let c = resolve_credentials(
            &none,
            &env_with(vec![("AWS_SHARED_CREDENTIALS_FILE", path.clone())]),
        )
        .unwrap();
        assert_eq!(c.access_key_id(), "AKIDDEFAULT");
        let c = resolve_credentials(
            &none,
            &env_with(vec![
                ("AWS_SHARED_CREDENTIALS_FILE", path.clone()),
                ("AWS_PROFILE", "prod".into()),
            ]),
        )
        .unwrap();
        assert_eq!(
            (c.access_key_id(), c.session_token()),
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
}
