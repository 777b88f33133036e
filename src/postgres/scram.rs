//! The server side of SCRAM-SHA-256 (RFC 5802, RFC 7677), for `client_password`: keyward
//! checks the app's proof against a verifier made by `postgres-protocol` (salted with PBKDF2,
//! SASLprep applied as PostgreSQL does), with `hmac`/`sha2` for the proof. Sans I/O.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why an exchange failed. Shown to the app as "password authentication failed".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScramError {
    /// The message does not follow RFC 5802.
    Malformed(&'static str),
    /// The app asked for channel binding keyward did not offer.
    ChannelBinding,
    /// Wrong password.
    Proof,
}

/// One server-side exchange.
pub struct ScramServer {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; 32],
    server_key: [u8; 32],
    nonce: String,
    state: Option<(String, String, String)>,
}

impl std::fmt::Debug for ScramServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScramServer(<redacted>)")
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    #[allow(clippy::expect_used)] // HMAC accepts keys of any length
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

impl ScramServer {
    /// A new exchange for `password`, with a fresh salt and nonce (from the OS CSPRNG).
    pub fn new(password: &str) -> Option<Self> {
        use ring::rand::SecureRandom;
        let verifier = postgres_protocol::password::scram_sha_256(password.as_bytes());
        let mut nonce = [0u8; 18];
        ring::rand::SystemRandom::new().fill(&mut nonce).ok()?;
        Self::from_verifier(&verifier, &B64.encode(nonce))
    }

    /// From a PostgreSQL verifier `SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>`.
    pub fn from_verifier(verifier: &str, nonce: &str) -> Option<Self> {
        let rest = verifier.strip_prefix("SCRAM-SHA-256$")?;
        let (params, keys) = rest.split_once('$')?;
        let (iterations, salt) = params.split_once(':')?;
        let (stored, server) = keys.split_once(':')?;
        Some(Self {
            salt: B64.decode(salt).ok()?,
            iterations: iterations.parse().ok()?,
            stored_key: B64.decode(stored).ok()?.try_into().ok()?,
            server_key: B64.decode(server).ok()?.try_into().ok()?,
            nonce: nonce.to_owned(),
            state: None,
        })
    }

    /// Takes the app's client-first message; returns the server-first message.
    pub fn client_first(&mut self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (cbind, rest) = text
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        match cbind {
            "n" | "y" => {}
            c if c.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("bad channel binding flag")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("no GS2 header"))?;
        if !authzid.is_empty() {
            return Err(ScramError::Malformed(
                "authorization identity not supported",
            ));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|attr| attr.strip_prefix("r="))
            .filter(|n| !n.is_empty())
            .ok_or(ScramError::Malformed("no client nonce"))?;
        let full_nonce = format!("{client_nonce}{}", self.nonce);
        let server_first = format!(
            "r={full_nonce},s={},i={}",
            B64.encode(&self.salt),
            self.iterations
        );
        let gs2 = format!("{cbind},{authzid},");
        self.state = Some((
            format!("{bare},{server_first}"),
            full_nonce,
            B64.encode(gs2),
        ));
        Ok(server_first.into_bytes())
    }

    /// Takes the app's client-final message; returns the server-final message (`v=...`) if the
    /// proof is right.
    pub fn client_final(&mut self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        let (partial_auth, nonce, gs2) = self
            .state
            .take()
            .ok_or(ScramError::Malformed("client-final before client-first"))?;
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        if attrs.next().and_then(|c| c.strip_prefix("c=")) != Some(gs2.as_str()) {
            return Err(ScramError::Malformed("channel binding data does not match"));
        }
        if attrs.next().and_then(|r| r.strip_prefix("r=")) != Some(nonce.as_str()) {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed("bad proof encoding"))?;
        let auth_message = format!("{partial_auth},{without_proof}");
        let signature = hmac(&self.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for (k, (p, s)) in client_key.iter_mut().zip(proof.iter().zip(signature)) {
            *k = p ^ s;
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if !bool::from(stored.ct_eq(&self.stored_key)) {
            return Err(ScramError::Proof);
        }
        let server_signature = hmac(&self.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    use super::*;

    /// The server side against postgres-protocol's client side (the one keyward also uses
    /// upstream): right password accepted and the server signature verified by the client.
    #[test]
    fn accepts_the_right_password_and_the_client_verifies_the_server() {
        let mut server = ScramServer::new("s3cret pw").unwrap();
        let mut client = ScramSha256::new(b"s3cret pw", ChannelBinding::unsupported());
        let first = server.client_first(client.message()).unwrap();
        client.update(&first).unwrap();
        let last = server.client_final(client.message()).unwrap();
        client.finish(&last).unwrap();
    }

    #[test]
    fn refuses_a_wrong_password_and_garbage() {
        let mut server = ScramServer::new("right").unwrap();
        let mut client = ScramSha256::new(b"wrong", ChannelBinding::unrequested());
        let first = server.client_first(client.message()).unwrap();
        client.update(&first).unwrap();
        assert_eq!(
            server.client_final(client.message()),
            Err(ScramError::Proof)
        );

        let mut server = ScramServer::new("right").unwrap();
        assert!(server.client_first(b"garbage").is_err());
        assert_eq!(
            server.client_first(b"p=tls-server-end-point,,n=,r=abc"),
            Err(ScramError::ChannelBinding)
        );
        assert!(server.client_final(b"c=biws,r=x,p=AAAA").is_err());
        let mut server = ScramServer::new("right").unwrap();
        server.client_first(b"n,,n=,r=abc").unwrap();
        assert!(server.client_final(b"c=biws,r=other,p=AAAA").is_err());
    }
}
