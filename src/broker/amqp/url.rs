//! Reads `AMQP_URL` (one URL, or several separated by commas) into amqprs
//! connection arguments, `amqps://` ones with TLS (rustls, trusting what
//! [`crate::tls`] trusts). Owns nothing else; must never echo a URL in an
//! error (it holds a password).

use amqprs::connection::OpenConnectionArguments;
use amqprs::tls::TlsAdaptor;
use tokio_rustls::TlsConnector;

/// amqprs declares the server dead after two missed heartbeats; RabbitMQ's
/// default of 60 s would leave a silently dropped connection unnoticed for
/// two minutes.
pub(super) const DEFAULT_HEARTBEAT_SECS: u16 = 10;
const DEFAULT_PORT: u16 = 5672;
const DEFAULT_TLS_PORT: u16 = 5671;

/// Parses a comma-separated list of URLs, each as [`connection_arguments`]
/// does; an error names the URL by its position only.
pub(super) fn connection_list(urls: &str) -> Result<Vec<OpenConnectionArguments>, String> {
    each_url(urls, connection_arguments)
}

/// Checks the URLs as [`connection_list`] would, without building TLS:
/// flags are checked before the CA file they name is loaded.
pub(super) fn check_list(urls: &str) -> Result<(), String> {
    each_url(urls, |url| parse(url).map(drop)).map(drop)
}

fn each_url<T>(urls: &str, read: impl Fn(&str) -> Result<T, String>) -> Result<Vec<T>, String> {
    let urls: Vec<&str> = urls.split(',').map(str::trim).collect();
    let count = urls.len();
    urls.into_iter()
        .enumerate()
        .map(|(index, url)| {
            read(url).map_err(|error| match count {
                1 => error,
                _ => format!("AMQP URL {} of {count}: {error}", index + 1),
            })
        })
        .collect()
}

/// Where a connection goes, for logs: host and port, never credentials.
pub(super) fn describe(arguments: &OpenConnectionArguments) -> String {
    format!("{}:{}", arguments.get_host(), arguments.get_port())
}

/// Parses `amqp://user:password@host:port/vhost?heartbeat=N` the way the
/// RabbitMQ URI spec reads it: user, password and vhost are percent-decoded
/// (`%2f` is the default vhost `/`), an absent vhost is `/`. `amqps://` is
/// the same over TLS (port 5671 by default), the certificate checked
/// against the host's name. Errors never echo the URL, which holds a password.
pub(super) fn connection_arguments(url: &str) -> Result<OpenConnectionArguments, String> {
    let (mut arguments, secure) = parse(url)?;
    if secure {
        let config = crate::tls::client_config().map_err(|e| e.to_string())?;
        let domain = arguments
            .get_host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        arguments.tls_adaptor(TlsAdaptor::new(TlsConnector::from(config), domain));
    }
    Ok(arguments)
}

/// The arguments of `url` without TLS, and whether it asks for TLS.
fn parse(url: &str) -> Result<(OpenConnectionArguments, bool), String> {
    let (rest, secure) = match (url.strip_prefix("amqp://"), url.strip_prefix("amqps://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err("an AMQP URL starts with amqp:// or amqps://".into()),
    };
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    if vhost.contains('/') {
        return Err("a / in the vhost of the AMQP URL must be written %2f".into());
    }
    let (user, password, host_port) = match authority.rsplit_once('@') {
        Some((user_info, host_port)) => {
            let (user, password) = user_info.split_once(':').unwrap_or((user_info, "guest"));
            (percent_decode(user)?, percent_decode(password)?, host_port)
        }
        None => ("guest".to_owned(), "guest".to_owned(), authority),
    };
    let default_port = if secure {
        DEFAULT_TLS_PORT
    } else {
        DEFAULT_PORT
    };
    let (host, port) = host_and_port(host_port, default_port)?;
    let mut arguments = OpenConnectionArguments::new(&host, port, &user, &password);
    let vhost = match percent_decode(vhost)? {
        vhost if vhost.is_empty() => "/".to_owned(),
        vhost => vhost,
    };
    arguments.virtual_host(&vhost);
    arguments.heartbeat(heartbeat(query)?);
    Ok((arguments, secure))
}

/// Keeps the brackets of an IPv6 host: amqprs connects to `host:port`.
fn host_and_port(host_port: &str, default_port: u16) -> Result<(String, u16), String> {
    let (host, port) = match host_port.rfind(':') {
        Some(colon) if !host_port[colon..].contains(']') => {
            (&host_port[..colon], &host_port[colon + 1..])
        }
        _ => (host_port, ""),
    };
    if host.is_empty() {
        return Err("the AMQP URL has no host".into());
    }
    let port = match port {
        "" => default_port,
        port => port
            .parse()
            .map_err(|_| "the port in the AMQP URL is not a number from 0 to 65535")?,
    };
    Ok((percent_decode(host)?, port))
}

/// Other query parameters of the URI spec do not apply to amqprs.
fn heartbeat(query: &str) -> Result<u16, String> {
    let mut heartbeat = DEFAULT_HEARTBEAT_SECS;
    for pair in query.split('&') {
        if let Some(("heartbeat", seconds)) = pair.split_once('=') {
            heartbeat = seconds
                .parse()
                .map_err(|_| "heartbeat in the AMQP URL is not a number of seconds")?;
        }
    }
    Ok(heartbeat)
}

fn percent_decode(text: &str) -> Result<String, String> {
    let mut decoded = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        if byte != b'%' {
            decoded.push(byte);
            continue;
        }
        let hex_digit = |digit: Option<u8>| digit.and_then(|digit| char::from(digit).to_digit(16));
        match (hex_digit(bytes.next()), hex_digit(bytes.next())) {
            // Two hex digits make at most 255.
            (Some(high), Some(low)) => decoded.push((high * 16 + low) as u8),
            _ => return Err("the AMQP URL has a % not followed by two hex digits".into()),
        }
    }
    String::from_utf8(decoded).map_err(|_| "the AMQP URL does not decode to UTF-8".into())
}

#[cfg(test)]
mod tests {
    use amqprs::security::SecurityCredentials;

    use super::*;

    #[test]
    fn parses_a_full_url() {
        let arguments =
            connection_arguments("amqp://bob:s%40cret@rabbit:5673/feed%2fprod").unwrap();
        assert_eq!(arguments.get_host(), "rabbit");
        assert_eq!(arguments.get_port(), 5673);
        assert_eq!(arguments.get_virtual_host(), "feed/prod");
        assert!(arguments.get_credentials() == &SecurityCredentials::new_plain("bob", "s@cret"));
        assert_eq!(arguments.get_heartbeat(), DEFAULT_HEARTBEAT_SECS);
    }

    #[test]
    fn defaults_port_vhost_and_user() {
        for url in ["amqp://rabbit", "amqp://rabbit/", "amqp://rabbit:/%2f"] {
            let arguments = connection_arguments(url).unwrap();
            assert_eq!(arguments.get_port(), DEFAULT_PORT, "{url}");
            assert_eq!(arguments.get_virtual_host(), "/", "{url}");
            assert!(
                arguments.get_credentials() == &SecurityCredentials::new_plain("guest", "guest")
            );
        }
    }

    #[test]
    fn keeps_ipv6_brackets_and_reads_heartbeat() {
        let arguments = connection_arguments("amqp://u:p@[::1]:5672/v?heartbeat=30&x=y").unwrap();
        assert_eq!(arguments.get_host(), "[::1]");
        assert_eq!(arguments.get_port(), 5672);
        assert_eq!(arguments.get_virtual_host(), "v");
        assert_eq!(arguments.get_heartbeat(), 30);
        assert_eq!(
            connection_arguments("amqp://[::1]").unwrap().get_port(),
            DEFAULT_PORT
        );
    }

    #[test]
    fn rejects_bad_urls_without_echoing_them() {
        for url in [
            "http://u:secret@rabbit/",
            "amqpx://u:secret@rabbit/",
            "amqp://u:secret@/",
            "amqp://u:secret@rabbit:99999/",
            "amqp://u:secret@rabbit/a/b",
            "amqp://u:secret@rabbit/%zz",
            "amqp://u:secret@rabbit/%f",
            "amqp://u:secret@rabbit/%ff",
            "amqp://u:secret@rabbit/?heartbeat=often",
        ] {
            let error = connection_arguments(url)
                .err()
                .unwrap_or_else(|| panic!("{url}"));
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn amqps_is_tls_on_port_5671() {
        let (arguments, secure) = parse("amqps://u:p@rabbit.example/v").unwrap();
        assert!(secure);
        assert_eq!(arguments.get_port(), DEFAULT_TLS_PORT);
        let (arguments, secure) = parse("amqps://u:p@rabbit.example:6671").unwrap();
        assert!(secure);
        assert_eq!(arguments.get_port(), 6671);
        assert!(!parse("amqp://rabbit").unwrap().1);
        assert!(check_list("amqp://one,amqps://two").is_ok());
        let tls = connection_arguments("amqps://u:p@[::1]/v").unwrap();
        assert!(tls.get_tls_adaptor().is_some());
        assert!(
            connection_arguments("amqp://u:p@[::1]/v")
                .unwrap()
                .get_tls_adaptor()
                .is_none()
        );
    }

    #[test]
    fn reads_a_comma_separated_list_in_order() {
        let list = connection_list("amqp://a:p@one:5671/v, amqp://two ,amqp://[::1]:5673").unwrap();
        let places: Vec<String> = list.iter().map(describe).collect();
        assert_eq!(places, ["one:5671", "two:5672", "[::1]:5673"]);
        assert_eq!(list[0].get_virtual_host(), "v");
        assert_eq!(list[1].get_virtual_host(), "/");
        assert_eq!(connection_list("amqp://solo").unwrap().len(), 1);
    }

    #[test]
    fn names_the_bad_url_of_a_list_by_position_only() {
        for (urls, position) in [
            ("amqp://u:secret@one,amqp://u:secret@two:port", "2 of 2"),
            ("amqp://u:secret@one,,amqp://u:secret@three", "2 of 3"),
            ("http://u:secret@one,amqp://u:secret@two", "1 of 2"),
            ("amqp://u:secret@one,", "2 of 2"),
        ] {
            let error = connection_list(urls).err().expect(position);
            assert!(error.contains(position), "{error}");
            assert!(!error.contains("secret"), "{error}");
        }
    }
}
