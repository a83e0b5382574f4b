//! Multiaddr helpers: socket addresses to and from multiaddrs, the `/p2p/<peer id>`
//! suffix, and DNS resolution of `/dns`, `/dns4` and `/dns6` addresses.

use std::net::{IpAddr, SocketAddr};

use multiaddr::{Multiaddr, Protocol};

use crate::error::AddrError;
use crate::identity::PeerId;

/// The transport-level shape of a multiaddr that Strata can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A literal IP address.
    Ip(IpAddr),
    /// A DNS name and which families it may resolve to.
    Dns(String, DnsFamily),
}

/// Which address families a `/dns*` component allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsFamily {
    /// `/dns`: either family.
    Any,
    /// `/dns4`: IPv4 only.
    V4,
    /// `/dns6`: IPv6 only.
    V6,
}

/// The protocol stack on top of the host part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// `/tcp/PORT`.
    Tcp,
    /// `/udp/PORT/quic-v1`.
    QuicV1,
}

/// A multiaddr split into its parts: host, port, stack and the optional peer ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAddr {
    /// IP or DNS name.
    pub host: Host,
    /// TCP or UDP port.
    pub port: u16,
    /// TCP or QUIC.
    pub stack: Stack,
    /// The `/p2p/<peer id>` suffix, when present.
    pub peer_id: Option<PeerId>,
}

/// Splits a multiaddr of the form `/ip4|ip6|dns|dns4|dns6/HOST/tcp/PORT[/p2p/ID]` or
/// `/ip4|ip6|dns|dns4|dns6/HOST/udp/PORT/quic-v1[/p2p/ID]`.
pub fn parse(addr: &Multiaddr) -> Result<ParsedAddr, AddrError> {
    let unsupported = |reason: &'static str| AddrError::Unsupported {
        addr: addr.clone(),
        reason,
    };
    let mut iter = addr.iter();
    let host = match iter.next() {
        Some(Protocol::Ip4(ip)) => Host::Ip(IpAddr::V4(ip)),
        Some(Protocol::Ip6(ip)) => Host::Ip(IpAddr::V6(ip)),
        Some(Protocol::Dns(name)) => Host::Dns(name.into_owned(), DnsFamily::Any),
        Some(Protocol::Dns4(name)) => Host::Dns(name.into_owned(), DnsFamily::V4),
        Some(Protocol::Dns6(name)) => Host::Dns(name.into_owned(), DnsFamily::V6),
        Some(_) => {
            return Err(unsupported(
                "expected /ip4, /ip6, /dns, /dns4 or /dns6 first",
            ))
        }
        None => return Err(unsupported("the multiaddr is empty")),
    };
    let (port, stack) = match iter.next() {
        Some(Protocol::Tcp(port)) => (port, Stack::Tcp),
        Some(Protocol::Udp(port)) => match iter.next() {
            Some(Protocol::QuicV1) => (port, Stack::QuicV1),
            _ => return Err(unsupported("/udp must be followed by /quic-v1")),
        },
        _ => {
            return Err(unsupported(
                "expected /tcp/PORT or /udp/PORT/quic-v1 after the host",
            ))
        }
    };
    let peer_id = match iter.next() {
        Some(Protocol::P2p(id)) => Some(id),
        None => None,
        Some(_) => {
            return Err(unsupported(
                "only a /p2p/<peer id> suffix may follow the port",
            ))
        }
    };
    if iter.next().is_some() {
        return Err(unsupported("nothing may follow the /p2p/<peer id> suffix"));
    }
    Ok(ParsedAddr {
        host,
        port,
        stack,
        peer_id,
    })
}

/// Parses an IP TCP multiaddr (`/ip4|ip6/HOST/tcp/PORT[/p2p/ID]`) into a socket address.
pub fn tcp_socket_addr(addr: &Multiaddr) -> Result<SocketAddr, AddrError> {
    socket_addr_of(addr, Stack::Tcp)
}

/// Parses an IP QUIC multiaddr (`/ip4|ip6/HOST/udp/PORT/quic-v1[/p2p/ID]`) into a socket address.
pub fn quic_socket_addr(addr: &Multiaddr) -> Result<SocketAddr, AddrError> {
    socket_addr_of(addr, Stack::QuicV1)
}

fn socket_addr_of(addr: &Multiaddr, want: Stack) -> Result<SocketAddr, AddrError> {
    let parsed = parse(addr)?;
    if parsed.stack != want {
        return Err(AddrError::Unsupported {
            addr: addr.clone(),
            reason: match want {
                Stack::Tcp => "not a TCP multiaddr",
                Stack::QuicV1 => "not a QUIC multiaddr",
            },
        });
    }
    match parsed.host {
        Host::Ip(ip) => Ok(SocketAddr::new(ip, parsed.port)),
        Host::Dns(..) => Err(AddrError::Unsupported {
            addr: addr.clone(),
            reason: "a DNS multiaddr must be resolved first",
        }),
    }
}

/// `/ip4|ip6/HOST/tcp/PORT` for a socket address.
pub fn tcp_multiaddr(addr: SocketAddr) -> Multiaddr {
    ip_multiaddr(addr.ip()).with(Protocol::Tcp(addr.port()))
}

/// `/ip4|ip6/HOST/udp/PORT/quic-v1` for a socket address.
pub fn quic_multiaddr(addr: SocketAddr) -> Multiaddr {
    ip_multiaddr(addr.ip())
        .with(Protocol::Udp(addr.port()))
        .with(Protocol::QuicV1)
}

fn ip_multiaddr(ip: IpAddr) -> Multiaddr {
    // An IPv4-mapped IPv6 address is the IPv4 peer it stands for.
    match ip {
        IpAddr::V4(v4) => Multiaddr::empty().with(Protocol::Ip4(v4)),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => Multiaddr::empty().with(Protocol::Ip4(v4)),
            None => Multiaddr::empty().with(Protocol::Ip6(v6)),
        },
    }
}

/// The peer ID of a trailing `/p2p/<peer id>` component, if any.
pub fn peer_id_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(id)) => Some(id),
        _ => None,
    }
}

/// The address without its trailing `/p2p/<peer id>` component.
pub fn without_peer_id(addr: &Multiaddr) -> Multiaddr {
    let mut addr = addr.clone();
    if let Some(Protocol::P2p(_)) = addr.iter().last() {
        addr.pop();
    }
    addr
}

/// The address with `/p2p/<peer>` appended; an address that already names the same peer is
/// returned as it is, one that names another peer is an error.
pub fn with_peer_id(addr: &Multiaddr, peer: PeerId) -> Result<Multiaddr, AddrError> {
    match peer_id_of(addr) {
        Some(existing) if existing == peer => Ok(addr.clone()),
        Some(existing) => Err(AddrError::PeerIdConflict {
            addr: addr.clone(),
            existing,
            wanted: peer,
        }),
        None => Ok(addr.clone().with(Protocol::P2p(peer))),
    }
}

/// True for a multiaddr whose host is a loopback IP.
pub fn is_loopback(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// Resolves the `/dns`, `/dns4` or `/dns6` host of a multiaddr with tokio's resolver and
/// returns one multiaddr per resolved IP (the rest of the address unchanged). A multiaddr
/// with an IP host is returned as it is.
pub async fn resolve(addr: &Multiaddr) -> Result<Vec<Multiaddr>, AddrError> {
    let parsed = parse(addr)?;
    let (name, family) = match &parsed.host {
        Host::Ip(_) => return Ok(vec![addr.clone()]),
        Host::Dns(name, family) => (name.clone(), *family),
    };
    let found = tokio::net::lookup_host((name.as_str(), parsed.port))
        .await
        .map_err(|source| AddrError::Resolve {
            addr: addr.clone(),
            source,
        })?;
    let mut out = Vec::new();
    for sock in found {
        let wanted = match family {
            DnsFamily::Any => true,
            DnsFamily::V4 => sock.is_ipv4(),
            DnsFamily::V6 => sock.is_ipv6(),
        };
        if !wanted {
            continue;
        }
        let mut resolved = match parsed.stack {
            Stack::Tcp => tcp_multiaddr(sock),
            Stack::QuicV1 => quic_multiaddr(sock),
        };
        if let Some(peer) = parsed.peer_id {
            resolved.push(Protocol::P2p(peer));
        }
        if !out.contains(&resolved) {
            out.push(resolved);
        }
    }
    if out.is_empty() {
        return Err(AddrError::Resolve {
            addr: addr.clone(),
            source: std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the name has no address of the requested family",
            ),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::keypair_from_seed;

    fn ma(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn socket_addr_round_trips() {
        let v4: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        assert_eq!(tcp_multiaddr(v4), ma("/ip4/127.0.0.1/tcp/4001"));
        assert_eq!(tcp_socket_addr(&tcp_multiaddr(v4)).unwrap(), v4);
        let v6: SocketAddr = "[::1]:4002".parse().unwrap();
        assert_eq!(quic_multiaddr(v6), ma("/ip6/::1/udp/4002/quic-v1"));
        assert_eq!(quic_socket_addr(&quic_multiaddr(v6)).unwrap(), v6);
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:5".parse().unwrap();
        assert_eq!(tcp_multiaddr(mapped), ma("/ip4/10.0.0.1/tcp/5"));
    }

    #[test]
    fn parse_reads_every_part() {
        let peer = keypair_from_seed(7).public().to_peer_id();
        let addr = ma(&format!("/dns4/example.com/udp/443/quic-v1/p2p/{peer}"));
        let parsed = parse(&addr).unwrap();
        assert_eq!(parsed.host, Host::Dns("example.com".into(), DnsFamily::V4));
        assert_eq!(parsed.port, 443);
        assert_eq!(parsed.stack, Stack::QuicV1);
        assert_eq!(parsed.peer_id, Some(peer));
    }

    #[test]
    fn p2p_suffix_helpers() {
        let peer = keypair_from_seed(1).public().to_peer_id();
        let other = keypair_from_seed(2).public().to_peer_id();
        let base = ma("/ip4/127.0.0.1/tcp/1");
        let full = with_peer_id(&base, peer).unwrap();
        assert_eq!(full.to_string(), format!("/ip4/127.0.0.1/tcp/1/p2p/{peer}"));
        assert_eq!(peer_id_of(&full), Some(peer));
        assert_eq!(peer_id_of(&base), None);
        assert_eq!(without_peer_id(&full), base);
        assert_eq!(without_peer_id(&base), base);
        assert_eq!(with_peer_id(&full, peer).unwrap(), full);
        assert!(matches!(
            with_peer_id(&full, other),
            Err(AddrError::PeerIdConflict { existing, wanted, .. }) if existing == peer && wanted == other
        ));
    }

    #[test]
    fn unsupported_multiaddrs_are_typed_errors() {
        for bad in [
            "/ip4/1.2.3.4",
            "/ip4/1.2.3.4/udp/1",
            "/ip4/1.2.3.4/udp/1/quic",
            "/memory/5",
            "/ip4/1.2.3.4/tcp/1/ws",
            "/unix/tmp%2Fsock",
        ] {
            let addr = ma(bad);
            match parse(&addr) {
                Err(AddrError::Unsupported { addr: got, .. }) => assert_eq!(got, addr),
                other => panic!("{bad}: expected Unsupported, got {other:?}"),
            }
        }
        assert!(parse(&Multiaddr::empty()).is_err());
        // A QUIC address is not a TCP one, and a DNS name is not a socket address.
        assert!(tcp_socket_addr(&ma("/ip4/1.2.3.4/udp/1/quic-v1")).is_err());
        assert!(tcp_socket_addr(&ma("/dns/localhost/tcp/1")).is_err());
    }

    #[test]
    fn garbage_text_does_not_parse() {
        assert!("not a multiaddr".parse::<Multiaddr>().is_err());
        assert!("/ip4/300.1.1.1/tcp/1".parse::<Multiaddr>().is_err());
        assert!("/ip4/1.1.1.1/tcp/70000".parse::<Multiaddr>().is_err());
    }

    #[tokio::test]
    async fn resolves_localhost_per_family() {
        let v4 = resolve(&ma("/dns4/localhost/tcp/80")).await.unwrap();
        assert!(!v4.is_empty());
        assert!(v4
            .iter()
            .all(|a| a.to_string().starts_with("/ip4/") && a.to_string().ends_with("/tcp/80")));
        let peer = keypair_from_seed(3).public().to_peer_id();
        let with_peer = resolve(&ma(&format!("/dns4/localhost/udp/9/quic-v1/p2p/{peer}")))
            .await
            .unwrap();
        assert!(with_peer.iter().all(|a| peer_id_of(a) == Some(peer)));
        let ip = ma("/ip4/127.0.0.1/tcp/1");
        assert_eq!(resolve(&ip).await.unwrap(), vec![ip]);
    }

    #[tokio::test]
    async fn unresolvable_name_is_a_typed_error() {
        let addr = ma("/dns4/no-such-host.invalid/tcp/1");
        assert!(
            matches!(resolve(&addr).await, Err(AddrError::Resolve { addr: a, .. }) if a == addr)
        );
    }
}
