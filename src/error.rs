//! One classification of how a connection failed: which side, and a reason from a closed list.
//!
//! The pair drives the log line, (later) the metric labels and any error sent to the client
//! (docs/DESIGN.md rule 6). `detail` is the precise human sentence; it never holds a secret.

use std::fmt;
use std::io;

use rustls::{AlertDescription, CertificateError};

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The application connecting to keyward.
    Client,
    /// The upstream server (or the network path to it).
    Upstream,
    /// keyward itself (its limits, its configuration).
    Internal,
}

impl Side {
    /// A stable label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Client => "client",
            Self::Upstream => "upstream",
            Self::Internal => "internal",
        }
    }
}

/// Why a connection failed: a closed list, usable as a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The upstream host name did not resolve.
    Resolve,
    /// The upstream actively refused the TCP connection.
    ConnectRefused,
    /// The TCP connection did not complete within `connect_timeout`.
    ConnectTimeout,
    /// Another TCP connect failure (unreachable network, …).
    ConnectFailed,
    /// The TLS handshake did not complete within `handshake_timeout`.
    HandshakeTimeout,
    /// The upstream certificate does not chain to a trusted CA.
    UnknownIssuer,
    /// The upstream certificate is not valid for the expected name.
    NameMismatch,
    /// The upstream certificate (or one in its chain) has expired.
    Expired,
    /// The upstream certificate is not valid yet.
    NotYetValid,
    /// The upstream certificate is otherwise unacceptable.
    BadCertificate,
    /// The upstream refused keyward's client certificate, or wanted one it did not get.
    ClientCertRejected,
    /// Any other TLS failure.
    Tls,
    /// No bytes either way for `idle_timeout`.
    IdleTimeout,
    /// The resource already has `max_connections` open.
    MaxConnections,
    /// The peer reset the connection.
    Reset,
    /// The peer closed a TLS connection without close_notify.
    Truncated,
    /// Another I/O error.
    Io,
    /// The upstream did not send response headers within `response_timeout`.
    ResponseTimeout,
    /// The peer broke the HTTP protocol (or closed mid-message).
    Protocol,
    /// The OAuth2 token endpoint failed.
    TokenEndpoint,
    /// Request signing failed.
    Signing,
    /// Temporary credentials could not be obtained (AWS default chain, assume_role).
    Credentials,
    /// A body too large to buffer for signing.
    BodyTooLarge,
    /// Authentication failed: the upstream refused keyward's login, keyward could not answer
    /// the method it asked for, or the app failed `client_password`.
    AuthFailed,
    /// The app did not send what it must before relaying within `client_handshake_timeout`.
    ClientHandshakeTimeout,
    /// The listener requires TLS with an (allowed) client certificate and the app did not
    /// present one.
    ClientCertRequired,
    /// A message before authentication was larger than the protocol's limit.
    MessageTooLarge,
    /// keyward itself failed (a panic in a connection task): a bug to report.
    Panic,
    /// An HTTP method keyward does not forward unless allowed (TRACE, CONNECT).
    MethodNotAllowed,
    /// An HTTP request path whose `..` segments would leave the upstream's base path.
    PathOutsideBase,
    /// A request, command or statement the resource's `allow` rules (or `read_only`) refuse.
    Denied,
}

impl Reason {
    /// A stable snake_case label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Resolve => "resolve",
            Self::ConnectRefused => "connect_refused",
            Self::ConnectTimeout => "connect_timeout",
            Self::ConnectFailed => "connect_failed",
            Self::HandshakeTimeout => "handshake_timeout",
            Self::UnknownIssuer => "unknown_issuer",
            Self::NameMismatch => "name_mismatch",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadCertificate => "bad_certificate",
            Self::ClientCertRejected => "client_cert_rejected",
            Self::Tls => "tls",
            Self::IdleTimeout => "idle_timeout",
            Self::MaxConnections => "max_connections",
            Self::Reset => "reset",
            Self::Truncated => "truncated",
            Self::Io => "io",
            Self::ResponseTimeout => "response_timeout",
            Self::Protocol => "protocol",
            Self::TokenEndpoint => "token_endpoint",
            Self::Signing => "signing",
            Self::Credentials => "credentials",
            Self::BodyTooLarge => "body_too_large",
            Self::AuthFailed => "auth_failed",
            Self::ClientHandshakeTimeout => "client_handshake_timeout",
            Self::ClientCertRequired => "client_cert_required",
            Self::MessageTooLarge => "message_too_large",
            Self::Panic => "panic",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PathOutsideBase => "path_outside_base",
            Self::Denied => "denied",
        }
    }
}

/// A classified connection failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnError {
    /// Who caused it.
    pub side: Side,
    /// Why, from a closed list.
    pub reason: Reason,
    /// The precise sentence for logs and for the client (`certificate not valid for name "x"`).
    pub detail: String,
}

impl ConnError {
    /// A classified error.
    pub fn new(side: Side, reason: Reason, detail: impl Into<String>) -> Self {
        Self {
            side,
            reason,
            detail: detail.into(),
        }
    }

    /// Classifies an I/O error seen on `side`; rustls errors inside it are recognised.
    pub fn from_io(side: Side, err: &io::Error) -> Self {
        if let Some(tls) = err
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            return Self::from_tls(side, tls);
        }
        if let Some(expired) = err.get_ref().and_then(|e| e.downcast_ref::<Expired>()) {
            return Self::new(
                Side::Client,
                Reason::ClientHandshakeTimeout,
                expired.to_string(),
            );
        }
        if let Some(v) = err.get_ref().and_then(|e| e.downcast_ref::<Violation>()) {
            return Self::new(Side::Client, Reason::Protocol, v.to_string());
        }
        let reason = match err.kind() {
            io::ErrorKind::ConnectionRefused => Reason::ConnectRefused,
            io::ErrorKind::TimedOut => Reason::ConnectTimeout,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe => Reason::Reset,
            io::ErrorKind::UnexpectedEof => Reason::Truncated,
            _ => Reason::Io,
        };
        let detail = match reason {
            Reason::ConnectRefused => "connection refused".to_owned(),
            Reason::Reset => format!("connection reset by the {}", side_noun(side)),
            Reason::Truncated => format!(
                "the {} closed the TLS connection without close_notify",
                side_noun(side)
            ),
            _ => err.to_string(),
        };
        Self::new(side, reason, detail)
    }

    /// Classifies a rustls error. Certificate problems are the upstream's; alerts it sent about
    /// our client certificate are reported as such.
    pub fn from_tls(side: Side, err: &rustls::Error) -> Self {
        use rustls::Error as E;
        let (reason, detail) = match err {
            E::InvalidCertificate(cert) => certificate_reason(cert),
            E::AlertReceived(alert) => alert_reason(*alert),
            E::NoCertificatesPresented => (
                Reason::BadCertificate,
                "the upstream presented no certificate".to_owned(),
            ),
            other => (Reason::Tls, format!("TLS error: {other}")),
        };
        Self::new(side, reason, detail)
    }
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl std::error::Error for ConnError {}

/// A short reason for an I/O error on a named file.
pub fn io_reason(err: &io::Error) -> String {
    match err.kind() {
        io::ErrorKind::NotFound => "not found".to_owned(),
        io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        io::ErrorKind::IsADirectory => "is a directory".to_owned(),
        _ => err.to_string(),
    }
}

/// The I/O error an app stream returns once `client_handshake_timeout` has passed before
/// keyward relays; [`ConnError::from_io`] classifies it as
/// [`Reason::ClientHandshakeTimeout`] whichever read saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired(pub std::time::Duration);

impl fmt::Display for Expired {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the app did not finish its part of the handshake within client_handshake_timeout ({})",
            humantime::format_duration(self.0)
        )
    }
}

impl std::error::Error for Expired {}

/// The I/O error a filtered app stream returns when the app broke its protocol in a way
/// keyward will not pass on (the app already got the protocol's error); [`ConnError::from_io`]
/// classifies it as [`Reason::Protocol`] on the client's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Violation {}

impl Violation {
    /// As the I/O error a stream returns.
    pub fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

fn side_noun(side: Side) -> &'static str {
    match side {
        Side::Client => "client",
        Side::Upstream => "upstream",
        Side::Internal => "proxy",
    }
}

/// A name the certificate presented, as a user writes it: webpki gives `DnsName("a.example")`
/// and `IpAddress(10.0.0.7)`; this gives `"a.example"` and `10.0.0.7`.
fn plain_name(presented: &str) -> String {
    match presented.split_once('(') {
        Some((_, rest)) if rest.ends_with(')') => {
            let inner = &rest[..rest.len() - 1];
            if inner.starts_with('"') {
                inner.to_owned()
            } else {
                inner.trim().to_owned()
            }
        }
        _ => presented.to_owned(),
    }
}

fn certificate_reason(err: &CertificateError) -> (Reason, String) {
    use CertificateError as C;
    match err {
        C::UnknownIssuer => (
            Reason::UnknownIssuer,
            "unknown issuer: the upstream certificate does not chain to a trusted CA (check tls.ca)".to_owned(),
        ),
        C::NotValidForName => (Reason::NameMismatch, "certificate not valid for the expected name".to_owned()),
        C::NotValidForNameContext { expected, presented } => {
            let expected = match expected {
                rustls::pki_types::ServerName::DnsName(name) => name.as_ref().to_owned(),
                rustls::pki_types::ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
                other => format!("{other:?}"),
            };
            let presented = if presented.is_empty() {
                "none".to_owned()
            } else {
                presented.iter().map(|p| plain_name(p)).collect::<Vec<_>>().join(", ")
            };
            (
                Reason::NameMismatch,
                format!("certificate not valid for name \"{expected}\" (it is valid for: {presented})"),
            )
        }
        C::Expired | C::ExpiredContext { .. } => (Reason::Expired, format!("certificate expired ({err})")),
        C::NotValidYet | C::NotValidYetContext { .. } => {
            (Reason::NotYetValid, format!("certificate not valid yet ({err})"))
        }
        other => (Reason::BadCertificate, format!("invalid certificate: {other}")),
    }
}

fn alert_reason(alert: AlertDescription) -> (Reason, String) {
    use AlertDescription as A;
    match alert {
        A::CertificateRequired => (
            Reason::ClientCertRejected,
            "the upstream requires a client certificate (set tls.client_cert and tls.client_key)"
                .to_owned(),
        ),
        A::BadCertificate
        | A::UnknownCA
        | A::CertificateUnknown
        | A::UnsupportedCertificate
        | A::CertificateRevoked
        | A::CertificateExpired
        | A::AccessDenied => (
            Reason::ClientCertRejected,
            format!("the upstream rejected keyward's client certificate (TLS alert {alert:?})"),
        ),
        other => (
            Reason::Tls,
            format!("the upstream sent TLS alert {other:?}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_unknown_issuer_and_name_mismatch() {
        let e = ConnError::from_tls(
            Side::Upstream,
            &rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert_eq!((e.side, e.reason), (Side::Upstream, Reason::UnknownIssuer));
        assert!(e.detail.starts_with("unknown issuer"));
        let e = ConnError::from_tls(
            Side::Upstream,
            &rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext {
                expected: rustls::pki_types::ServerName::try_from("api.internal").unwrap(),
                presented: vec!["DnsName(\"other\")".into(), "IpAddress(10.0.0.7)".into()],
            }),
        );
        assert_eq!(e.reason, Reason::NameMismatch);
        assert_eq!(
            e.detail,
            "certificate not valid for name \"api.internal\" (it is valid for: \"other\", 10.0.0.7)"
        );
    }

    #[test]
    fn classifies_client_cert_alerts_and_io_errors() {
        let e = ConnError::from_tls(
            Side::Upstream,
            &rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
        );
        assert_eq!(e.reason, Reason::ClientCertRejected);
        let io = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::BadCertificate),
        );
        assert_eq!(
            ConnError::from_io(Side::Upstream, &io).reason,
            Reason::ClientCertRejected
        );
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        let e = ConnError::from_io(Side::Upstream, &refused);
        assert_eq!(
            (e.reason, e.detail.as_str()),
            (Reason::ConnectRefused, "connection refused")
        );
        assert_eq!(Reason::MaxConnections.as_str(), "max_connections");
    }
}
