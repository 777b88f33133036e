//! AWS Signature Version 4 with the `aws-sigv4` crate (never by hand). Signing happens last,
//! after every other header change, with the credentials [`crate::aws::Source`] holds.

use std::sync::Arc;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
    UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use crate::error::{ConnError, Reason, Side};

/// A resource's request signer.
#[derive(Debug)]
pub struct Signer {
    service: String,
    region: String,
    /// Where the credentials come from (cached, refreshed ahead of expiry).
    pub credentials: Arc<crate::aws::Source>,
    /// Sign `UNSIGNED-PAYLOAD` and stream the body.
    pub unsigned_payload: bool,
    /// Largest body buffered for hashing.
    pub max_body: u64,
}

impl Signer {
    /// A signer for `credentials`.
    pub fn new(
        service: &str,
        region: &str,
        credentials: Arc<crate::aws::Source>,
        unsigned_payload: bool,
        max_body: u64,
    ) -> Self {
        Self {
            service: service.to_owned(),
            region: region.to_owned(),
            credentials,
            unsigned_payload,
            max_body,
        }
    }

    /// Signs `request` at `time`; `body` is the whole payload, or `None` for an unsigned one.
    pub fn sign<B>(
        &self,
        credentials: &Credentials,
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
        let identity: Identity = credentials.clone().into();
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
        credentials: &Credentials,
        url: &str,
        expires: std::time::Duration,
        time: SystemTime,
    ) -> Result<String, String> {
        let mut settings = SigningSettings::default();
        settings.signature_location = aws_sigv4::http_request::SignatureLocation::QueryParams;
        settings.expires_in = Some(expires);
        let identity: Identity = credentials.clone().into();
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
