//! TLS to PostgreSQL and CockroachDB, configured the libpq way inside
//! `database.url`: `sslmode`, `sslrootcert`, `sslcert`, `sslkey` — the
//! connection strings CockroachDB and psql use work unchanged. This module
//! owns reading those four parameters ([`DbTarget::parse`], pure), taking
//! them out of the string handed to tokio-postgres (which does not know
//! the file parameters), and the rustls configuration for a mode
//! ([`client_config`]).
//!
//! Modes (libpq semantics; absent `sslmode` means `disable`):
//! * `disable` — plain TCP.
//! * `require` — encrypted; the server's certificate is checked against
//!   `sslrootcert` when given (chain only, as libpq does), not at all
//!   otherwise (open to a man in the middle).
//! * `verify-ca` — encrypted, chain checked against `sslrootcert`.
//! * `verify-full` — encrypted, chain and host name checked.
//!
//! Invariants: a parameter that cannot take effect is an error, never
//! ignored (`allow`/`prefer`, which silently fall back to plain TCP; files
//! with `disable`; `verify-*` without `sslrootcert`; `sslcert` without
//! `sslkey`). TLS never falls back to plain TCP.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How the server's certificate is checked; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The TLS part of a database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbTls {
    pub mode: SslMode,
    /// `sslrootcert`: PEM CA certificate(s).
    pub root_cert: Option<PathBuf>,
    /// `sslcert` and `sslkey`: PEM client certificate and key.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl DbTls {
    /// The files this configuration reads, with the URL parameter naming
    /// each.
    pub fn files(&self) -> Vec<(&'static str, &Path)> {
        let mut files = Vec::new();
        if let Some(ca) = &self.root_cert {
            files.push(("sslrootcert", ca.as_path()));
        }
        if let Some((cert, key)) = &self.client {
            files.push(("sslcert", cert.as_path()));
            files.push(("sslkey", key.as_path()));
        }
        files
    }
}

/// A database URL split into what tokio-postgres gets and the TLS part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbTarget {
    /// The URL or key=value string without the four TLS parameters.
    pub conn: String,
    pub tls: DbTls,
}

const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

#[derive(Debug, Default)]
struct Found {
    mode: Option<String>,
    root_cert: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl Found {
    fn set(&mut self, key: &str, value: String) {
        // Later occurrences win, as in libpq.
        match key {
            "sslmode" => self.mode = Some(value),
            "sslrootcert" => self.root_cert = Some(value),
            "sslcert" => self.cert = Some(value),
            _ => self.key = Some(value),
        }
    }
}

impl DbTarget {
    /// Splits `url` (`postgresql://…?k=v&…` or `k=v k=v …`). The message
    /// of an error names the offending parameter. A string that cannot be
    /// split is returned whole for tokio-postgres to judge.
    pub fn parse(url: &str) -> Result<DbTarget, String> {
        let mut found = Found::default();
        let conn = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            split_url(url, &mut found)
        } else {
            split_key_values(url, &mut found).unwrap_or_else(|| url.to_string())
        };
        Ok(DbTarget {
            conn,
            tls: tls_of(found)?,
        })
    }
}

fn tls_of(f: Found) -> Result<DbTls, String> {
    let files_set = f.root_cert.is_some() || f.cert.is_some() || f.key.is_some();
    let mode = match f.mode.as_deref() {
        None if files_set => {
            return Err("sets sslrootcert/sslcert/sslkey without sslmode; add \
                 sslmode=verify-full (or require, verify-ca)"
                .to_string())
        }
        None | Some("disable") => SslMode::Disable,
        Some("require") => SslMode::Require,
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        Some(m @ ("allow" | "prefer")) => {
            return Err(format!(
                "has sslmode={m}, which falls back to an unencrypted connection; use \
                 sslmode=disable, require, verify-ca or verify-full"
            ))
        }
        Some(m) => {
            return Err(format!(
                "has sslmode={m:?}; expected disable, require, verify-ca or verify-full"
            ))
        }
    };
    if mode == SslMode::Disable && files_set {
        return Err(
            "has sslmode=disable but sets sslrootcert/sslcert/sslkey; use sslmode=verify-full \
             (or require, verify-ca) or drop the files"
                .to_string(),
        );
    }
    let root_cert = match f.root_cert {
        Some(s) if s == "system" => {
            return Err(
                "has sslrootcert=system, which is not supported; give the CA file".to_string(),
            )
        }
        Some(s) if s.is_empty() => return Err("has an empty sslrootcert".to_string()),
        other => other.map(PathBuf::from),
    };
    if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
        return Err(format!(
            "has sslmode={} without sslrootcert, the CA file that signs the server's \
             certificate",
            if mode == SslMode::VerifyCa {
                "verify-ca"
            } else {
                "verify-full"
            }
        ));
    }
    let client = match (f.cert, f.key) {
        (Some(c), Some(k)) if !c.is_empty() && !k.is_empty() => {
            Some((PathBuf::from(c), PathBuf::from(k)))
        }
        (None, None) => None,
        _ => return Err("needs both sslcert and sslkey (non-empty), or neither".to_string()),
    };
    Ok(DbTls {
        mode,
        root_cert,
        client,
    })
}

/// `scheme://…?query`: takes the TLS parameters out of the query.
fn split_url(url: &str, found: &mut Found) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_string();
    };
    let mut kept = Vec::new();
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let key = percent_decode(k);
        if TLS_KEYS.contains(&key.as_str()) {
            found.set(&key, percent_decode(v));
        } else {
            kept.push(part);
        }
    }
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).copied(), b.get(i + 2).copied()) {
            (b'%', Some(h), Some(l)) if hex(h).is_some() && hex(l).is_some() => {
                out.push((hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0)) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k=v k='v w' …` (libpq's syntax: spaces around `=` allowed, values
/// single-quoted or not, `\` escapes): takes the TLS parameters out.
/// `None` when the string does not follow the syntax.
fn split_key_values(s: &str, found: &mut Found) -> Option<String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut kept = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        if i == b.len() {
            break;
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = &s[start..i];
        skip_ws(&mut i);
        if key.is_empty() || b.get(i) != Some(&b'=') {
            return None;
        }
        i += 1;
        skip_ws(&mut i);
        let mut value = Vec::new();
        if b.get(i) == Some(&b'\'') {
            i += 1;
            loop {
                match *b.get(i)? {
                    b'\'' => break,
                    b'\\' => {
                        value.push(*b.get(i + 1)?);
                        i += 2;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
            i += 1;
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' {
                    i += 1;
                }
                value.push(*b.get(i)?);
                i += 1;
            }
        }
        if TLS_KEYS.contains(&key) {
            found.set(key, String::from_utf8_lossy(&value).into_owned());
        } else {
            kept.push(&s[start..i]);
        }
    }
    Some(kept.join(" "))
}

/// The rustls configuration for `tls`; `None` for `disable`.
pub fn client_config(tls: &DbTls) -> Result<Option<Arc<rustls::ClientConfig>>, rae_tls::TlsError> {
    let client_auth = rae_tls::ClientAuth::from_pair(tls.client.as_ref());
    let root = tls.root_cert.as_deref();
    let config = match (tls.mode, root) {
        (SslMode::Disable, _) => return Ok(None),
        (SslMode::VerifyFull, _) => rae_tls::client_config(root, client_auth)?,
        (SslMode::Require, None) => {
            let verifier = Lenient::new(None);
            rae_tls::client_config_with_verifier(Arc::new(verifier), client_auth)?
        }
        (SslMode::Require | SslMode::VerifyCa, _) => {
            let roots = Arc::new(rae_tls::root_store(root)?);
            let chain = WebPkiServerVerifier::builder_with_provider(roots, rae_tls::provider())
                .build()
                .map_err(|e| rae_tls::TlsError::Rustls(rustls::Error::General(e.to_string())))?;
            let verifier = Lenient::new(Some(chain));
            rae_tls::client_config_with_verifier(Arc::new(verifier), client_auth)?
        }
    };
    Ok(Some(config))
}

/// The server check of `require` and `verify-ca`: the chain against the
/// roots (ignoring the host name) when there are roots, nothing otherwise.
/// Handshake signatures are always verified.
#[derive(Debug)]
struct Lenient {
    chain: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl Lenient {
    fn new(chain: Option<Arc<WebPkiServerVerifier>>) -> Lenient {
        Lenient {
            chain,
            provider: rae_tls::provider(),
        }
    }
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the name only after the chain: a name error means
        // the chain was good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
#[path = "tls_tests.rs"]
mod tests;
