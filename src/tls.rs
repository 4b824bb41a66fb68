//! The client side of TLS to the stores (PostgreSQL with `sslmode=require`,
//! `rediss://`, `amqps://`): rustls on ring, verifying the server's chain
//! and name. Trusted: the CA file given at start-up
//! (`LIVEFEED_TLS_CA_FILE`, for a provider's private CA or a self-signed
//! one), else the system's CA store. Trust is process-wide, like the
//! system store it stands in for; this module owns no connection.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS CA file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the TLS CA file {0} holds no PEM certificate")]
    NoCertificate(PathBuf),
    #[error("the TLS CA file {path} holds an unusable certificate: {source}")]
    BadCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("no CA certificate could be loaded from the system store")]
    NoSystemRoots,
    #[error("the TLS CA file was already set for this process")]
    AlreadySet,
}

/// The CA file, once set; `None` inside: the system store.
static CA_FILE: OnceLock<Option<Trust>> = OnceLock::new();

struct Trust {
    pem: Vec<u8>,
    config: Arc<ClientConfig>,
}

/// Chooses what the process trusts, reading and checking the CA file now so
/// a bad one stops start-up with a clear error. Call once, before any
/// connection; without a call, the system store is trusted.
pub fn set_ca_file(path: Option<&Path>) -> Result<(), TlsError> {
    install_provider();
    let trust = path.map(load).transpose()?;
    CA_FILE.set(trust).map_err(|_| TlsError::AlreadySet)
}

/// The rustls configuration for connections to the stores.
pub fn client_config() -> Result<Arc<ClientConfig>, TlsError> {
    install_provider();
    if let Some(Some(trust)) = CA_FILE.get() {
        return Ok(trust.config.clone());
    }
    static SYSTEM: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    if let Some(config) = SYSTEM.get() {
        return Ok(config.clone());
    }
    let mut roots = RootCertStore::empty();
    let (added, _) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if added == 0 {
        return Err(TlsError::NoSystemRoots);
    }
    Ok(SYSTEM.get_or_init(|| config(roots)).clone())
}

/// A configuration that trusts nothing, for connections that never
/// negotiate TLS but whose type needs a connector.
pub fn trusting_nothing() -> Arc<ClientConfig> {
    install_provider();
    config(RootCertStore::empty())
}

/// The CA file's PEM, for clients that build their own rustls configuration
/// (redis); `None` when the system store is trusted.
pub fn ca_pem() -> Option<&'static [u8]> {
    CA_FILE.get()?.as_ref().map(|trust| trust.pem.as_slice())
}

/// Makes ring the process's rustls provider: redis builds its rustls
/// configuration with the default one, which must be named when more than
/// one is compiled in.
pub fn install_provider() {
    // Fails only when a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn load(path: &Path) -> Result<Trust, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
        roots.add(cert).map_err(|source| TlsError::BadCertificate {
            path: path.to_owned(),
            source,
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate(path.to_owned()));
    }
    Ok(Trust {
        config: config(roots),
        pem,
    })
}

/// Only after [`install_provider`]: `builder` takes the process's provider.
fn config(roots: RootCertStore) -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}
