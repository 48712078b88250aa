//! Unit tests: PEM files made by rcgen in a temp dir.

#![allow(clippy::unwrap_used)]

use super::*;
use std::path::PathBuf;

struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    other_key: PathBuf,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["client".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        cert: write("client.pem", leaf.pem()),
        key: write("client.key", key.serialize_pem()),
        other_key: write(
            "other.key",
            rcgen::KeyPair::generate().unwrap().serialize_pem(),
        ),
        _dir: dir,
    }
}

fn auth<'a>(cert_file: &'a Path, key_file: &'a Path) -> Option<ClientAuth<'a>> {
    Some(ClientAuth {
        cert_file,
        key_file,
    })
}

#[test]
fn a_ca_and_a_client_certificate_make_a_mutual_tls_config() {
    let p = pki();
    let config = client_config(Some(&p.ca), auth(&p.cert, &p.key)).unwrap();
    assert!(config.client_auth_cert_resolver.has_certs());
    let config = client_config(Some(&p.ca), None).unwrap();
    assert!(!config.client_auth_cert_resolver.has_certs());
}

#[test]
fn a_missing_file_is_named_with_the_os_error() {
    let p = pki();
    let missing = p.ca.with_file_name("nope.pem");
    let e = client_config(Some(&missing), None).unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("cannot read {}: ", missing.display())),
        "{e}"
    );
    let e = client_config(Some(&p.ca), auth(&p.cert, &missing))
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope.pem"), "{e}");
}

#[test]
fn swapped_certificate_and_key_files_are_named() {
    let p = pki();
    let e = client_config(Some(&p.key), None).unwrap_err().to_string();
    assert_eq!(e, format!("{} holds no PEM certificate", p.key.display()));
    let e = client_config(Some(&p.ca), auth(&p.cert, &p.cert))
        .unwrap_err()
        .to_string();
    assert_eq!(e, format!("{} holds no PEM private key", p.cert.display()));
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let p = pki();
    let e = client_config(Some(&p.ca), auth(&p.cert, &p.other_key))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("TLS setup: "), "{e}");
}

#[test]
fn hints_name_the_likely_cause() {
    let keys = "x.cert and x.key";
    let h = hint("TLS: I/O: received fatal alert: CertificateRequired", keys).unwrap();
    assert!(h.contains(keys), "{h}");
    let h = hint("invalid peer certificate: UnknownIssuer", keys).unwrap();
    assert!(h.contains("not signed by the configured CA"), "{h}");
    assert!(hint("received fatal alert: UnknownCA", keys)
        .unwrap()
        .contains("rejected our client certificate"));
    let h = hint(
        "invalid peer certificate: certificate not valid for name \"b.example\"; certificate \
         is only valid for DnsName(\"localhost\")",
        keys,
    )
    .unwrap();
    assert!(h.contains("does not name the host"), "{h}");
    assert_eq!(hint("connection refused", keys), None);
}

#[test]
fn a_certificate_and_key_come_both_or_neither() {
    assert_eq!(cert_key_pair(Some("c"), Some("k")), Ok(Some(("c", "k"))));
    assert_eq!(cert_key_pair::<&str>(None, None), Ok(None));
    assert_eq!(cert_key_pair(Some("c"), None), Err(HalfPair));
    assert_eq!(cert_key_pair(None, Some("k")), Err(HalfPair));
}
