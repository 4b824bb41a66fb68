//! Who the client is, by address: the TCP peer, or, when the peer is a
//! trusted proxy (nginx), the address that proxy reports. A header from
//! anyone else is ignored, so a client cannot pick its own address to
//! escape a rate limit.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use hyper::http::request::Parts;

/// The TCP peer of a request, put in its extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// An address or a CIDR block, e.g. `10.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    address: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        match (self.address, address) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_matches(u32::from(net).into(), u32::from(ip).into(), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_matches(net.into(), ip.into(), 128, self.prefix)
            }
            _ => false,
        }
    }
}

fn prefix_matches(net: u128, ip: u128, bits: u8, prefix: u8) -> bool {
    let host_bits = u32::from(bits - prefix);
    net.checked_shr(host_bits).unwrap_or(0) == ip.checked_shr(host_bits).unwrap_or(0)
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's view) as IPv4.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

impl FromStr for IpNet {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let (address, prefix) = match raw.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (raw, None),
        };
        let address = canonical(
            address
                .trim()
                .parse::<IpAddr>()
                .map_err(|_| format!("{raw:?} is not an IP address or a CIDR block"))?,
        );
        let bits = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(prefix) => prefix
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|prefix| *prefix <= bits)
                .ok_or_else(|| format!("{raw:?}: the prefix must be 0 to {bits}"))?,
        };
        Ok(Self { address, prefix })
    }
}

/// The client's address: the peer's, unless the peer is in `trusted`, in
/// which case the proxy's `X-Real-IP`, else the last `X-Forwarded-For` entry
/// (the one the proxy appended).
pub fn client_address(parts: &Parts, trusted: &[IpNet]) -> Option<IpAddr> {
    let peer = canonical(parts.extensions.get::<Peer>()?.0.ip());
    if !trusted.iter().any(|net| net.contains(peer)) {
        return Some(peer);
    }
    let header = |name: &str| -> Option<IpAddr> {
        let value = parts
            .headers
            .get_all(name)
            .iter()
            .next_back()?
            .to_str()
            .ok()?;
        value.rsplit(',').next()?.trim().parse().ok().map(canonical)
    };
    Some(
        header("x-real-ip")
            .or_else(|| header("x-forwarded-for"))
            .unwrap_or(peer),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(peer: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = hyper::Request::builder();
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let (mut parts, ()) = builder.body(()).unwrap().into_parts();
        parts.extensions.insert(Peer(peer.parse().unwrap()));
        parts
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|net| net.parse().unwrap()).collect()
    }

    #[test]
    fn parses_addresses_and_blocks() {
        let loopback: IpNet = "127.0.0.0/8".parse().unwrap();
        assert!(loopback.contains("127.1.2.3".parse().unwrap()));
        assert!(loopback.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!loopback.contains("128.0.0.1".parse().unwrap()));
        let one: IpNet = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("203.0.113.9".parse().unwrap()));
        for bad in ["nginx", "10.0.0.0/33", "::/129", "10.0.0.0/x"] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn believes_forwarding_headers_from_trusted_proxies_only() {
        let trusted = nets(&["127.0.0.0/8", "::1"]);
        let forwarded = [
            ("x-forwarded-for", "10.9.9.9, 198.51.100.7"),
            ("x-real-ip", "198.51.100.7"),
        ];
        let via_proxy = request("127.0.0.1:4000", &forwarded);
        assert_eq!(
            client_address(&via_proxy, &trusted),
            Some("198.51.100.7".parse().unwrap())
        );
        let only_xff = request("[::1]:4000", &forwarded[..1]);
        assert_eq!(
            client_address(&only_xff, &trusted),
            Some("198.51.100.7".parse().unwrap())
        );
        let direct = request("203.0.113.5:4000", &forwarded);
        assert_eq!(
            client_address(&direct, &trusted),
            Some("203.0.113.5".parse().unwrap())
        );
        let garbage = request("127.0.0.1:4000", &[("x-real-ip", "nonsense")]);
        assert_eq!(
            client_address(&garbage, &trusted),
            Some("127.0.0.1".parse().unwrap())
        );
    }
}
