//! Reads a PostgreSQL URL into a connection configuration and the TLS it
//! asks for. `sslmode=require` (or libpq's `verify-ca` / `verify-full`,
//! which tokio-postgres does not parse) means TLS with the server's
//! certificate verified against [`crate::tls`]'s roots: a managed database
//! is reached over the internet, so an unverified channel is not offered.
//! Any other mode is a plain connection, as it was before TLS existed here.

use std::str::FromStr;

use tokio_postgres::Config;
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;

/// What every connection to PostgreSQL is made with.
pub type Tls = MakeRustlsConnect;

/// The configuration `url` describes, and the TLS connector to use with it.
pub fn connection(url: &str) -> Result<(Config, Tls), StoreError> {
    let mut config = parse_url(url)?;
    let tls = if config.get_ssl_mode() == SslMode::Require {
        crate::tls::client_config().map_err(|e| StoreError::Config(e.into()))?
    } else {
        config.ssl_mode(SslMode::Disable);
        crate::tls::trusting_nothing()
    };
    Ok((config, MakeRustlsConnect::new((*tls).clone())))
}

/// The configuration `url` describes, TLS not built yet: for checking flags
/// before the CA file is loaded.
pub fn parse_url(url: &str) -> Result<Config, StoreError> {
    let url = url
        .replace("sslmode=verify-full", "sslmode=require")
        .replace("sslmode=verify-ca", "sslmode=require");
    Config::from_str(&url).map_err(|e| StoreError::Config(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifying_modes_require_tls() {
        for mode in ["require", "verify-ca", "verify-full"] {
            let url = format!("postgres://u@db.example:5432/app?sslmode={mode}");
            let (config, _) = connection(&url).unwrap();
            assert_eq!(config.get_ssl_mode(), SslMode::Require, "{mode}");
            assert_eq!(config.get_dbname(), Some("app"));
        }
    }

    #[test]
    fn other_modes_stay_plain() {
        for url in [
            "postgres://u@localhost/app",
            "postgres://u@localhost/app?sslmode=prefer",
            "postgres://u@localhost/app?sslmode=disable",
        ] {
            let (config, _) = connection(url).unwrap();
            assert_eq!(config.get_ssl_mode(), SslMode::Disable, "{url}");
        }
        assert!(connection("postgres://u@localhost/app?sslmode=sometimes").is_err());
    }
}
