//! Endpoint signing secrets: made, sealed at rest, and used to sign.
//!
//! A secret is `whsec_` followed by the base64 of 24 random bytes (the
//! Standard Webhooks form); the HMAC key is those bytes. It is shown once,
//! when the endpoint is created or the secret rotated. Unlike API keys it
//! cannot be stored as a hash (approvald must sign with it), so it is sealed
//! with AES-256-GCM under `webhooks.secret_key`, with the endpoint id as
//! associated data (a sealed secret copied onto another row does not open).
//! Stored forms: `v1:<base64(nonce || ciphertext || tag)>`, or, while no
//! `webhooks.secret_key` is configured, `plain:<whsec_...>`; a key configured
//! later still opens the plain rows, and new or rotated secrets are sealed.
use anyhow::{Context, bail};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use ring::{
    aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    hmac,
    rand::{SecureRandom, SystemRandom},
};

use crate::config::WebhooksConfig;

pub const PREFIX: &str = "whsec_";

/// A fresh `whsec_...` secret.
pub fn generate() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
    Ok(format!("{PREFIX}{}", B64.encode(bytes)))
}

/// The HMAC key of a `whsec_...` secret.
fn key_bytes(secret: &str) -> anyhow::Result<Vec<u8>> {
    let b64 = secret.strip_prefix(PREFIX).unwrap_or(secret);
    B64.decode(b64).context("a webhook secret is not base64")
}

/// `v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>`.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &[u8]) -> anyhow::Result<String> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key_bytes(secret)?);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(msg_id.as_bytes());
    ctx.update(b".");
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    Ok(format!("v1,{}", B64.encode(ctx.sign().as_ref())))
}

/// The `webhook-signature` header: one `v1,` signature per secret, space-separated.
pub fn signature_header(
    secrets: &[&str],
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> anyhow::Result<String> {
    let sigs = secrets
        .iter()
        .map(|s| sign(s, msg_id, timestamp, body))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(sigs.join(" "))
}

/// Seals and opens stored secrets (see the module docs).
pub struct Sealer {
    key: Option<LessSafeKey>,
}

impl Sealer {
    /// From `webhooks.secret_key`: empty, or the base64 of exactly 32 bytes.
    pub fn from_config(cfg: &WebhooksConfig) -> anyhow::Result<Self> {
        let raw = cfg.secret_key.expose().trim();
        if raw.is_empty() {
            return Ok(Self { key: None });
        }
        let bytes = B64.decode(raw).map_err(|_| {
            anyhow::anyhow!(
                "must be the base64 of 32 random bytes, e.g. from `openssl rand -base64 32`"
            )
        })?;
        if bytes.len() != 32 {
            bail!(
                "must be the base64 of 32 random bytes (got {} bytes), e.g. from `openssl rand -base64 32`",
                bytes.len()
            );
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| anyhow::anyhow!("not a usable AES-256 key"))?;
        Ok(Self {
            key: Some(LessSafeKey::new(key)),
        })
    }

    pub fn is_sealing(&self) -> bool {
        self.key.is_some()
    }

    /// The stored form of `secret` for endpoint `endpoint_id`.
    pub fn seal(&self, endpoint_id: &str, secret: &str) -> anyhow::Result<String> {
        let Some(key) = &self.key else {
            return Ok(format!("plain:{secret}"));
        };
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
        let mut buf = secret.as_bytes().to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(endpoint_id.as_bytes()),
            &mut buf,
        )
        .map_err(|_| anyhow::anyhow!("sealing a webhook secret failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("v1:{}", B64.encode(out)))
    }

    /// The secret from its stored form.
    pub fn open(&self, endpoint_id: &str, stored: &str) -> anyhow::Result<String> {
        if let Some(plain) = stored.strip_prefix("plain:") {
            return Ok(plain.to_string());
        }
        let Some(sealed) = stored.strip_prefix("v1:") else {
            bail!("endpoint {endpoint_id}: the stored secret has an unknown form");
        };
        let Some(key) = &self.key else {
            bail!(
                "endpoint {endpoint_id}: its secret is sealed but webhooks.secret_key is not set; configure the key it was sealed with"
            );
        };
        let mut buf = B64
            .decode(sealed)
            .context("the sealed webhook secret is not base64")?;
        if buf.len() < NONCE_LEN {
            bail!("endpoint {endpoint_id}: the sealed secret is truncated");
        }
        let mut ct = buf.split_off(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(&buf).map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let plain = key
            .open_in_place(nonce, Aad::from(endpoint_id.as_bytes()), &mut ct)
            .map_err(|_| {
                anyhow::anyhow!(
                    "endpoint {endpoint_id}: its secret does not open with webhooks.secret_key (was the key changed?)"
                )
            })?;
        String::from_utf8(plain.to_vec()).context("the opened webhook secret is not text")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Secret};

    #[test]
    fn standard_webhooks_test_vector() {
        // The example of the Standard Webhooks specification.
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn two_secrets_two_signatures() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 32);
        assert_ne!(a, b);
        let h = signature_header(&[&a, &b], "msg_1", 1, b"{}").unwrap();
        let parts: Vec<&str> = h.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0], sign(&a, "msg_1", 1, b"{}").unwrap());
        assert_eq!(parts[1], sign(&b, "msg_1", 1, b"{}").unwrap());
    }

    #[test]
    fn sealing_round_trips_and_binds_the_endpoint() {
        let mut cfg = Config::default().webhooks;
        let plain = Sealer::from_config(&cfg).unwrap();
        let s = generate().unwrap();
        let stored = plain.seal("ep1", &s).unwrap();
        assert_eq!(plain.open("ep1", &stored).unwrap(), s);

        cfg.secret_key = Secret::new(B64.encode([7u8; 32]));
        let sealer = Sealer::from_config(&cfg).unwrap();
        let sealed = sealer.seal("ep1", &s).unwrap();
        assert!(sealed.starts_with("v1:") && !sealed.contains(&s[6..]));
        assert_eq!(sealer.open("ep1", &sealed).unwrap(), s);
        assert!(
            sealer.open("ep2", &sealed).is_err(),
            "bound to its endpoint"
        );
        // Rows stored before a key was configured still open.
        assert_eq!(sealer.open("ep1", &stored).unwrap(), s);
        // A sealed row without the key is an error naming the key.
        let e = plain.open("ep1", &sealed).unwrap_err().to_string();
        assert!(e.contains("webhooks.secret_key"), "{e}");

        cfg.secret_key = Secret::new(B64.encode([7u8; 16]));
        assert!(Sealer::from_config(&cfg).is_err());
    }
}
