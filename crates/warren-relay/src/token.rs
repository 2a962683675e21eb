//! Connect tokens: stateless, HMAC-SHA256 signed.
//!
//! Format: `wct_<b64url(json(ConnectTokenClaims))>.<b64url(hmac_sha256(key, "wct_" + b64url(json)))>`
//! (base64url without padding). The relay verifies the MAC (constant time),
//! the expiry, that the token is for the requested sandbox and port, and
//! that its `tid` is not among the route's revoked tokens.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::hmac;
pub use warren_proto::relay::ConnectTokenClaims;

/// Every token starts with this.
pub const TOKEN_PREFIX: &str = "wct_";
/// Longest token the relay looks at (claims are small; user data is
/// bounded by the API).
pub const MAX_TOKEN_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("bad token signature")]
    BadSignature,
    #[error("token expired")]
    Expired,
    #[error("token is for another sandbox or port")]
    WrongTarget,
    #[error("token revoked")]
    Revoked,
}

/// Signs `claims` with `key`. The control plane mints with this; the relay
/// verifies with [`verify_token`] and the same key.
pub fn mint_token(key: &[u8], claims: &ConnectTokenClaims) -> String {
    let json = serde_json::to_vec(claims).expect("claims always serialize");
    let mut out = String::with_capacity(TOKEN_PREFIX.len() + json.len() * 4 / 3 + 48);
    out.push_str(TOKEN_PREFIX);
    URL_SAFE_NO_PAD.encode_string(&json, &mut out);
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), out.as_bytes());
    out.push('.');
    URL_SAFE_NO_PAD.encode_string(tag.as_ref(), &mut out);
    out
}

/// Checks the signature and expiry (`now` in unix seconds) and returns the
/// claims. Sandbox, port and revocation are checked by [`check_token`].
pub fn verify_token(key: &[u8], token: &str, now: u64) -> Result<ConnectTokenClaims, TokenError> {
    if token.len() > MAX_TOKEN_LEN || !token.starts_with(TOKEN_PREFIX) {
        return Err(TokenError::Malformed);
    }
    let (signed, mac) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let mac = URL_SAFE_NO_PAD
        .decode(mac)
        .map_err(|_| TokenError::Malformed)?;
    hmac::verify(
        &hmac::Key::new(hmac::HMAC_SHA256, key),
        signed.as_bytes(),
        &mac,
    )
    .map_err(|_| TokenError::BadSignature)?;
    let json = URL_SAFE_NO_PAD
        .decode(&signed[TOKEN_PREFIX.len()..])
        .map_err(|_| TokenError::Malformed)?;
    let claims: ConnectTokenClaims =
        serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    if claims.exp <= now {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// [`verify_token`] plus the target and revocation checks.
pub fn check_token(
    key: &[u8],
    token: &str,
    now: u64,
    sandbox: &str,
    port: u16,
    revoked: &[String],
) -> Result<ConnectTokenClaims, TokenError> {
    let claims = verify_token(key, token, now)?;
    if claims.sid != sandbox || claims.port != port {
        return Err(TokenError::WrongTarget);
    }
    if revoked.contains(&claims.tid) {
        return Err(TokenError::Revoked);
    }
    Ok(claims)
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> ConnectTokenClaims {
        ConnectTokenClaims {
            tid: "t1".into(),
            sid: "sb-abc".into(),
            port: 8000,
            exp: 2000,
            ud: "alice".into(),
        }
    }

    #[test]
    fn round_trip_and_every_refusal() {
        let key = b"k1";
        let t = mint_token(key, &claims());
        assert!(t.starts_with("wct_"));
        assert_eq!(
            check_token(key, &t, 1000, "sb-abc", 8000, &[]).unwrap(),
            claims()
        );
        assert_eq!(verify_token(b"k2", &t, 1000), Err(TokenError::BadSignature));
        assert_eq!(verify_token(key, &t, 2000), Err(TokenError::Expired));
        assert_eq!(
            check_token(key, &t, 1000, "sb-abd", 8000, &[]),
            Err(TokenError::WrongTarget)
        );
        assert_eq!(
            check_token(key, &t, 1000, "sb-abc", 8001, &[]),
            Err(TokenError::WrongTarget)
        );
        assert_eq!(
            check_token(key, &t, 1000, "sb-abc", 8000, &["t1".into()]),
            Err(TokenError::Revoked)
        );
        assert_eq!(verify_token(key, "nope", 1000), Err(TokenError::Malformed));
        assert_eq!(verify_token(key, "wct_x", 1000), Err(TokenError::Malformed));
        // A changed payload with the old MAC.
        let (p, m) = t.rsplit_once('.').unwrap();
        let mut forged = claims();
        forged.ud = "root".into();
        let fp = mint_token(b"other", &forged);
        let (fpay, _) = fp.rsplit_once('.').unwrap();
        assert_eq!(
            verify_token(key, &format!("{fpay}.{m}"), 1000),
            Err(TokenError::BadSignature)
        );
        assert_eq!(
            verify_token(key, &format!("{p}.AAAA"), 1000),
            Err(TokenError::BadSignature)
        );
    }
}
