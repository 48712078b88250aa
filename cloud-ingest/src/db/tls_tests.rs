//! Unit tests of the database URL's TLS parameters (pure).

#![allow(clippy::unwrap_used)]

use super::*;

fn tls(url: &str) -> DbTls {
    DbTarget::parse(url).unwrap().tls
}

fn err(url: &str) -> String {
    DbTarget::parse(url).unwrap_err()
}

#[test]
fn a_url_without_tls_parameters_is_unchanged_and_plain() {
    for url in [
        "postgresql://rae@db:26257/rae",
        "postgresql://rae@db:26257/rae?application_name=x",
        "host=db user=rae",
    ] {
        let t = DbTarget::parse(url).unwrap();
        assert_eq!(t.conn, url);
        assert_eq!(t.tls.mode, SslMode::Disable);
        assert_eq!(t.tls.files(), vec![]);
    }
}

#[test]
fn a_cockroachdb_url_keeps_its_other_parameters_and_yields_the_files() {
    let t = DbTarget::parse(
        "postgresql://rae@db:26257/rae?sslmode=verify-full&sslrootcert=certs/ca.crt\
         &application_name=x&sslcert=certs/client.rae.crt&sslkey=certs%2Fclient.rae.key",
    )
    .unwrap();
    assert_eq!(t.conn, "postgresql://rae@db:26257/rae?application_name=x");
    assert_eq!(t.tls.mode, SslMode::VerifyFull);
    assert_eq!(t.tls.root_cert, Some(PathBuf::from("certs/ca.crt")));
    assert_eq!(
        t.tls.client,
        Some((
            PathBuf::from("certs/client.rae.crt"),
            PathBuf::from("certs/client.rae.key")
        ))
    );
    t.conn.parse::<tokio_postgres::Config>().unwrap();
}

#[test]
fn key_value_strings_are_split_with_quotes_and_escapes() {
    let t = DbTarget::parse(
        "host=db  sslmode = require user='r a\\'e' sslrootcert='/etc/my ca.pem' dbname=rae",
    )
    .unwrap();
    assert_eq!(t.conn, "host=db user='r a\\'e' dbname=rae");
    assert_eq!(t.tls.mode, SslMode::Require);
    assert_eq!(t.tls.root_cert, Some(PathBuf::from("/etc/my ca.pem")));
    let config: tokio_postgres::Config = t.conn.parse().unwrap();
    assert_eq!(config.get_user(), Some("r a'e"));
}

#[test]
fn require_without_a_ca_is_allowed_and_verify_modes_need_one() {
    assert_eq!(tls("host=db sslmode=require").mode, SslMode::Require);
    let e = err("postgresql://db/rae?sslmode=verify-full");
    assert!(e.contains("sslmode=verify-full without sslrootcert"), "{e}");
    let e = err("host=db sslmode=verify-ca");
    assert!(e.contains("sslmode=verify-ca without sslrootcert"), "{e}");
}

#[test]
fn parameters_that_cannot_take_effect_are_errors() {
    for (url, needle) in [
        ("host=db sslmode=prefer", "falls back to an unencrypted"),
        (
            "postgresql://db?sslmode=allow",
            "falls back to an unencrypted",
        ),
        ("host=db sslmode=verify_full", "expected disable, require"),
        (
            "host=db sslmode=disable sslrootcert=/ca.pem",
            "sslmode=disable but sets",
        ),
        ("host=db sslrootcert=/ca.pem", "without sslmode"),
        (
            "host=db sslmode=require sslcert=/c.pem",
            "both sslcert and sslkey",
        ),
        (
            "host=db sslmode=verify-full sslrootcert=system",
            "sslrootcert=system",
        ),
    ] {
        let e = err(url);
        assert!(e.contains(needle), "{url}: {e}");
    }
}

#[test]
fn a_malformed_key_value_string_is_left_to_tokio_postgres() {
    let t = DbTarget::parse("host=db user='unterminated").unwrap();
    assert_eq!(t.conn, "host=db user='unterminated");
    assert!(t.conn.parse::<tokio_postgres::Config>().is_err());
}

#[test]
fn disable_needs_no_rustls_config() {
    assert!(client_config(&tls("host=db")).unwrap().is_none());
    assert!(client_config(&tls("host=db sslmode=require"))
        .unwrap()
        .is_some());
}
