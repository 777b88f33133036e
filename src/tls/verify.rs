//! The only file that may call rustls `.dangerous()` (docs/DESIGN.md rule 4).
//!
//! `verify-full` is rustls' own `WebPkiServerVerifier`. `verify-ca` delegates to it and relaxes
//! exactly one thing: a name mismatch. This is sound because `WebPkiServerVerifier` checks the
//! chain (signatures, validity, EKU, revocation) *before* the name (rustls
//! `webpki/server_verifier.rs`), so a `NotValidForName` error means the chain already passed.
//! `insecure` verifies nothing about the certificate but still checks the handshake signatures,
//! so the peer must at least hold the key of the certificate it sent.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WantsClientCert;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, ConfigBuilder, DigitallySignedStruct, DistinguishedName,
    RootCertStore, SignatureScheme, WantsVerifier,
};

use crate::config::TlsMode;

/// Builds the server-certificate verifier for `mode`. `Disable` has no verifier and is treated
/// as `VerifyFull` here, so a caller that gets this wrong fails closed.
pub fn server_verifier(
    mode: TlsMode,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn ServerCertVerifier>, rustls::client::VerifierBuilderError> {
    Ok(match mode {
        TlsMode::VerifyFull | TlsMode::Disable => {
            WebPkiServerVerifier::builder_with_provider(roots, provider).build()?
        }
        TlsMode::VerifyCa => Arc::new(Relaxed {
            chain: Some(
                WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build()?,
            ),
            provider,
        }),
        TlsMode::Insecure => Arc::new(Relaxed {
            chain: None,
            provider,
        }),
    })
}

/// Puts the verifier for `mode` into a client config builder.
pub(crate) fn with_verifier(
    builder: ConfigBuilder<ClientConfig, WantsVerifier>,
    mode: TlsMode,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
) -> Result<ConfigBuilder<ClientConfig, WantsClientCert>, rustls::client::VerifierBuilderError> {
    match mode {
        TlsMode::VerifyFull | TlsMode::Disable => Ok(builder.with_webpki_verifier(
            WebPkiServerVerifier::builder_with_provider(roots, provider).build()?,
        )),
        TlsMode::VerifyCa | TlsMode::Insecure => {
            let verifier = server_verifier(mode, roots, provider)?;
            Ok(builder
                .dangerous()
                .with_custom_certificate_verifier(verifier))
        }
    }
}

type Cert<'a> = CertificateDer<'a>;
type Dss = DigitallySignedStruct;
type Signature = Result<HandshakeSignatureValid, rustls::Error>;

/// `verify-ca` and `insecure`. `verify-ca` delegates to rustls' verifier and forgives its name
/// mismatch alone (the chain must verify; the host name is not checked, as libpq
/// `verify-ca`); `insecure` accepts any certificate. Both check the handshake signatures with
/// the provider's algorithms, as rustls' verifier does, so the peer must hold the key of the
/// certificate it sent.
#[derive(Debug)]
struct Relaxed {
    /// `verify-ca`'s chain verifier; `None` for `insecure`.
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Relaxed {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(&self, m: &[u8], c: &Cert<'_>, d: &Dss) -> Signature {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(m, c, d, algorithms)
    }

    fn verify_tls13_signature(&self, m: &[u8], c: &Cert<'_>, d: &Dss) -> Signature {
        let algorithms = &self.provider.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(m, c, d, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.chain.as_ref().and_then(|c| c.root_hint_subjects())
    }
}
