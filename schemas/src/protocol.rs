//! IP protocol numbers as flows carry them, and the names people type for them.

/// Protocols whose packets carry ports (TCP, UDP, DCCP, SCTP, UDP-Lite): only their flows and
/// NAT translations can be told apart by port.
pub const WITH_PORTS: [u8; 5] = [6, 17, 33, 132, 136];

/// Whether packets of `protocol` carry source and destination ports.
#[inline]
pub fn has_ports(protocol: u8) -> bool {
    matches!(protocol, 6 | 17 | 33 | 132 | 136)
}

/// The lower-case name of a protocol with ports that Kubernetes can declare (`tcp`, `udp`,
/// `sctp`), as in host-network pods' declared ports.
pub fn port_protocol_name(protocol: u8) -> Option<&'static str> {
    match protocol {
        6 => Some("tcp"),
        17 => Some("udp"),
        132 => Some("sctp"),
        _ => None,
    }
}

/// A protocol given as a name (`tcp`, `udp`, `sctp`, any case) or a number (`0`-`255`).
pub fn parse_protocol(text: &str) -> Option<u8> {
    let text = text.trim();
    match text.to_ascii_lowercase().as_str() {
        "tcp" => Some(6),
        "udp" => Some(17),
        "sctp" => Some(132),
        _ => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_agree() {
        for p in [6, 17, 132] {
            let name = port_protocol_name(p).unwrap();
            assert_eq!(parse_protocol(name), Some(p));
            assert_eq!(parse_protocol(&name.to_ascii_uppercase()), Some(p));
            assert!(has_ports(p));
        }
        assert_eq!(parse_protocol("47"), Some(47));
        assert_eq!(parse_protocol("icmp"), None);
        assert_eq!(parse_protocol("256"), None);
        assert!(!has_ports(1) && !has_ports(58));
        assert!(WITH_PORTS.iter().all(|p| has_ports(*p)));
    }
}
