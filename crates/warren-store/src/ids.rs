//! Random identifiers, token secrets, and input validation.

use rand::Rng;
use sha2::{Digest, Sha256};

use crate::error::{Result, StoreError};

/// Prefix of every token secret.
pub const TOKEN_PREFIX: &str = "wrn_";

/// Number of random characters after [`TOKEN_PREFIX`] (6 bits each: 240
/// bits of entropy).
pub const TOKEN_RANDOM_LEN: usize = 40;

/// Number of random base32 characters in generated ids (100 bits).
const ID_RANDOM_LEN: usize = 20;

/// Longest id the store accepts from a caller.
const MAX_ID_LEN: usize = 64;

/// Longest workspace, token or sandbox name.
pub(crate) const MAX_NAME_LEN: usize = 128;

/// Most tags on one sandbox.
pub(crate) const MAX_TAGS: usize = 64;
/// Longest tag key.
pub(crate) const MAX_TAG_KEY_LEN: usize = 128;
/// Longest tag value.
pub(crate) const MAX_TAG_VALUE_LEN: usize = 512;

const BASE32_LOWER: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn random_string(alphabet: &[u8], len: usize) -> String {
    // `rand::rng()` is a CSPRNG seeded from the OS; ids and secrets both
    // rely on that.
    let mut rng = rand::rng();
    (0..len)
        .map(|_| char::from(alphabet[rng.random_range(0..alphabet.len())]))
        .collect()
}

fn new_id(prefix: &str) -> String {
    let mut id = String::with_capacity(prefix.len() + ID_RANDOM_LEN);
    id.push_str(prefix);
    id.push_str(&random_string(BASE32_LOWER, ID_RANDOM_LEN));
    id
}

/// A fresh sandbox id: `sb-` and 20 lowercase base32 characters.
pub fn new_sandbox_id() -> String {
    new_id("sb-")
}

/// A fresh memory snapshot id: `msnap-` and 20 lowercase base32
/// characters.
pub fn new_memory_snapshot_id() -> String {
    new_id("msnap-")
}

/// A fresh workspace id: `ws-` and 20 lowercase base32 characters.
pub fn new_workspace_id() -> String {
    new_id("ws-")
}

/// A fresh token id: `tok-` and 20 lowercase base32 characters. This is
/// the token's public handle, unrelated to its secret.
pub fn new_token_id() -> String {
    new_id("tok-")
}

/// A fresh token secret: [`TOKEN_PREFIX`] and 40 URL-safe characters.
pub(crate) fn new_token_secret() -> String {
    let mut s = String::with_capacity(TOKEN_PREFIX.len() + TOKEN_RANDOM_LEN);
    s.push_str(TOKEN_PREFIX);
    s.push_str(&random_string(URL_SAFE, TOKEN_RANDOM_LEN));
    s
}

/// Whether `s` has the shape of a token secret (checked before any
/// database access, so junk never reaches a query).
pub(crate) fn looks_like_token(s: &str) -> bool {
    s.strip_prefix(TOKEN_PREFIX).is_some_and(|rest| {
        rest.len() == TOKEN_RANDOM_LEN && rest.bytes().all(|b| URL_SAFE.contains(&b))
    })
}

/// Lowercase hex SHA-256 of a token secret: the only form that is stored.
pub(crate) fn hash_token(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Checks an id supplied by a caller: 1 to 64 bytes of `[a-z0-9-]`.
pub(crate) fn validate_id(field: &'static str, id: &str) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(StoreError::invalid(
            field,
            format!("must be 1 to {MAX_ID_LEN} bytes"),
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(StoreError::invalid(field, "must match [a-z0-9-]+"));
    }
    Ok(())
}

/// Checks a human-chosen name: 1 to 128 bytes, no control characters.
pub(crate) fn validate_name(field: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(StoreError::invalid(
            field,
            format!("must be 1 to {MAX_NAME_LEN} bytes"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(StoreError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Checks a tag set: at most 64 tags, keys 1 to 128 bytes, values up to
/// 512 bytes, no control characters.
pub(crate) fn validate_tags(tags: &std::collections::BTreeMap<String, String>) -> Result<()> {
    if tags.len() > MAX_TAGS {
        return Err(StoreError::invalid(
            "tags",
            format!("at most {MAX_TAGS} tags are allowed"),
        ));
    }
    for (k, v) in tags {
        if k.is_empty() || k.len() > MAX_TAG_KEY_LEN {
            return Err(StoreError::invalid(
                "tags",
                format!("keys must be 1 to {MAX_TAG_KEY_LEN} bytes"),
            ));
        }
        if v.len() > MAX_TAG_VALUE_LEN {
            return Err(StoreError::invalid(
                "tags",
                format!("values must be at most {MAX_TAG_VALUE_LEN} bytes"),
            ));
        }
        if k.chars().chain(v.chars()).any(char::is_control) {
            return Err(StoreError::invalid(
                "tags",
                "must not contain control characters",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_ids_have_the_documented_shape() {
        let id = new_sandbox_id();
        assert_eq!(id.len(), 23);
        assert!(id.starts_with("sb-"));
        assert!(id[3..].bytes().all(|b| BASE32_LOWER.contains(&b)));
        validate_id("id", &id).unwrap();
        assert_ne!(new_sandbox_id(), id);
    }

    #[test]
    fn token_secrets_have_the_documented_shape() {
        let t = new_token_secret();
        assert_eq!(t.len(), 44);
        assert!(looks_like_token(&t));
        assert!(!looks_like_token("wrn_short"));
        assert!(!looks_like_token(&t.replace("wrn_", "xrn_")));
        assert!(!looks_like_token(&format!("{}!", &t[..43])));
    }

    #[test]
    fn token_hash_is_hex_sha256() {
        assert_eq!(
            hash_token("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn validation_rejects_bad_input() {
        assert!(validate_id("id", "").is_err());
        assert!(validate_id("id", "SB-1").is_err());
        assert!(validate_id("id", &"a".repeat(65)).is_err());
        assert!(validate_name("name", "ok name").is_ok());
        assert!(validate_name("name", "bad\nname").is_err());
        let mut tags = std::collections::BTreeMap::new();
        tags.insert(String::new(), "v".to_owned());
        assert_eq!(validate_tags(&tags).unwrap_err().code(), "invalid_argument");
    }
}
