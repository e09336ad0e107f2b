//! Address ranges (`10.4.0.0/16`, `fd00:10::/48`) over the `u128` address form, read from
//! configuration as text.

use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::ip::ip_to_u128;

/// A prefix of the `u128` address space (IPv4 prefixes are IPv4-mapped: length + 96).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    network: u128,
    len: u8,
}

impl Cidr {
    pub fn contains(&self, addr: u128) -> bool {
        self.len == 0 || (addr ^ self.network) >> (128 - self.len as u32) == 0
    }
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an address range: {0:?} (expected e.g. 10.4.0.0/16 or fd00::/48)")]
pub struct BadCidr(pub String);

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match crate::ip::as_v4(self.network) {
            Some(v4) if self.len >= 96 => {
                write!(f, "{}/{}", std::net::Ipv4Addr::from(v4), self.len - 96)
            }
            _ => write!(f, "{}/{}", std::net::Ipv6Addr::from(self.network), self.len),
        }
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadCidr(s.to_string());
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let ip: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let len = match (ip, len) {
            (IpAddr::V4(_), Some(l)) if l <= 32 => l + 96,
            (IpAddr::V4(_), None) => 128,
            (IpAddr::V6(_), Some(l)) if l <= 128 => l,
            (IpAddr::V6(_), None) => 128,
            _ => return Err(bad()),
        };
        let mask = if len == 0 {
            0
        } else {
            u128::MAX << (128 - len as u32)
        };
        Ok(Cidr {
            network: ip_to_u128(ip) & mask,
            len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::parse_ip;

    #[test]
    fn contains_both_families() {
        let v4: Cidr = "10.4.0.0/16".parse().unwrap();
        assert!(v4.contains(parse_ip("10.4.200.1").unwrap()));
        assert!(!v4.contains(parse_ip("10.5.0.1").unwrap()));
        assert!(
            !v4.contains(parse_ip("::a04:1").unwrap()),
            "an IPv6 address with the same low bits"
        );
        let v6: Cidr = "fd00:10:4::/48".parse().unwrap();
        assert!(v6.contains(parse_ip("fd00:10:4:2::5").unwrap()));
        assert!(!v6.contains(parse_ip("fd00:10:5::1").unwrap()));
        let host: Cidr = "192.168.10.11".parse().unwrap();
        assert!(host.contains(parse_ip("192.168.10.11").unwrap()));
        assert!("10.4.0.0/33".parse::<Cidr>().is_err());
        assert!("nonsense".parse::<Cidr>().is_err());
    }

    #[test]
    fn prints_as_it_is_written() {
        for text in [
            "10.4.0.0/16",
            "192.168.10.11/32",
            "fd00:10:4::/48",
            "0.0.0.0/0",
        ] {
            assert_eq!(text.parse::<Cidr>().unwrap().to_string(), text);
        }
    }
}
