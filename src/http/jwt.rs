//! Signed JWTs for OAuth2 assertions (RFC 7523): the `jwt_bearer` grant's assertion and the
//! `private_key_jwt` client assertion. RS256 (RSASSA-PKCS1-v1_5 SHA-256) and ES256 (ECDSA
//! P-256 SHA-256, the fixed r‖s form JWS requires), signed by ring; base64url by the base64
//! crate; PEM by rustls-pki-types. The key never reaches a log line or `Debug` output.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivateKeyDer;

/// A JWS algorithm keyward signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl Algorithm {
    /// Its JWS name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
        }
    }

    /// From its JWS name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            _ => None,
        }
    }
}

enum Pair {
    Rsa(signature::RsaKeyPair),
    Ec(signature::EcdsaKeyPair),
}

/// A private key that signs JWTs, with its `kid`.
pub struct SigningKey {
    algorithm: Algorithm,
    key_id: Option<String>,
    pair: Pair,
    rng: SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("algorithm", &self.algorithm)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// The key in `pem` (PKCS#8; RSA also as PKCS#1), which must suit `algorithm`.
    pub fn from_pem(
        pem: &[u8],
        algorithm: Algorithm,
        key_id: Option<String>,
    ) -> Result<Self, String> {
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
            format!("not a PEM private key ({e}); expected -----BEGIN PRIVATE KEY----- (PKCS#8)")
        })?;
        let rng = SystemRandom::new();
        let pair = match (algorithm, &der) {
            (Algorithm::Rs256, PrivateKeyDer::Pkcs8(k)) => {
                signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der())
                    .map(Pair::Rsa)
                    .map_err(|e| format!("not an RSA PKCS#8 key for RS256: {e}"))?
            }
            (Algorithm::Rs256, PrivateKeyDer::Pkcs1(k)) => {
                signature::RsaKeyPair::from_der(k.secret_pkcs1_der())
                    .map(Pair::Rsa)
                    .map_err(|e| format!("not an RSA key for RS256: {e}"))?
            }
            (Algorithm::Es256, PrivateKeyDer::Pkcs8(k)) => signature::EcdsaKeyPair::from_pkcs8(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                k.secret_pkcs8_der(),
                &rng,
            )
            .map(Pair::Ec)
            .map_err(|e| format!("not an EC P-256 PKCS#8 key for ES256: {e}"))?,
            (Algorithm::Es256, PrivateKeyDer::Sec1(_)) => {
                return Err("an EC key in SEC1 form (BEGIN EC PRIVATE KEY): convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt`".to_owned())
            }
            (alg, _) => {
                return Err(format!(
                    "the key does not suit {} (RS256 takes an RSA key, ES256 an EC P-256 key, in PKCS#8)",
                    alg.name()
                ))
            }
        };
        if let Pair::Rsa(k) = &pair {
            if k.public().modulus_len() < 256 {
                return Err("an RSA key below 2048 bits".to_owned());
            }
        }
        Ok(Self {
            algorithm,
            key_id,
            pair,
            rng,
        })
    }

    /// `claims` signed: `header.payload.signature`.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, String> {
        let mut header = serde_json::json!({"alg": self.algorithm.name(), "typ": "JWT"});
        if let Some(kid) = &self.key_id {
            header["kid"] = serde_json::Value::String(kid.clone());
        }
        let mut out = URL_SAFE_NO_PAD.encode(header.to_string());
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature = match &self.pair {
            Pair::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &self.rng,
                    out.as_bytes(),
                    &mut sig,
                )
                .map_err(|_| "RSA signing failed".to_owned())?;
                sig
            }
            Pair::Ec(k) => k
                .sign(&self.rng, out.as_bytes())
                .map_err(|_| "ECDSA signing failed".to_owned())?
                .as_ref()
                .to_vec(),
        };
        out.push('.');
        out.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(out)
    }

    /// A unique JWT id: 128 random bits, hex.
    pub fn jti(&self) -> Result<String, String> {
        let mut bytes = [0u8; 16];
        self.rng
            .fill(&mut bytes)
            .map_err(|_| "no randomness for a jti".to_owned())?;
        Ok(hex::encode(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verify(jwt: &str, public: &[u8], alg: &'static dyn signature::VerificationAlgorithm) {
        let (signed, sig) = jwt.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        signature::UnparsedPublicKey::new(alg, public)
            .verify(signed.as_bytes(), &sig)
            .unwrap();
    }

    fn part(jwt: &str, i: usize) -> serde_json::Value {
        let p = jwt.split('.').nth(i).unwrap();
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).unwrap()).unwrap()
    }

    #[test]
    fn es256_tokens_verify_with_the_public_key() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let signer = SigningKey::from_pem(
            key.serialize_pem().as_bytes(),
            Algorithm::Es256,
            Some("k1".into()),
        )
        .unwrap();
        let jwt = signer.sign(&serde_json::json!({"iss": "a"})).unwrap();
        assert_eq!(
            part(&jwt, 0),
            serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": "k1"})
        );
        assert_eq!(part(&jwt, 1)["iss"], "a");
        verify(
            &jwt,
            key.public_key_raw(),
            &signature::ECDSA_P256_SHA256_FIXED,
        );
        assert!(!format!("{signer:?}").contains("PRIVATE"));
    }

    #[test]
    fn a_key_that_does_not_suit_the_algorithm_is_named() {
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let err = SigningKey::from_pem(ec.serialize_pem().as_bytes(), Algorithm::Rs256, None)
            .unwrap_err();
        assert!(err.contains("RS256"), "{err}");
        let err = SigningKey::from_pem(b"nonsense", Algorithm::Es256, None).unwrap_err();
        assert!(err.contains("PEM"), "{err}");
    }
}
