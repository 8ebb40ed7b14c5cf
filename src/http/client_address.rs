//! The client's address, which sessions record and rate limits key on.
//!
//! A forwarding header is believed only from a trusted proxy (`TRUSTED_PROXIES`), and then read
//! the way RFC 7239 § 7.4 and MDN's X-Forwarded-For "selecting an IP address" describe: from
//! the right, skipping trusted proxies. The first hop that is not a trusted proxy is the client.
//! Everything left of it could have been written by the client itself, so it is never read. A
//! hop that does not parse (`unknown`, an obfuscated identifier, garbage) ends the walk at the
//! last address a trusted proxy vouched for: a client cannot pick an identity by sending junk.
//!
//! The forms proxies write are all read: `203.0.113.5`, `203.0.113.5:51234`, `2001:db8::1`,
//! `[2001:db8::1]`, `[2001:db8::1]:4711`, quoted, over several headers in order. RFC 7239
//! `Forwarded: for=...` is used when present, `X-Forwarded-For` otherwise. Equivalent spellings
//! become one address (an IPv4-mapped IPv6 address is its IPv4 address; IPv6 is kept in its
//! canonical form by `IpAddr`'s `Display`).

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, header};
use ipnet::IpNet;

/// The client's address for a connection from `peer` carrying `headers`.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted_proxies: &[IpNet]) -> IpAddr {
    let trusted = |ip: &IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    let mut vouched = peer.to_canonical();
    if !trusted(&vouched) {
        return vouched;
    }
    let hops = forwarded_hops(headers);
    for hop in hops.iter().rev() {
        match parse_hop(hop) {
            Some(ip) if trusted(&ip) => vouched = ip,
            Some(ip) => return ip,
            None => return vouched,
        }
    }
    vouched
}

/// The `for` hops, left to right: from `Forwarded` (RFC 7239) when the request has one, else
/// from `X-Forwarded-For`; several headers are read in order, as one list.
fn forwarded_hops(headers: &HeaderMap) -> Vec<String> {
    let values = |name| {
        headers
            .get_all(name)
            .iter()
            .map(|value| value.to_str().unwrap_or("\u{0}").to_owned())
            .collect::<Vec<_>>()
    };
    let forwarded = values(header::FORWARDED);
    if !forwarded.is_empty() {
        return forwarded
            .iter()
            .flat_map(|value| value.split(','))
            .map(|element| {
                element
                    .split(';')
                    .filter_map(|pair| pair.split_once('='))
                    .find(|(name, _)| name.trim().eq_ignore_ascii_case("for"))
                    .map_or_else(String::new, |(_, value)| value.trim().to_owned())
            })
            .collect();
    }
    values(header::HeaderName::from_static("x-forwarded-for"))
        .iter()
        .flat_map(|value| value.split(','))
        .map(|hop| hop.trim().to_owned())
        .collect()
}

/// One hop as proxies write it, or `None` when it names no address.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    let ip = if let Some(rest) = hop.strip_prefix('[') {
        // [v6] or [v6]:port
        let (inside, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        inside.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)?
    } else if let Ok(ip) = hop.parse::<IpAddr>() {
        ip
    } else {
        // v4:port (a bare v6 with a port must be bracketed)
        hop.parse::<SocketAddr>()
            .ok()
            .filter(SocketAddr::is_ipv4)
            .map(|address| address.ip())?
    };
    Some(ip.to_canonical())
}

fn is_port(text: &str) -> bool {
    !text.is_empty() && text.len() <= 5 && text.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn with(name: &'static str, values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn every_form_proxies_write_is_read() {
        for (hop, expected) in [
            ("203.0.113.5", "203.0.113.5"),
            ("203.0.113.5:51234", "203.0.113.5"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:4711", "2001:db8::1"),
            ("\"[2001:DB8:0:0::1]:4711\"", "2001:db8::1"),
            ("::ffff:203.0.113.5", "203.0.113.5"),
        ] {
            assert_eq!(parse_hop(hop), Some(ip(expected)), "{hop}");
        }
        for junk in [
            "x",
            "unknown",
            "_hidden",
            "[2001:db8::1",
            "1.2.3.4:port",
            "[::1]:99999999",
        ] {
            assert_eq!(parse_hop(junk), None, "{junk}");
        }
    }

    #[test]
    fn the_walk_goes_from_the_right_and_stops_at_junk() {
        let proxy: Vec<IpNet> = vec![
            "127.0.0.1/32".parse().unwrap(),
            "10.0.0.0/8".parse().unwrap(),
        ];
        let peer = ip("127.0.0.1");
        let client = |headers: HeaderMap| client_ip(peer, &headers, &proxy);
        // The client wrote everything left of the last untrusted hop.
        assert_eq!(
            client(with("x-forwarded-for", &["6.6.6.6, x, 203.0.113.50"])),
            ip("203.0.113.50")
        );
        assert_eq!(
            client(with(
                "x-forwarded-for",
                &["6.6.6.6, 203.0.113.50, 10.1.2.3"]
            )),
            ip("203.0.113.50")
        );
        // Junk where the client would be: the proxy's own address, the same for everyone.
        assert_eq!(client(with("x-forwarded-for", &["203.0.113.50, x"])), peer);
        assert_eq!(
            client(with("x-forwarded-for", &["203.0.113.50, junk, 10.1.2.3"])),
            ip("10.1.2.3")
        );
        // Several headers are one list, in order.
        assert_eq!(
            client(with("x-forwarded-for", &["6.6.6.6", "203.0.113.7:443"])),
            ip("203.0.113.7")
        );
        // RFC 7239.
        assert_eq!(
            client(with(
                "forwarded",
                &["for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https"]
            )),
            ip("2001:db8::7")
        );
        // Untrusted peers are never believed.
        let headers = with("x-forwarded-for", &["203.0.113.50"]);
        assert_eq!(client_ip(ip("9.9.9.9"), &headers, &proxy), ip("9.9.9.9"));
    }
}
