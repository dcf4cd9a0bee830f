//! A JWT issuer for tests and the demo: an ECDSA P-256 key pair made at
//! start, its public key as a JSON Web Key Set, and tokens signed with it
//! (ES256). Signed here with ring directly, not with the library the
//! waypoint verifies with, so a test does not check that library against
//! itself.

use anyhow::{Context as _, Result};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use ring::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
};
use serde_json::{Value, json};

pub struct Issuer {
    /// The `iss` of its tokens.
    pub issuer: String,
    pub kid: String,
    key: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Issuer {
    pub fn new(issuer: &str, kid: &str) -> Result<Issuer> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("generating a P-256 key"))?;
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|_| anyhow::anyhow!("reading the generated key"))?;
        Ok(Issuer {
            issuer: issuer.to_owned(),
            kid: kid.to_owned(),
            key,
            rng,
        })
    }

    /// The public key as a JSON Web Key.
    pub fn jwk(&self) -> Value {
        // An uncompressed point: 0x04, then x and y, 32 bytes each.
        let point = self.key.public_key().as_ref();
        json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    /// The key set, as a RequestAuthentication's `jwks` or a `jwksUri`
    /// serves it.
    pub fn jwks(&self) -> String {
        json!({ "keys": [self.jwk()] }).to_string()
    }

    /// A token with `claims`, plus `iss` and, unless given, `exp` an hour
    /// from now.
    pub fn token(&self, claims: Value) -> Result<String> {
        let mut claims = claims;
        let object = claims
            .as_object_mut()
            .context("claims must be a JSON object")?;
        object.insert("iss".into(), Value::String(self.issuer.clone()));
        if !object.contains_key("exp") {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("the clock is before 1970")?;
            object.insert("exp".into(), json!(now.as_secs() + 3600));
        }
        self.sign(
            &json!({ "alg": "ES256", "typ": "JWT", "kid": self.kid }),
            &claims,
        )
    }

    /// Signs `header` and `claims` as they are (a test's bad tokens too).
    pub fn sign(&self, header: &Value, claims: &Value) -> Result<String> {
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&self.rng, signed.as_bytes())
            .map_err(|_| anyhow::anyhow!("signing a token"))?;
        Ok(format!(
            "{signed}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        ))
    }
}
