//! Device tokens and the operator token.
//!
//! A device token is `ks1.<key id>.<payload>.<signature>`: the payload (base64url) is the user id
//! and device id, the signature an HMAC-SHA256 over `ks1.<key id>.<payload>` with the named key.
//! Verifying needs no store lookup: the key, then the in-memory revocation set. Several keys may
//! be configured; the first signs new tokens and all verify, so keys can rotate without
//! invalidating devices. Tokens never appear in logs (`Debug` prints only the key id).

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use keepsake_model::{DeviceId, UserId};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "ks1";

/// A signing key and its id.
#[derive(Clone)]
pub struct SigningKey {
    /// Short id carried in tokens.
    pub id: String,
    secret: Vec<u8>,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.id)
    }
}

impl SigningKey {
    /// A key from its id and secret bytes (at least 32).
    pub fn new(id: impl Into<String>, secret: Vec<u8>) -> Result<Self, String> {
        let id = id.into();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("key id {id:?}: use letters, digits and '-'"));
        }
        if secret.len() < 32 {
            return Err(format!("key {id}: the secret must be at least 32 bytes"));
        }
        Ok(Self { id, secret })
    }

    /// Parses `id:base64url-secret`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (id, secret) = spec
            .split_once(':')
            .ok_or("a token key is written id:base64url-secret")?;
        let secret = B64
            .decode(secret.trim())
            .map_err(|e| format!("key {id}: the secret is not base64url: {e}"))?;
        Self::new(id.trim(), secret)
    }

    /// Writes the key as `id:base64url-secret`.
    pub fn to_spec(&self) -> String {
        format!("{}:{}", self.id, B64.encode(&self.secret))
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length; this cannot fail.
        <HmacSha256 as KeyInit>::new_from_slice(&self.secret).unwrap_or_else(|_| unreachable_hmac())
    }
}

#[allow(clippy::panic)]
fn unreachable_hmac() -> HmacSha256 {
    panic!("HMAC accepts keys of any length")
}

/// Why a token was refused (never says which part, to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a token of this format.
    #[error("malformed token")]
    Malformed,
    /// Signed with a key this server does not have.
    #[error("unknown key")]
    UnknownKey,
    /// The signature does not match.
    #[error("bad signature")]
    BadSignature,
}

/// Signs and verifies device tokens.
#[derive(Clone, Debug)]
pub struct TokenKeys {
    signing: SigningKey,
    by_id: HashMap<String, SigningKey>,
}

impl TokenKeys {
    /// The first key signs; every key verifies.
    pub fn new(keys: Vec<SigningKey>) -> Result<Self, String> {
        let signing = keys
            .first()
            .cloned()
            .ok_or("at least one token key is needed")?;
        let mut by_id = HashMap::new();
        for k in keys {
            if by_id.insert(k.id.clone(), k.clone()).is_some() {
                return Err(format!("token key id {} appears twice", k.id));
            }
        }
        Ok(Self { signing, by_id })
    }

    /// A token for a device of a user.
    pub fn sign(&self, user: UserId, device: DeviceId) -> String {
        let mut payload = [0u8; 32];
        payload[..16].copy_from_slice(user.as_bytes());
        payload[16..].copy_from_slice(device.as_bytes());
        let head = format!("{PREFIX}.{}.{}", self.signing.id, B64.encode(payload));
        let mut mac = self.signing.mac();
        mac.update(head.as_bytes());
        let sig = mac.finalize().into_bytes();
        format!("{head}.{}", B64.encode(sig))
    }

    /// The user and device a token was issued for, if its signature holds.
    pub fn verify(&self, token: &str) -> Result<(UserId, DeviceId), TokenError> {
        let mut parts = token.split('.');
        let (Some(prefix), Some(kid), Some(payload), Some(sig), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(TokenError::Malformed);
        };
        if prefix != PREFIX {
            return Err(TokenError::Malformed);
        }
        let key = self.by_id.get(kid).ok_or(TokenError::UnknownKey)?;
        let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
        let head_len = prefix.len() + kid.len() + payload.len() + 2;
        let mut mac = key.mac();
        mac.update(&token.as_bytes()[..head_len]);
        mac.verify_slice(&sig)
            .map_err(|_| TokenError::BadSignature)?;
        let payload = B64.decode(payload).map_err(|_| TokenError::Malformed)?;
        let (Ok(user), Ok(device)) = (
            <[u8; 16]>::try_from(&payload[..payload.len().min(16)]),
            <[u8; 16]>::try_from(payload.get(16..).unwrap_or_default()),
        ) else {
            return Err(TokenError::Malformed);
        };
        Ok((UserId::from_bytes(user), DeviceId::from_bytes(device)))
    }
}

/// Compares a presented operator token with the configured one in constant time.
pub fn operator_token_matches(presented: &str, expected: &str) -> bool {
    // HMAC both under a fixed key and compare the tags with verify_slice (constant time), so
    // neither length nor content leaks through timing.
    let tag = |s: &str| {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(b"keepsake-operator-token-compare")
            .unwrap_or_else(|_| unreachable_hmac());
        mac.update(s.as_bytes());
        mac
    };
    let expected_tag = tag(expected).finalize().into_bytes();
    tag(presented).verify_slice(&expected_tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn key(id: &str, fill: u8) -> SigningKey {
        SigningKey::new(id, vec![fill; 32]).expect("key")
    }

    #[test]
    fn tokens_verify_and_refuse_tampering() {
        let keys = TokenKeys::new(vec![key("k1", 1)]).expect("keys");
        let (u, d) = (UserId(Uuid::from_u128(1)), DeviceId(Uuid::from_u128(2)));
        let t = keys.sign(u, d);
        assert_eq!(keys.verify(&t), Ok((u, d)));
        // flip one character of the payload: the signature no longer holds
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        let mut payload: Vec<char> = parts[2].chars().collect();
        payload[3] = if payload[3] == 'A' { 'B' } else { 'A' };
        parts[2] = payload.into_iter().collect();
        assert_eq!(keys.verify(&parts.join(".")), Err(TokenError::BadSignature));
        assert_eq!(keys.verify("ks1.k1.x"), Err(TokenError::Malformed));
        assert_eq!(keys.verify(""), Err(TokenError::Malformed));
        let other = TokenKeys::new(vec![key("k2", 2)]).expect("keys");
        assert_eq!(other.verify(&t), Err(TokenError::UnknownKey));
        let forged = TokenKeys::new(vec![key("k1", 9)]).expect("keys").sign(u, d);
        assert_eq!(keys.verify(&forged), Err(TokenError::BadSignature));
    }

    #[test]
    fn keys_rotate() {
        let old = key("old", 1);
        let new = key("new", 2);
        let before = TokenKeys::new(vec![old.clone()]).expect("keys");
        let after = TokenKeys::new(vec![new, old]).expect("keys");
        let (u, d) = (UserId(Uuid::from_u128(1)), DeviceId(Uuid::from_u128(2)));
        assert_eq!(after.verify(&before.sign(u, d)), Ok((u, d)));
        assert!(after.sign(u, d).starts_with("ks1.new."));
        let parsed = SigningKey::parse(&key("x", 7).to_spec()).expect("round trip");
        assert_eq!(parsed.id, "x");
        assert!(SigningKey::parse("x:short").is_err());
    }

    #[test]
    fn operator_tokens_compare_exactly() {
        assert!(operator_token_matches("secret-token", "secret-token"));
        assert!(!operator_token_matches("secret-tokeN", "secret-token"));
        assert!(!operator_token_matches("", "secret-token"));
    }
}
