//! TLS for `mqtts://` brokers: the configured CA file, and an optional
//! client certificate and key for mutual TLS. The PEM loading and the
//! rustls setup (ring provider) live in the shared `rae-tls` crate, which
//! the cloud ingest's bridge uses too.

use super::config::MqttSettings;
use std::sync::Arc;

pub use rae_tls::TlsError;

/// Builds the rustls client configuration.
pub fn client_config(s: &MqttSettings) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    rae_tls::client_config(
        s.ca_file.as_deref(),
        rae_tls::ClientAuth::from_pair(s.client_auth.as_ref()),
    )
}
