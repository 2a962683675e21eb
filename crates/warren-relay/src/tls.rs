//! TLS material: the generated Warren CA and the relay's wildcard
//! certificate, or operator-provided files; rustls configs built from them.
//!
//! Generated layout (`dir`, created 0700):
//! - `ca.pem` (the CA certificate clients trust), `ca-key.pem` (0600)
//! - `relay.pem` (leaf for `*.<base_domain>` and `<base_domain>`, then the
//!   CA), `relay-key.pem` (0600), `relay-leaf.json` (what the leaf was made
//!   for; a changed base domain, CA, or a leaf expiring within 30 days makes
//!   a new one).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

/// ALPN protocols of the HTTPS front, in preference order.
pub const HTTPS_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];
/// ALPN protocol of the node link.
pub const LINK_ALPN: &[u8] = b"warren-link/1";

macro_rules! date_from_unix {
    ($secs:expr) => {{
        let (y, m, d) = civil($secs);
        rcgen::date_time_ymd(y, m, d)
    }};
}

const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 397;
const LEAF_RENEW_BEFORE_SECS: u64 = 30 * 86_400;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parse {path}: {reason}")]
    Parse { path: PathBuf, reason: String },
    #[error("generate certificate")]
    Generate(#[source] rcgen::Error),
    #[error("build rustls config")]
    Rustls(#[source] rustls::Error),
}

/// Where the relay's certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TlsSource {
    /// Warren's own CA in `dir` (made at first start, reused afterwards).
    Generated { dir: PathBuf },
    /// Operator-provided PEM files: the chain for `*.<base_domain>` and its
    /// key. `ca` is what nodes trust for the link (default: the chain's last
    /// certificate).
    Files {
        cert: PathBuf,
        key: PathBuf,
        #[serde(default)]
        ca: Option<PathBuf>,
    },
}

/// The relay's certificate, key and the CA clients should trust.
#[derive(Debug)]
pub struct TlsMaterial {
    /// PEM of the CA (generated) or of the chain's last certificate / the
    /// operator's `ca` file.
    pub ca_pem: String,
    /// Where `ca_pem` lives on disk (print it so users can trust it).
    pub ca_path: Option<PathBuf>,
    /// SHA-256 of the CA certificate's DER, lowercase hex.
    pub ca_fingerprint: String,
    pub cert_chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        TlsMaterial {
            ca_pem: self.ca_pem.clone(),
            ca_path: self.ca_path.clone(),
            ca_fingerprint: self.ca_fingerprint.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

#[derive(Serialize, Deserialize, PartialEq)]
struct LeafMeta {
    base_domain: String,
    ca_fingerprint: String,
    not_after_unix: u64,
}

/// Loads the material `source` names, generating what is missing.
pub fn load_tls(source: &TlsSource, base_domain: &str) -> Result<TlsMaterial, TlsError> {
    match source {
        TlsSource::Generated { dir } => ensure_ca(dir, base_domain),
        TlsSource::Files { cert, key, ca } => {
            let cert_chain = read_certs(cert)?;
            let key_der =
                PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|e| TlsError::Parse {
                    path: key.clone(),
                    reason: e.to_string(),
                })?;
            let (ca_pem, ca_path, ca_der) = match ca {
                Some(p) => {
                    let certs = read_certs(p)?;
                    let der = certs
                        .last()
                        .cloned()
                        .expect("read_certs refuses empty files");
                    (
                        String::from_utf8_lossy(&read(p)?).into_owned(),
                        Some(p.clone()),
                        der,
                    )
                }
                None => {
                    let der = cert_chain
                        .last()
                        .cloned()
                        .expect("read_certs refuses empty files");
                    (pem_encode("CERTIFICATE", &der), None, der)
                }
            };
            Ok(TlsMaterial {
                ca_pem,
                ca_path,
                ca_fingerprint: fingerprint(&ca_der),
                cert_chain,
                key: key_der,
            })
        }
    }
}

/// Generates (first start) or reuses the Warren CA in `dir` and a leaf for
/// `*.<base_domain>` + `<base_domain>` signed by it.
pub fn ensure_ca(dir: &Path, base_domain: &str) -> Result<TlsMaterial, TlsError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TlsError::CreateDir {
            path: dir.into(),
            source,
        })?;
    let ca_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");
    let (ca_key, ca_der) = if ca_path.exists() && ca_key_path.exists() {
        let key_pem = read_string(&ca_key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Parse {
            path: ca_key_path.clone(),
            reason: e.to_string(),
        })?;
        let der = read_certs(&ca_path)?.remove(0);
        (key, der)
    } else {
        let key = KeyPair::generate().map_err(TlsError::Generate)?;
        let cert = ca_params(&key)
            .self_signed(&key)
            .map_err(TlsError::Generate)?;
        write_file(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&ca_path, cert.pem().as_bytes(), 0o644)?;
        (key, cert.der().clone())
    };
    let ca_fp = fingerprint(&ca_der);
    let ca_pem = read_string(&ca_path)?;

    let leaf_path = dir.join("relay.pem");
    let leaf_key_path = dir.join("relay-key.pem");
    let meta_path = dir.join("relay-leaf.json");
    let meta: Option<LeafMeta> = fs::read(&meta_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let fresh = meta.is_some_and(|m| {
        m.base_domain == base_domain
            && m.ca_fingerprint == ca_fp
            && m.not_after_unix > crate::token::unix_now() + LEAF_RENEW_BEFORE_SECS
    }) && leaf_path.exists()
        && leaf_key_path.exists();
    if !fresh {
        let key = KeyPair::generate().map_err(TlsError::Generate)?;
        let mut params =
            CertificateParams::new(vec![format!("*.{base_domain}"), base_domain.to_string()])
                .map_err(TlsError::Generate)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("*.{base_domain}"));
        params.distinguished_name = dn;
        let now = crate::token::unix_now() as i64;
        params.not_before = date_from_unix!(now - 86_400);
        params.not_after = date_from_unix!(now + LEAF_DAYS * 86_400);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let issuer = Issuer::new(ca_params(&ca_key), &ca_key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(TlsError::Generate)?;
        let mut chain = cert.pem();
        chain.push_str(&ca_pem);
        write_file(&leaf_key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&leaf_path, chain.as_bytes(), 0o644)?;
        let meta = LeafMeta {
            base_domain: base_domain.to_string(),
            ca_fingerprint: ca_fp.clone(),
            not_after_unix: (now + LEAF_DAYS * 86_400) as u64,
        };
        write_file(
            &meta_path,
            &serde_json::to_vec(&meta).expect("serializes"),
            0o644,
        )?;
    }
    let cert_chain = read_certs(&leaf_path)?;
    let key =
        PrivateKeyDer::from_pem_slice(&read(&leaf_key_path)?).map_err(|e| TlsError::Parse {
            path: leaf_key_path.clone(),
            reason: e.to_string(),
        })?;
    Ok(TlsMaterial {
        ca_pem,
        ca_path: Some(ca_path),
        ca_fingerprint: ca_fp,
        cert_chain,
        key,
    })
}

/// The CA's parameters are a function of its key alone, so a restarted
/// relay can sign new leaves with the stored key without parsing the
/// stored certificate (same subject, same key identifier).
fn ca_params(key: &KeyPair) -> CertificateParams {
    let mut params = CertificateParams::default();
    let id = ring::digest::digest(&ring::digest::SHA256, key.public_key_raw());
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Warren");
    dn.push(
        DnType::CommonName,
        format!("Warren local CA {}", hex::encode(&id.as_ref()[..6])),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = crate::token::unix_now() as i64;
    params.not_before = date_from_unix!(now - 86_400);
    params.not_after = date_from_unix!(now + CA_DAYS * 86_400);
    params
}

/// SHA-256 of a certificate's DER, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// rustls server config for the HTTPS front (ALPN h2, http/1.1).
pub fn https_server_config(m: &TlsMaterial) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config(m, HTTPS_ALPN.iter().map(|p| p.to_vec()).collect())
}

/// rustls server config for the node link listener.
pub fn link_server_config(m: &TlsMaterial) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    server_config(m, vec![LINK_ALPN.to_vec()])
}

fn server_config(
    m: &TlsMaterial,
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Rustls)?
    .with_no_client_auth()
    .with_single_cert(m.cert_chain.clone(), m.key.clone_key())
    .map_err(TlsError::Rustls)?;
    cfg.alpn_protocols = alpn;
    Ok(Arc::new(cfg))
}

/// rustls client config trusting only the CAs in `ca_pem` (PEM, one or
/// more certificates), with the given ALPN.
pub fn client_config(
    ca_pem: &[u8],
    alpn: Vec<Vec<u8>>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem) {
        let c = c.map_err(|e| TlsError::Parse {
            path: "<ca pem>".into(),
            reason: e.to_string(),
        })?;
        roots.add(c).map_err(TlsError::Rustls)?;
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(TlsError::Rustls)?
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn;
    Ok(Arc::new(cfg))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })
}

fn read_string(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.into(),
        source,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let data = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Parse {
            path: path.into(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Parse {
            path: path.into(),
            reason: "no certificate".into(),
        });
    }
    Ok(certs)
}

/// Writes through a temporary file and a rename, with `mode` from the start.
fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    let tmp = path.with_extension("tmp");
    let err = |source| TlsError::Write {
        path: path.into(),
        source,
    };
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(chunk).expect("base64 is ascii"));
        s.push('\n');
    }
    s.push_str(&format!("-----END {label}-----\n"));
    s
}

/// The calendar date (UTC) of unix seconds (Howard Hinnant's
/// days-to-civil), for certificate validity.
fn civil(secs: i64) -> (i32, u8, u8) {
    let z = secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m as u8, d as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(951_782_400), (2000, 2, 29));
        assert_eq!(civil(1_767_225_600), (2026, 1, 1));
    }

    #[test]
    fn ca_is_reused_and_leaf_follows_the_domain() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure_ca(dir.path(), "warren.localhost").unwrap();
        let b = ensure_ca(dir.path(), "warren.localhost").unwrap();
        assert_eq!(a.ca_fingerprint, b.ca_fingerprint);
        assert_eq!(a.cert_chain, b.cert_chain);
        let c = ensure_ca(dir.path(), "example.test").unwrap();
        assert_eq!(a.ca_fingerprint, c.ca_fingerprint);
        assert_ne!(a.cert_chain[0], c.cert_chain[0]);
        let mode = fs::metadata(dir.path().join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // The new leaf verifies against the (reused) CA.
        let cfg = client_config(c.ca_pem.as_bytes(), vec![]).unwrap();
        let _ = cfg;
        https_server_config(&c).unwrap();
    }
}
