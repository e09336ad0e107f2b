//! Addresses as `u128` (IPv4 held IPv4-mapped, `::ffff:a.b.c.d`) so one column type and one
//! sorted index serve both families, plus fast text conversion for the stored columns.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const V4_MAPPED_PREFIX: u128 = 0xffff_u128 << 32;
const V4_MAPPED_MASK: u128 = !0xffff_ffff_u128;

/// Packs an address into its `u128` form (IPv4 becomes IPv4-mapped).
#[inline]
pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => v4_to_u128(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Packs an IPv4 address given as a host-order `u32`.
#[inline]
pub fn v4_to_u128(v4: u32) -> u128 {
    V4_MAPPED_PREFIX | v4 as u128
}

/// The IPv4 address if `ip` is IPv4-mapped.
#[inline]
pub fn as_v4(ip: u128) -> Option<u32> {
    (ip & V4_MAPPED_MASK == V4_MAPPED_PREFIX).then_some(ip as u32)
}

/// Unpacks the `u128` form back into an address.
#[inline]
pub fn u128_to_ip(ip: u128) -> IpAddr {
    match as_v4(ip) {
        Some(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
        None => IpAddr::V6(Ipv6Addr::from(ip)),
    }
}

/// Appends the canonical text form of `ip` to `out`: dotted quad for IPv4 (from a table,
/// without `fmt`, which costs several times more on the ingest path), RFC 5952 for IPv6.
#[inline]
pub fn push_ip_text(out: &mut Vec<u8>, ip: u128) {
    match as_v4(ip) {
        Some(v4) => push_v4_text(out, v4),
        None => {
            use std::io::Write;
            let _ = write!(out, "{}", Ipv6Addr::from(ip));
        }
    }
}

/// The decimal text of every octet value, packed as (length, digits).
static OCTETS: [(u8, [u8; 3]); 256] = {
    let mut t = [(0u8, [0u8; 3]); 256];
    let mut i = 0;
    while i < 256 {
        let v = i as u8;
        t[i] = if v >= 100 {
            (3, [b'0' + v / 100, b'0' + (v / 10) % 10, b'0' + v % 10])
        } else if v >= 10 {
            (2, [b'0' + v / 10, b'0' + v % 10, 0])
        } else {
            (1, [b'0' + v, 0, 0])
        };
        i += 1;
    }
    t
};

#[inline]
fn push_v4_text(out: &mut Vec<u8>, v4: u32) {
    let [a, b, c, d] = v4.to_be_bytes();
    let mut buf = [0u8; 15];
    let mut n = 0;
    for (i, octet) in [a, b, c, d].into_iter().enumerate() {
        if i > 0 {
            buf[n] = b'.';
            n += 1;
        }
        let (len, digits) = OCTETS[octet as usize];
        buf[n..n + 3].copy_from_slice(&digits);
        n += len as usize;
    }
    out.extend_from_slice(&buf[..n]);
}

/// The text form of `ip` as a `String`.
pub fn ip_text(ip: u128) -> String {
    let mut v = Vec::with_capacity(15);
    push_ip_text(&mut v, ip);
    String::from_utf8(v).expect("address text is ASCII")
}

/// Parses the text form written by [`push_ip_text`] (or any standard address text).
pub fn parse_ip(text: &str) -> Option<u128> {
    // Stored flows are read back address by address (replay): the dotted quads Hawking
    // writes take a direct path; anything else is the standard library's to judge.
    if let Some(v4) = dotted_quad(text.as_bytes()) {
        return Some(v4_to_u128(v4));
    }
    text.trim().parse::<IpAddr>().ok().map(ip_to_u128)
}

/// `a.b.c.d` as Hawking writes it: four decimal octets of one to three digits, no leading
/// zeros (a text the standard parser reads the same way); `None` for anything else.
fn dotted_quad(text: &[u8]) -> Option<u32> {
    let mut value = 0u32;
    let mut parts = text.split(|b| *b == b'.');
    for _ in 0..4 {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || (part.len() > 1 && part[0] == b'0') {
            return None;
        }
        let mut octet = 0u32;
        for d in part {
            if !d.is_ascii_digit() {
                return None;
            }
            octet = octet * 10 + u32::from(d - b'0');
        }
        if octet > 255 {
            return None;
        }
        value = value << 8 | octet;
    }
    parts.next().is_none().then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_text_matches_std_for_edge_octets() {
        for ip in [
            "0.0.0.0",
            "10.4.3.7",
            "255.255.255.255",
            "100.9.10.99",
            "1.20.255.0",
        ] {
            let parsed: Ipv4Addr = ip.parse().unwrap();
            assert_eq!(ip_text(v4_to_u128(u32::from(parsed))), ip);
        }
    }

    #[test]
    fn address_text_parses_as_the_standard_library_reads_it() {
        let texts = [
            "0.0.0.0",
            "10.4.3.7",
            "255.255.255.255",
            "1.20.255.0",
            " 10.1.2.3 ",
            "256.1.1.1",
            "1.2.3",
            "1.2.3.4.5",
            "01.2.3.4",
            "1.2.3.04",
            "1..2.3",
            "1.2.3.",
            ".1.2.3",
            "a.b.c.d",
            "1.2.3.4a",
            "1.2.3.1000",
            "",
            "::",
            "::ffff:10.1.2.3",
            "2001:db8::1",
            "fe80::1%eth0",
        ];
        for t in texts {
            let std = t.trim().parse::<IpAddr>().ok().map(ip_to_u128);
            assert_eq!(parse_ip(t), std, "{t:?}");
        }
        for o in 0..=255u32 {
            let t = format!("{o}.{o}.0.{o}");
            assert_eq!(parse_ip(&t), Some(v4_to_u128(o << 24 | o << 16 | o)), "{t}");
        }
    }

    #[test]
    fn v6_round_trips_and_is_not_mistaken_for_v4() {
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let packed = ip_to_u128(ip);
        assert_eq!(as_v4(packed), None);
        assert_eq!(u128_to_ip(packed), ip);
        let s = ip_text(packed);
        assert_eq!(s, "2001:db8::1");
        assert_eq!(parse_ip(&s), Some(packed));
    }

    #[test]
    fn every_v4_octet_formats_like_std() {
        for o in 0..=255u32 {
            let v4 = o << 24 | o << 16 | (255 - o) << 8 | o;
            assert_eq!(ip_text(v4_to_u128(v4)), Ipv4Addr::from(v4).to_string());
        }
    }

    #[test]
    fn v4_round_trips_through_mapped_form() {
        let ip: IpAddr = "192.168.1.200".parse().unwrap();
        assert_eq!(u128_to_ip(ip_to_u128(ip)), ip);
    }
}
