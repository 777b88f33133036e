//! The PostgreSQL messages keyward reads and writes itself, sans I/O: every parser takes a
//! byte prefix and says "need more", "here is one message and its length", or why the bytes
//! are not PostgreSQL. Backend authentication messages are decoded with `postgres-protocol`;
//! what that crate does not cover (the untagged startup packets, BackendKeyData with the
//! longer keys of protocol 3.2, the messages keyward sends as a server) is here.

use std::fmt;

use bytes::BytesMut;
use postgres_protocol::message::backend;

/// Startup packet codes (in place of a protocol version).
pub const SSL_REQUEST: u32 = 80_877_103;
/// GSSAPI encryption request.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// CancelRequest.
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// Largest startup packet accepted from an app (PostgreSQL's own limit is 10 000 bytes).
pub const MAX_STARTUP: usize = 10_000;
/// Largest message accepted while authenticating (upstream or app).
pub const MAX_AUTH_MESSAGE: usize = 1 << 20;

/// Why bytes are not a PostgreSQL message keyward can accept. The text is shown to the app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodecError {
    /// A length field below its minimum or above the limit.
    Length(u64),
    /// An unsupported protocol version.
    Version(u16, u16),
    /// Structurally wrong content.
    Malformed(&'static str),
    /// A startup parameter given twice. The server takes the last one; keyward's rewrite of
    /// `user`/`database` must not be sidestepped by a second copy, so the packet is refused.
    Repeated(String),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Length(len) => write!(f, "invalid message length {len}"),
            Self::Version(major, minor) => write!(
                f,
                "unsupported frontend protocol {major}.{minor}: keyward supports protocol 3"
            ),
            Self::Malformed(what) => write!(f, "malformed message: {what}"),
            Self::Repeated(name) => write!(f, "repeated startup parameter {name:?}"),
        }
    }
}

/// The first packet of an app connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initial {
    /// SSLRequest.
    Ssl,
    /// GSSENCRequest.
    GssEnc,
    /// CancelRequest with the backend key the app was given.
    Cancel {
        /// Process id.
        pid: i32,
        /// Secret key (4 bytes in protocol 3.0, up to 256 in 3.2).
        key: Vec<u8>,
    },
    /// StartupMessage.
    Startup(Startup),
}

/// A StartupMessage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Startup {
    /// Protocol major version (3).
    pub major: u16,
    /// Protocol minor version (passed through to the upstream).
    pub minor: u16,
    /// Parameters in the order sent.
    pub params: Vec<(String, String)>,
}

impl Startup {
    /// The value of a parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets (replacing, or appending) a parameter.
    pub fn set(&mut self, name: &str, value: &str) {
        match self.params.iter_mut().find(|(k, _)| k == name) {
            Some((_, v)) => *v = value.to_owned(),
            None => self.params.push((name.to_owned(), value.to_owned())),
        }
    }

    /// The encoded message.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&self.major.to_be_bytes());
        body.extend_from_slice(&self.minor.to_be_bytes());
        for (k, v) in &self.params {
            body.extend_from_slice(k.as_bytes());
            body.push(0);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        untagged(&body)
    }
}

fn untagged(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Parses the first packet of an app connection (untagged: length, then code or version).
pub fn parse_initial(buf: &[u8]) -> Result<Option<(Initial, usize)>, CodecError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = be32(buf) as usize;
    if !(8..=MAX_STARTUP).contains(&len) {
        return Err(CodecError::Length(len as u64));
    }
    if buf.len() < len {
        return Ok(None);
    }
    let packet = &buf[4..len];
    let code = be32(packet);
    let initial = match code {
        SSL_REQUEST if len == 8 => Initial::Ssl,
        GSSENC_REQUEST if len == 8 => Initial::GssEnc,
        SSL_REQUEST | GSSENC_REQUEST => return Err(CodecError::Length(len as u64)),
        CANCEL_REQUEST => {
            if !(16..=12 + 256).contains(&len) {
                return Err(CodecError::Length(len as u64));
            }
            Initial::Cancel {
                pid: be32(&packet[4..]) as i32,
                key: packet[8..].to_vec(),
            }
        }
        _ => {
            let (major, minor) = ((code >> 16) as u16, code as u16);
            if major != 3 {
                return Err(CodecError::Version(major, minor));
            }
            Initial::Startup(Startup {
                major,
                minor,
                params: parse_params(&packet[4..])?,
            })
        }
    };
    Ok(Some((initial, len)))
}

fn parse_params(mut body: &[u8]) -> Result<Vec<(String, String)>, CodecError> {
    let mut params = Vec::new();
    loop {
        let (name, rest) = cstr(body)?;
        if name.is_empty() {
            if !rest.is_empty() {
                return Err(CodecError::Malformed("bytes after the startup parameters"));
            }
            return Ok(params);
        }
        let (value, rest) = cstr(rest)?;
        if params.iter().any(|(k, _)| *k == name) {
            return Err(CodecError::Repeated(name));
        }
        params.push((name, value));
        body = rest;
    }
}

fn cstr(body: &[u8]) -> Result<(String, &[u8]), CodecError> {
    let end = body
        .iter()
        .position(|&b| b == 0)
        .ok_or(CodecError::Malformed(
            "string without its terminating zero byte",
        ))?;
    let text = std::str::from_utf8(&body[..end])
        .map_err(|_| CodecError::Malformed("a startup parameter is not UTF-8"))?;
    Ok((text.to_owned(), &body[end + 1..]))
}

/// The length of the next tagged message (tag byte + length + body), if all of it is in `buf`.
pub fn frame(buf: &[u8], max: usize) -> Result<Option<usize>, CodecError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = be32(&buf[1..]) as usize;
    if len < 4 || len > max {
        return Err(CodecError::Length(len as u64));
    }
    Ok((buf.len() > len).then_some(len + 1))
}

/// An authentication request from the server (`R` message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    /// AuthenticationOk.
    Ok,
    /// AuthenticationCleartextPassword.
    Cleartext,
    /// AuthenticationMD5Password.
    Md5([u8; 4]),
    /// AuthenticationSASL with the mechanisms offered.
    Sasl(Vec<String>),
    /// AuthenticationSASLContinue.
    SaslContinue(Vec<u8>),
    /// AuthenticationSASLFinal.
    SaslFinal(Vec<u8>),
    /// Kerberos, GSS, SSPI: methods keyward cannot answer.
    Unsupported(&'static str),
}

/// A server message during login, decoded with `postgres-protocol`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginMessage {
    /// `R`.
    Auth(AuthRequest),
    /// `E`, with its SQLSTATE and message.
    Error {
        /// SQLSTATE.
        code: String,
        /// Primary message.
        message: String,
    },
    /// `K`: process id and key of any length.
    BackendKeyData {
        /// Process id.
        pid: i32,
        /// Secret key.
        key: Vec<u8>,
    },
    /// `Z`.
    ReadyForQuery,
    /// Anything else (ParameterStatus, NoticeResponse, NegotiateProtocolVersion): passed on.
    Other(u8),
}

/// Decodes one complete server message (as delimited by [`frame`]).
pub fn parse_login(msg: &[u8]) -> Result<LoginMessage, CodecError> {
    let bad = |_| CodecError::Malformed("undecodable server message");
    match msg.first() {
        Some(b'K') => {
            if msg.len() < 5 + 4 + 4 {
                return Err(CodecError::Malformed("short BackendKeyData"));
            }
            return Ok(LoginMessage::BackendKeyData {
                pid: be32(&msg[5..]) as i32,
                key: msg[9..].to_vec(),
            });
        }
        Some(b'R') | Some(b'E') | Some(b'Z') => {}
        Some(other) => return Ok(LoginMessage::Other(*other)),
        None => return Err(CodecError::Malformed("empty message")),
    }
    let mut buf = BytesMut::from(msg);
    let parsed = backend::Message::parse(&mut buf)
        .map_err(bad)?
        .ok_or(CodecError::Malformed("truncated server message"))?;
    use backend::Message as M;
    Ok(match parsed {
        M::AuthenticationOk => LoginMessage::Auth(AuthRequest::Ok),
        M::AuthenticationCleartextPassword => LoginMessage::Auth(AuthRequest::Cleartext),
        M::AuthenticationMd5Password(body) => LoginMessage::Auth(AuthRequest::Md5(body.salt())),
        M::AuthenticationSasl(body) => {
            use fallible_iterator::FallibleIterator;
            let mechanisms: Vec<String> = body
                .mechanisms()
                .map(|m| Ok(m.to_owned()))
                .collect()
                .map_err(bad)?;
            LoginMessage::Auth(AuthRequest::Sasl(mechanisms))
        }
        M::AuthenticationSaslContinue(body) => {
            LoginMessage::Auth(AuthRequest::SaslContinue(body.data().to_vec()))
        }
        M::AuthenticationSaslFinal(body) => {
            LoginMessage::Auth(AuthRequest::SaslFinal(body.data().to_vec()))
        }
        M::AuthenticationKerberosV5 => LoginMessage::Auth(AuthRequest::Unsupported("Kerberos V5")),
        M::AuthenticationScmCredential => {
            LoginMessage::Auth(AuthRequest::Unsupported("SCM credentials"))
        }
        M::AuthenticationGss | M::AuthenticationGssContinue(_) => {
            LoginMessage::Auth(AuthRequest::Unsupported("GSSAPI"))
        }
        M::AuthenticationSspi => LoginMessage::Auth(AuthRequest::Unsupported("SSPI")),
        M::ErrorResponse(body) => {
            use fallible_iterator::FallibleIterator;
            let mut code = String::new();
            let mut message = String::new();
            let mut fields = body.fields();
            while let Some(field) = fields.next().map_err(bad)? {
                match field.type_() {
                    b'C' => code = String::from_utf8_lossy(field.value_bytes()).into_owned(),
                    b'M' => message = String::from_utf8_lossy(field.value_bytes()).into_owned(),
                    _ => {}
                }
            }
            LoginMessage::Error { code, message }
        }
        M::ReadyForQuery(_) => LoginMessage::ReadyForQuery,
        _ => LoginMessage::Auth(AuthRequest::Unsupported("an unknown method")),
    })
}

fn tagged(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 5);
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// An ErrorResponse (severity, SQLSTATE, message), as keyward sends it to the app.
pub fn error_response(severity: &str, code: &str, message: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for (field, value) in [
        (b'S', severity),
        (b'V', severity),
        (b'C', code),
        (b'M', message),
    ] {
        body.push(field);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    tagged(b'E', &body)
}

/// AuthenticationSASL offering `mechanisms`.
pub fn auth_sasl(mechanisms: &[&str]) -> Vec<u8> {
    let mut body = 10u32.to_be_bytes().to_vec();
    for m in mechanisms {
        body.extend_from_slice(m.as_bytes());
        body.push(0);
    }
    body.push(0);
    tagged(b'R', &body)
}

/// AuthenticationSASLContinue (code 11) or AuthenticationSASLFinal (code 12).
pub fn auth_sasl_data(code: u32, data: &[u8]) -> Vec<u8> {
    let mut body = code.to_be_bytes().to_vec();
    body.extend_from_slice(data);
    tagged(b'R', &body)
}

/// AuthenticationOk.
pub fn auth_ok() -> Vec<u8> {
    tagged(b'R', &0u32.to_be_bytes())
}

/// ReadyForQuery with a transaction status.
pub fn ready_for_query(status: u8) -> Vec<u8> {
    tagged(b'Z', &[status])
}

/// A simple Query.
pub fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    tagged(b'Q', &body)
}

/// The messages with `tag` among whole tagged messages, concatenated.
pub fn messages_tagged(mut messages: &[u8], tag: u8) -> Vec<u8> {
    let mut out = Vec::new();
    while let Ok(Some(len)) = frame(messages, usize::MAX) {
        if messages[0] == tag {
            out.extend_from_slice(&messages[..len]);
        }
        messages = &messages[len..];
    }
    out
}

/// BackendKeyData.
pub fn backend_key_data(pid: i32, key: &[u8]) -> Vec<u8> {
    let mut body = pid.to_be_bytes().to_vec();
    body.extend_from_slice(key);
    tagged(b'K', &body)
}

/// SSLRequest.
pub fn ssl_request() -> Vec<u8> {
    untagged(&SSL_REQUEST.to_be_bytes())
}

/// CancelRequest.
pub fn cancel_request(pid: i32, key: &[u8]) -> Vec<u8> {
    let mut body = CANCEL_REQUEST.to_be_bytes().to_vec();
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(key);
    untagged(&body)
}

/// PasswordMessage (also SASLResponse): `p` with raw data.
pub fn password_message(data: &[u8]) -> Vec<u8> {
    tagged(b'p', data)
}

/// SASLInitialResponse.
pub fn sasl_initial_response(mechanism: &str, data: &[u8]) -> Vec<u8> {
    let mut body = mechanism.as_bytes().to_vec();
    body.push(0);
    body.extend_from_slice(&(data.len() as u32).to_be_bytes());
    body.extend_from_slice(data);
    tagged(b'p', &body)
}

/// The mechanism and data of an app's SASLInitialResponse (`p` message, whole).
pub fn parse_sasl_initial(msg: &[u8]) -> Result<(String, Vec<u8>), CodecError> {
    if msg.first() != Some(&b'p') || msg.len() < 5 {
        return Err(CodecError::Malformed("expected a SASLInitialResponse"));
    }
    let (mechanism, rest) = cstr(&msg[5..])?;
    if rest.len() < 4 {
        return Err(CodecError::Malformed("short SASLInitialResponse"));
    }
    let len = be32(rest) as i32;
    let data = &rest[4..];
    if len != data.len() as i32 {
        return Err(CodecError::Malformed("SASLInitialResponse length mismatch"));
    }
    Ok((mechanism, data.to_vec()))
}

/// The data of an app's SASLResponse (`p` message, whole).
pub fn parse_sasl_response(msg: &[u8]) -> Result<&[u8], CodecError> {
    if msg.first() != Some(&b'p') || msg.len() < 5 {
        return Err(CodecError::Malformed("expected a SASLResponse"));
    }
    Ok(&msg[5..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn startup_bytes() -> Vec<u8> {
        Startup {
            major: 3,
            minor: 0,
            params: vec![
                ("user".into(), "app".into()),
                ("database".into(), "billing".into()),
                ("application_name".into(), "psql".into()),
            ],
        }
        .encode()
    }

    #[test]
    fn every_prefix_of_a_startup_message_asks_for_more_and_the_whole_parses() {
        let bytes = startup_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(parse_initial(&bytes[..cut]), Ok(None), "prefix {cut}");
        }
        let (initial, used) = parse_initial(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        let Initial::Startup(s) = initial else {
            panic!("not a startup")
        };
        assert_eq!((s.major, s.minor), (3, 0));
        assert_eq!(s.get("database"), Some("billing"));
        assert_eq!(s.encode(), bytes, "re-encodes byte for byte");
    }

    #[test]
    fn a_startup_packet_that_repeats_a_parameter_is_refused() {
        let twice = Startup {
            major: 3,
            minor: 0,
            params: vec![
                ("user".into(), "app".into()),
                ("database".into(), "app".into()),
                ("user".into(), "postgres".into()),
            ],
        }
        .encode();
        assert_eq!(
            parse_initial(&twice),
            Err(CodecError::Repeated("user".into()))
        );
        assert_eq!(
            CodecError::Repeated("user".into()).to_string(),
            "repeated startup parameter \"user\""
        );
    }

    #[test]
    fn ssl_gss_and_cancel_requests_parse() {
        assert_eq!(
            parse_initial(&ssl_request()).unwrap(),
            Some((Initial::Ssl, 8))
        );
        let gss = untagged(&GSSENC_REQUEST.to_be_bytes());
        assert_eq!(parse_initial(&gss).unwrap(), Some((Initial::GssEnc, 8)));
        let cancel = cancel_request(42, &[1, 2, 3, 4]);
        assert_eq!(
            parse_initial(&cancel).unwrap(),
            Some((
                Initial::Cancel {
                    pid: 42,
                    key: vec![1, 2, 3, 4]
                },
                16
            ))
        );
        // Protocol 3.2 keys are longer.
        let long = cancel_request(7, &[9; 32]);
        assert!(matches!(
            parse_initial(&long).unwrap(),
            Some((Initial::Cancel { pid: 7, key }, 44)) if key.len() == 32
        ));
    }

    #[test]
    fn bad_startup_packets_are_refused_with_a_reason() {
        let mut big = 20_000u32.to_be_bytes().to_vec();
        big.extend_from_slice(&[0; 8]);
        assert_eq!(parse_initial(&big), Err(CodecError::Length(20_000)));
        assert_eq!(
            parse_initial(&[0, 0, 0, 2, 0, 0, 0, 0]),
            Err(CodecError::Length(2))
        );
        let mut v2 = untagged(&[0, 2, 0, 0, b'u', 0, b'x', 0, 0]);
        assert_eq!(parse_initial(&v2), Err(CodecError::Version(2, 0)));
        v2 = untagged(&[0, 3, 0, 0, b'u', 0, b'x']);
        assert!(matches!(parse_initial(&v2), Err(CodecError::Malformed(_))));
        let not_utf8 = untagged(&[0, 3, 0, 0, b'u', 0, 0xff, 0, 0]);
        assert!(matches!(
            parse_initial(&not_utf8),
            Err(CodecError::Malformed(_))
        ));
        assert_eq!(
            parse_initial(&untagged(&[0x04, 0xd2, 0x16, 0x2f, 0, 0, 0, 0])),
            Err(CodecError::Length(12))
        );
        assert_eq!(
            CodecError::Version(2, 0).to_string(),
            "unsupported frontend protocol 2.0: keyward supports protocol 3"
        );
    }

    #[test]
    fn tagged_frames_need_their_whole_length() {
        let msg = error_response("FATAL", "08006", "keyward: boom");
        for cut in 0..msg.len() {
            assert_eq!(
                frame(&msg[..cut], MAX_AUTH_MESSAGE),
                Ok(None),
                "prefix {cut}"
            );
        }
        assert_eq!(frame(&msg, MAX_AUTH_MESSAGE), Ok(Some(msg.len())));
        assert_eq!(
            frame(&[b'R', 0, 0, 0, 3], MAX_AUTH_MESSAGE),
            Err(CodecError::Length(3))
        );
        assert_eq!(
            frame(&[b'R', 0x7f, 0, 0, 0], MAX_AUTH_MESSAGE),
            Err(CodecError::Length(0x7f00_0000))
        );
    }

    #[test]
    fn login_messages_decode() {
        let err = error_response("FATAL", "28P01", "password authentication failed");
        assert_eq!(
            parse_login(&err).unwrap(),
            LoginMessage::Error {
                code: "28P01".into(),
                message: "password authentication failed".into()
            }
        );
        let sasl = auth_sasl(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        assert_eq!(
            parse_login(&sasl).unwrap(),
            LoginMessage::Auth(AuthRequest::Sasl(vec![
                "SCRAM-SHA-256-PLUS".into(),
                "SCRAM-SHA-256".into()
            ]))
        );
        assert_eq!(
            parse_login(&auth_sasl_data(11, b"r=abc")).unwrap(),
            LoginMessage::Auth(AuthRequest::SaslContinue(b"r=abc".to_vec()))
        );
        assert_eq!(
            parse_login(&tagged(b'R', &[0, 0, 0, 5, 1, 2, 3, 4])).unwrap(),
            LoginMessage::Auth(AuthRequest::Md5([1, 2, 3, 4]))
        );
        assert_eq!(
            parse_login(&tagged(b'R', &[0, 0, 0, 0])).unwrap(),
            LoginMessage::Auth(AuthRequest::Ok)
        );
        assert_eq!(
            parse_login(&tagged(b'R', &[0, 0, 0, 3])).unwrap(),
            LoginMessage::Auth(AuthRequest::Cleartext)
        );
        assert_eq!(
            parse_login(&tagged(b'R', &[0, 0, 0, 7])).unwrap(),
            LoginMessage::Auth(AuthRequest::Unsupported("GSSAPI"))
        );
        assert_eq!(
            parse_login(&backend_key_data(9, &[0; 4])).unwrap(),
            LoginMessage::BackendKeyData {
                pid: 9,
                key: vec![0; 4]
            }
        );
        assert_eq!(
            parse_login(&tagged(b'Z', b"I")).unwrap(),
            LoginMessage::ReadyForQuery
        );
        assert_eq!(
            parse_login(&tagged(b'S', b"a\0b\0")).unwrap(),
            LoginMessage::Other(b'S')
        );
        assert!(parse_login(&tagged(b'R', &[0, 0])).is_err());
        assert!(parse_login(&tagged(b'K', &[0, 0])).is_err());
    }

    #[test]
    fn sasl_messages_from_the_app_decode() {
        let msg = sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc");
        assert_eq!(
            parse_sasl_initial(&msg).unwrap(),
            ("SCRAM-SHA-256".to_owned(), b"n,,n=,r=abc".to_vec())
        );
        let mut short = msg.clone();
        short.pop();
        assert!(parse_sasl_initial(&short).is_err());
        assert!(parse_sasl_initial(b"Q\0\0\0\x04").is_err());
        assert_eq!(
            parse_sasl_response(&password_message(b"c=biws")).unwrap(),
            b"c=biws"
        );
    }
}
