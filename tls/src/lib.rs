//! TLS client setup shared by the agent's uplink and the cloud ingest's
//! MQTT and database connections: PEM files → rustls client
//! configurations, always with the ring provider and rustls' safe default
//! protocol versions (TLS 1.2 and 1.3).
//!
//! Invariants: nothing here touches the network; every error names the
//! file it is about; a configuration is either complete (CA roots, and the
//! client certificate chain with its key when asked) or an error — never a
//! silently weaker one.

use rustls::client::danger::ServerCertVerifier;
use rustls::client::WantsClientCert;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, ConfigBuilder};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no PEM private key")]
    NoKey { path: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A client certificate chain and its private key, as PEM files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAuth<'a> {
    pub cert_file: &'a Path,
    pub key_file: &'a Path,
}

/// A client certificate given without its key, or a key without its
/// certificate (the caller's config names the keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HalfPair;

/// A client certificate and its key: both (`Some`) or neither (`None`).
pub fn cert_key_pair<T>(cert: Option<T>, key: Option<T>) -> Result<Option<(T, T)>, HalfPair> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        _ => Err(HalfPair),
    }
}

impl<'a> ClientAuth<'a> {
    /// From a validated config's `(certificate, key)` pair.
    pub fn from_pair(pair: Option<&'a (PathBuf, PathBuf)>) -> Option<ClientAuth<'a>> {
        pair.map(|(cert, key)| ClientAuth {
            cert_file: cert,
            key_file: key,
        })
    }
}

/// The crypto provider every rae TLS connection uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// The PEM certificates in `path`; none is an error.
pub fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &pem[..])
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

/// The first PEM private key (PKCS#8, PKCS#1 or SEC1) in `path`.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut &pem[..])
        .ok()
        .flatten()
        .ok_or_else(|| TlsError::NoKey {
            path: path.display().to_string(),
        })
}

/// A root store holding the certificates of `ca_file` (empty for `None`).
pub fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(ca) = ca_file {
        for cert in certs(ca)? {
            roots.add(cert)?;
        }
    }
    Ok(roots)
}

/// A builder with the ring provider and the safe protocol versions.
fn builder() -> Result<ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?)
}

fn finish(
    builder: ConfigBuilder<ClientConfig, WantsClientCert>,
    client_auth: Option<ClientAuth<'_>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let config = match client_auth {
        Some(auth) => {
            let chain = certs(auth.cert_file)?;
            let key = private_key(auth.key_file)?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// A client configuration that verifies the server against the CA
/// certificates in `ca_file` (chain and server name, webpki), presenting
/// `client_auth` when given (mutual TLS).
pub fn client_config(
    ca_file: Option<&Path>,
    client_auth: Option<ClientAuth<'_>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = root_store(ca_file)?;
    finish(builder()?.with_root_certificates(roots), client_auth)
}

/// A client configuration whose server check is `verifier` (for the
/// weaker libpq modes that skip the name or the whole check), presenting
/// `client_auth` when given.
pub fn client_config_with_verifier(
    verifier: Arc<dyn ServerCertVerifier>,
    client_auth: Option<ClientAuth<'_>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    finish(
        builder()?
            .dangerous()
            .with_custom_certificate_verifier(verifier),
        client_auth,
    )
}

/// What an operator should do about a TLS failure whose rendered text is
/// `text` (as rustls and rumqttc print it), if there is a clear answer.
/// `client_cert_keys` names the config keys of the client certificate.
pub fn hint(text: &str, client_cert_keys: &str) -> Option<String> {
    if text.contains("CertificateRequired") {
        Some(format!(
            "the server requires a client certificate: set {client_cert_keys}"
        ))
    } else if text.contains("alert")
        && (text.contains("BadCertificate") || text.contains("UnknownCA"))
    {
        Some("the server rejected our client certificate".to_string())
    } else if text.contains("UnknownIssuer") {
        Some("the server's certificate is not signed by the configured CA".to_string())
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        Some("the server's certificate does not name the host we connect to".to_string())
    } else {
        None
    }
}

#[cfg(test)]
mod tests;
