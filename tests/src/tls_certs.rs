//! [`TlsCerts`]: throwaway PEM certificates (rcgen, ring, ECDSA P-256) for
//! the TLS broker tests, written into a directory of the test's own.
//!
//! * `ca.pem` — a self-signed CA (`CN = rae test CA`), which signs:
//!   * `server.pem` + `server.key` — the broker's certificate: SANs IP
//!     `127.0.0.1` and DNS `localhost`, EKU `serverAuth`;
//!   * `client.pem` + `client.key` — the agent's: `CN = <client_cn>` (the
//!     agent's `rae_id`), EKU `clientAuth`;
//!   * more client certificates on demand ([`TlsCerts::issue_client`]),
//!     e.g. for a subscriber.
//! * `other-ca.pem` — an unrelated self-signed CA (`CN = rae unrelated CA`)
//!   that signed nothing here: as an agent's `ca_file` it cannot validate
//!   the broker (rustls reports `UnknownIssuer`).
//!
//! A TLS 1.3 mosquitto needs no DH parameters and OpenSSL reads the
//! PKCS#8 `PRIVATE KEY` PEM rcgen writes, as does the agent (rustls-pemfile).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

/// The server certificate's SANs.
pub const SERVER_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;
pub const SERVER_DNS: &str = "localhost";

/// A PEM certificate and its PEM private key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// The certificate and key bytes, e.g. for a rumqttc
    /// `Transport::tls(ca, Some((cert, key)), None)`.
    pub fn read(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        Ok((read(&self.cert)?, read(&self.key)?))
    }
}

/// The files of one test's PKI. See the module docs.
pub struct TlsCerts {
    pub dir: PathBuf,
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// The broker's certificate and key.
    pub server: CertFiles,
    /// The agent's client certificate and key.
    pub client: CertFiles,
    /// The client certificate's common name.
    pub client_cn: String,
    /// A CA that signed nothing here.
    pub other_ca: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl std::fmt::Debug for TlsCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCerts")
            .field("dir", &self.dir)
            .field("ca", &self.ca)
            .field("server", &self.server)
            .field("client", &self.client)
            .field("client_cn", &self.client_cn)
            .field("other_ca", &self.other_ca)
            .finish_non_exhaustive()
    }
}

impl TlsCerts {
    /// Generates everything into `dir` (created if needed); the agent's
    /// client certificate gets `CN = client_cn`.
    pub fn generate(dir: &Path, client_cn: &str) -> Result<TlsCerts> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let issuer = ca("rae test CA")?;
        let ca_file = write(dir, "ca.pem", &issuer.pem())?;
        let other = ca("rae unrelated CA")?;
        let other_ca = write(dir, "other-ca.pem", &other.pem())?;

        let mut params = leaf_params("rae test broker", ExtendedKeyUsagePurpose::ServerAuth)?;
        params.subject_alt_names = vec![
            SanType::IpAddress(SERVER_IP.into()),
            SanType::DnsName(SERVER_DNS.try_into()?),
        ];
        let server = sign(dir, "server", params, &issuer)?;

        let mut certs = TlsCerts {
            dir: dir.to_path_buf(),
            ca: ca_file,
            server,
            client: CertFiles {
                cert: PathBuf::new(),
                key: PathBuf::new(),
            },
            client_cn: client_cn.to_string(),
            other_ca,
            issuer,
        };
        certs.client = certs.issue_client("client", client_cn)?;
        Ok(certs)
    }

    /// Another client certificate (`CN = cn`, EKU `clientAuth`) signed by
    /// the CA, written to `<name>.pem` + `<name>.key`.
    pub fn issue_client(&self, name: &str, cn: &str) -> Result<CertFiles> {
        let params = leaf_params(cn, ExtendedKeyUsagePurpose::ClientAuth)?;
        sign(&self.dir, name, params, &self.issuer)
    }

    /// The CA certificate's PEM bytes.
    pub fn ca_pem(&self) -> Result<Vec<u8>> {
        read(&self.ca)
    }
}

fn name(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "rae tests");
    dn.push(DnType::CommonName, cn);
    dn
}

/// A self-signed CA.
fn ca(cn: &str) -> Result<CertifiedIssuer<'static, KeyPair>> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(CertifiedIssuer::self_signed(params, KeyPair::generate()?)?)
}

fn leaf_params(cn: &str, eku: ExtendedKeyUsagePurpose) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(cn);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![eku];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Signs a fresh key's certificate with `issuer`; writes `<stem>.pem` and
/// `<stem>.key` (mode 0600).
fn sign(
    dir: &Path,
    stem: &str,
    params: CertificateParams,
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> Result<CertFiles> {
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    let cert = write(dir, &format!("{stem}.pem"), &cert.pem())?;
    let key = write(dir, &format!("{stem}.key"), &key.serialize_pem())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(CertFiles { cert, key })
}

fn write(dir: &Path, file: &str, pem: &str) -> Result<PathBuf> {
    let path = dir.join(file);
    std::fs::write(&path, pem).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificates_are_pem_files_in_the_given_dir() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let certs = TlsCerts::generate(dir.path(), "rae-x")?;
        for (path, label) in [
            (&certs.ca, "CERTIFICATE"),
            (&certs.other_ca, "CERTIFICATE"),
            (&certs.server.cert, "CERTIFICATE"),
            (&certs.server.key, "PRIVATE KEY"),
            (&certs.client.cert, "CERTIFICATE"),
            (&certs.client.key, "PRIVATE KEY"),
        ] {
            assert!(path.starts_with(dir.path()), "{}", path.display());
            let text = std::fs::read_to_string(path)?;
            assert!(
                text.starts_with(&format!("-----BEGIN {label}-----")),
                "{}: {text}",
                path.display()
            );
        }
        assert_ne!(std::fs::read(&certs.ca)?, std::fs::read(&certs.other_ca)?);
        let extra = certs.issue_client("sub", "subscriber")?;
        assert_eq!(extra.cert, dir.path().join("sub.pem"));
        assert_ne!(extra.read()?, certs.client.read()?);
        Ok(())
    }

    /// `openssl verify` (when the CLI is installed) agrees: the server
    /// certificate is valid for `127.0.0.1` and `localhost` as a TLS server,
    /// the client certificate as a TLS client, and neither under the
    /// unrelated CA.
    #[test]
    fn openssl_verifies_the_chain_names_and_purposes() -> Result<()> {
        const OPENSSL: &str = "/usr/bin/openssl";
        if !Path::new(OPENSSL).is_file() {
            eprintln!("{OPENSSL} is missing; skipping the cross-check");
            return Ok(());
        }
        let dir = tempfile::tempdir()?;
        let certs = TlsCerts::generate(dir.path(), "rae-x")?;
        let verify = |ca: &Path, cert: &Path, extra: &[&str]| -> Result<bool> {
            let out = std::process::Command::new(OPENSSL)
                .arg("verify")
                .arg("-CAfile")
                .arg(ca)
                .args(extra)
                .arg(cert)
                .output()?;
            Ok(out.status.success())
        };
        let server = &certs.server.cert;
        for name in [
            ["-verify_ip", "127.0.0.1"],
            ["-verify_hostname", "localhost"],
        ] {
            let args = [&["-purpose", "sslserver"][..], &name[..]].concat();
            assert!(verify(&certs.ca, server, &args)?, "{args:?}");
            assert!(!verify(&certs.other_ca, server, &args)?, "{args:?}");
        }
        assert!(!verify(&certs.ca, server, &["-verify_ip", "127.0.0.2"])?);
        let client = ["-purpose", "sslclient"];
        assert!(verify(&certs.ca, &certs.client.cert, &client)?);
        assert!(!verify(&certs.other_ca, &certs.client.cert, &client)?);
        assert!(!verify(
            &certs.ca,
            &certs.client.cert,
            &["-purpose", "sslserver"]
        )?);
        Ok(())
    }
}
