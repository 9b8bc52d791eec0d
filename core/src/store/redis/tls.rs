//! TLS material for `rediss://`: read and validated once, when the store is created.
//!
//! * `redis_ssl_ca_certs`: PEM bundle of trust anchors (at least one certificate); without it the
//!   system roots are used.
//! * `redis_ssl_certfile` + `redis_ssl_keyfile`: client certificate chain and private key for
//!   mTLS (both or neither; the configuration already enforces the pairing).
//! * `redis_ssl_check_hostname: false` keeps certificate *chain* verification and skips only the
//!   hostname check (unlike the peer plugin, which disabled all verification).
//!
//! Every error names the setting and the file.

use redis::{ClientTlsConfig, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::RedisSettings;
use crate::store::StoreError;

fn read(key: &str, path: &str) -> Result<Vec<u8>, StoreError> {
    std::fs::read(path)
        .map_err(|e| StoreError::permanent(format!("{key}: cannot read {path:?}: {e}")))
}

fn certs(key: &str, path: &str, pem: &[u8]) -> Result<usize, StoreError> {
    let list = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::permanent(format!("{key}: {path:?} is not valid PEM: {e}")))?;
    if list.is_empty() {
        return Err(StoreError::permanent(format!(
            "{key}: {path:?} contains no PEM certificate"
        )));
    }
    Ok(list.len())
}

/// The TLS material of `settings`, validated; `None` for a plain `redis://` URL.
pub(crate) fn certificates(
    settings: &RedisSettings,
) -> Result<Option<TlsCertificates>, StoreError> {
    let tls = settings
        .url
        .split(',')
        .any(|u| u.trim().starts_with("rediss://"));
    if !tls {
        for (key, v) in [
            ("redis_ssl_ca_certs", &settings.ca_certs),
            ("redis_ssl_certfile", &settings.certfile),
            ("redis_ssl_keyfile", &settings.keyfile),
        ] {
            if let Some(v) = v {
                return Err(StoreError::permanent(format!(
                    "{key}: {v:?} requires a rediss:// redis_url"
                )));
            }
        }
        return Ok(None);
    }
    let root_cert = match &settings.ca_certs {
        Some(path) => {
            let pem = read("redis_ssl_ca_certs", path)?;
            certs("redis_ssl_ca_certs", path, &pem)?;
            Some(pem)
        }
        None => None,
    };
    let client_tls = match (&settings.certfile, &settings.keyfile) {
        (Some(cert), Some(key)) => {
            let cert_pem = read("redis_ssl_certfile", cert)?;
            certs("redis_ssl_certfile", cert, &cert_pem)?;
            let key_pem = read("redis_ssl_keyfile", key)?;
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                StoreError::permanent(format!(
                    "redis_ssl_keyfile: {key:?} holds no usable PEM private key: {e}"
                ))
            })?;
            Some(ClientTlsConfig {
                client_cert: cert_pem,
                client_key: key_pem,
            })
        }
        (None, None) => None,
        _ => {
            return Err(StoreError::permanent(
                "redis_ssl_certfile: redis_ssl_certfile and redis_ssl_keyfile must be given together (mTLS)",
            ))
        }
    };
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// Validate the TLS files of `settings` (readable, PEM, at least one certificate, a usable key)
/// as creating the store does, without connecting: `ratewall-server --check-config` runs this
/// check, so it passes exactly the configurations start-up accepts.
pub fn check_files(settings: &RedisSettings) -> Result<(), StoreError> {
    certificates(settings).map(|_| ())
}

/// Make sure rustls has a process-wide crypto provider (ring), whatever other crates enabled.
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err means another thread installed one first: fine either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
