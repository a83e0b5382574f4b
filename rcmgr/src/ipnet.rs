//! IP networks (an address and a prefix length): the keys of the per-subnet counts and the
//! entries of the allowlist.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network, `1.2.3.0/24` or `2001:db8::/56`. The address is kept masked to its
/// prefix, so two values for the same network compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

/// A network that cannot be made: a prefix longer than the address or text that is not
/// `address/prefix`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpNetError {
    /// The prefix is longer than the address (32 bits for IPv4, 128 for IPv6).
    #[error("prefix /{prefix} is too long for {addr}")]
    PrefixTooLong {
        /// The address.
        addr: IpAddr,
        /// The prefix given.
        prefix: u8,
    },
    /// The text is not `address` or `address/prefix`.
    #[error("not an IP network: {0:?}")]
    Parse(String),
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) count as the IPv4 address they carry.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

impl IpNet {
    /// The network of `prefix` bits that contains `addr`.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, IpNetError> {
        let addr = canonical(addr);
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(IpNetError::PrefixTooLong { addr, prefix });
        }
        Ok(IpNet {
            addr: mask(addr, prefix),
            prefix,
        })
    }

    /// The network of `prefix` bits around `ip`, the prefix clamped to the address size.
    pub(crate) fn around(ip: IpAddr, prefix: u8) -> Self {
        let ip = canonical(ip);
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.min(max);
        IpNet {
            addr: mask(ip, prefix),
            prefix,
        }
    }

    /// The network's first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// True when `ip` lies in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        ip.is_ipv4() == self.addr.is_ipv4() && mask(ip, self.prefix) == self.addr
    }
}

fn mask(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for IpNet {
    type Err = IpNetError;

    /// `address/prefix`, or a bare address for a network of that one address.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || IpNetError::Parse(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| bad())?;
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().map_err(|_| bad())?,
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        IpNet::new(addr, prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_mask_and_contain() {
        let net: IpNet = "10.1.2.3/24".parse().unwrap();
        assert_eq!(net.to_string(), "10.1.2.0/24");
        assert!(net.contains(ip("10.1.2.200")));
        assert!(!net.contains(ip("10.1.3.1")));
        assert!(!net.contains(ip("::1")));
        let v6: IpNet = "2001:db8:aa:bb::1/56".parse().unwrap();
        assert_eq!(v6.to_string(), "2001:db8:aa::/56");
        assert!(v6.contains(ip("2001:db8:aa:ff::9")));
        assert!(!v6.contains(ip("2001:db8:ab::1")));
        assert_eq!(
            "127.0.0.1".parse::<IpNet>().unwrap(),
            IpNet::new(ip("127.0.0.1"), 32).unwrap()
        );
        assert!("0.0.0.0/0"
            .parse::<IpNet>()
            .unwrap()
            .contains(ip("8.8.8.8")));
    }

    #[test]
    fn mapped_addresses_count_as_ipv4() {
        let net: IpNet = "192.0.2.0/24".parse().unwrap();
        assert!(net.contains(ip("::ffff:192.0.2.7")));
        assert_eq!(IpNet::around(ip("::ffff:192.0.2.7"), 24), net);
    }

    #[test]
    fn bad_networks_are_errors() {
        assert!(matches!(
            "1.2.3.4/33".parse::<IpNet>(),
            Err(IpNetError::PrefixTooLong { .. })
        ));
        assert!(matches!(
            "::/129".parse::<IpNet>(),
            Err(IpNetError::PrefixTooLong { .. })
        ));
        for bad in ["", "1.2.3", "1.2.3.4/", "1.2.3.4/x", "host/8"] {
            assert!(
                matches!(bad.parse::<IpNet>(), Err(IpNetError::Parse(_))),
                "{bad}"
            );
        }
    }
}
