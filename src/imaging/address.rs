//! Which IP addresses a reference URL may be fetched from (SSRF protection). Only globally
//! routable unicast addresses pass; IPv6 forms that embed an IPv4 address are judged by it.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// True when `ip` is a globally routable unicast address that is not a known cloud metadata
/// endpoint. Loopback, private, link-local, unique-local, CGNAT, multicast, broadcast,
/// unspecified, documentation, benchmarking and reserved ranges are not public; IPv4-mapped,
/// IPv4-compatible, NAT64, 6to4 and Teredo addresses are judged by the IPv4 address they embed.
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

/// `(network, prefix length)` ranges of IPv4 that are never fetched from.
const BLOCKED_V4: &[([u8; 4], u8)] = &[
    ([0, 0, 0, 0], 8),       // "this network"
    ([10, 0, 0, 0], 8),      // private
    ([100, 64, 0, 0], 10),   // CGNAT (also Alibaba's metadata 100.100.100.200)
    ([127, 0, 0, 0], 8),     // loopback
    ([169, 254, 0, 0], 16),  // link-local (also the 169.254.169.254 metadata service)
    ([172, 16, 0, 0], 12),   // private
    ([192, 0, 0, 0], 24),    // IETF protocol assignments
    ([192, 0, 2, 0], 24),    // documentation TEST-NET-1
    ([192, 88, 99, 0], 24),  // 6to4 relay anycast
    ([192, 168, 0, 0], 16),  // private
    ([198, 18, 0, 0], 15),   // benchmarking
    ([198, 51, 100, 0], 24), // documentation TEST-NET-2
    ([203, 0, 113, 0], 24),  // documentation TEST-NET-3
    ([224, 0, 0, 0], 4),     // multicast
    ([240, 0, 0, 0], 4),     // reserved, including broadcast 255.255.255.255
];

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    !BLOCKED_V4.iter().any(|&(network, prefix)| {
        let mask = u32::MAX << (32 - u32::from(prefix));
        bits & mask == u32::from(Ipv4Addr::from(network)) & mask
    })
}

/// `(network, prefix length)` ranges inside 2000::/3 (global unicast) that are not public.
const BLOCKED_V6_GLOBAL: &[(u128, u8)] = &[
    (0x2001_0002_0000 << 80, 48), // 2001:2::/48 benchmarking
    (0x2001_0010 << 96, 28),      // 2001:10::/28 ORCHID
    (0x2001_0020 << 96, 28),      // 2001:20::/28 ORCHIDv2
    (0x2001_0db8 << 96, 32),      // 2001:db8::/32 documentation
    (0x3fff << 112, 20),          // 3fff::/20 documentation
];

fn in_v6_range(bits: u128, network: u128, prefix: u8) -> bool {
    let mask = u128::MAX << (128 - u32::from(prefix));
    bits & mask == network & mask
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let bits = u128::from(ip);
    let low_v4 = Ipv4Addr::from(bits as u32);
    // ::/96 (IPv4-compatible, including :: and ::1) and ::ffff:0:0/96 (IPv4-mapped).
    if bits >> 32 == 0 || bits >> 32 == 0xffff {
        return is_public_v4(low_v4);
    }
    // 64:ff9b::/96 well-known NAT64 prefix: the host is the embedded IPv4 address.
    if in_v6_range(bits, 0x0064_ff9b << 96, 96) {
        return is_public_v4(low_v4);
    }
    // Only 2000::/3 is global unicast; everything else (fc00::/7 unique-local including the
    // fd00:ec2::254 metadata service, fe80::/10 link-local, ff00::/8 multicast, 64:ff9b:1::/48
    // local NAT64, 100::/64 discard, ...) is refused.
    if !in_v6_range(bits, 0x2 << 124, 3) {
        return false;
    }
    if BLOCKED_V6_GLOBAL
        .iter()
        .any(|&(network, prefix)| in_v6_range(bits, network, prefix))
    {
        return false;
    }
    // 2002::/16 6to4: bits 16..48 are the IPv4 address of the site.
    if in_v6_range(bits, 0x2002 << 112, 16) {
        return is_public_v4(Ipv4Addr::from((bits >> 80) as u32));
    }
    // 2001::/32 Teredo: bits 32..64 are the server, the last 32 bits the client's IPv4 address
    // with every bit inverted.
    if in_v6_range(bits, 0x2001 << 112, 32) {
        let server = Ipv4Addr::from((bits >> 64) as u32);
        let client = Ipv4Addr::from(!(bits as u32));
        return is_public_v4(server) && is_public_v4(client);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(table: &[(&str, bool)]) {
        for &(text, public) in table {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(is_public_address(ip), public, "{text}");
        }
    }

    #[test]
    fn ipv4_table() {
        check(&[
            ("8.8.8.8", true),
            ("1.1.1.1", true),
            ("93.184.216.34", true),
            ("100.63.255.255", true),
            ("100.128.0.0", true),
            ("172.15.255.255", true),
            ("172.32.0.0", true),
            ("198.17.255.255", true),
            ("198.20.0.0", true),
            ("223.255.255.255", true),
            ("0.0.0.0", false),
            ("0.1.2.3", false),
            ("10.0.0.1", false),
            ("10.255.255.255", false),
            ("100.64.0.1", false),
            ("100.127.255.255", false),
            ("100.100.100.200", false),
            ("127.0.0.1", false),
            ("127.255.255.254", false),
            ("169.254.0.1", false),
            ("169.254.169.254", false),
            ("172.16.0.1", false),
            ("172.31.255.255", false),
            ("192.0.0.8", false),
            ("192.0.2.1", false),
            ("192.88.99.1", false),
            ("192.168.1.1", false),
            ("198.18.0.1", false),
            ("198.19.255.255", false),
            ("198.51.100.7", false),
            ("203.0.113.9", false),
            ("224.0.0.1", false),
            ("239.255.255.250", false),
            ("240.0.0.1", false),
            ("255.255.255.255", false),
        ]);
    }

    #[test]
    fn ipv6_table() {
        check(&[
            ("2606:4700:4700::1111", true),
            ("2001:4860:4860::8888", true),
            ("2a00:1450:4001:82a::200e", true),
            ("::", false),
            ("::1", false),
            ("fe80::1", false),
            ("febf::1", false),
            ("fec0::1", false),
            ("fc00::1", false),
            ("fd12:3456:789a::1", false),
            ("fd00:ec2::254", false),
            ("ff02::1", false),
            ("ff0e::1", false),
            ("2001:db8::1", false),
            ("2001:db8:ffff::1", false),
            ("3fff::1", false),
            ("2001:2::1", false),
            ("2001:10::1", false),
            ("2001:20::1", false),
            ("100::1", false),
            ("64:ff9b:1::1", false),
            ("4000::1", false),
        ]);
    }

    #[test]
    fn ipv6_embedding_ipv4_is_judged_by_the_ipv4_address() {
        check(&[
            // IPv4-mapped
            ("::ffff:127.0.0.1", false),
            ("::ffff:10.1.2.3", false),
            ("::ffff:169.254.169.254", false),
            ("::ffff:8.8.8.8", true),
            // IPv4-compatible (deprecated)
            ("::127.0.0.1", false),
            ("::192.168.0.1", false),
            ("::8.8.8.8", true),
            // NAT64 well-known prefix
            ("64:ff9b::7f00:1", false),
            ("64:ff9b::a9fe:a9fe", false),
            ("64:ff9b::808:808", true),
            // 6to4: 2002:AABB:CCDD::/48 embeds AA.BB.CC.DD
            ("2002:7f00:1::1", false),
            ("2002:c0a8:101::1", false),
            ("2002:808:808::1", true),
            // Teredo: server 65.54.227.120 (public); the client is the inverted last 32 bits
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", true), // client 8.8.8.8
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", false), // client 127.0.0.1
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", false), // client 192.0.2.45 (RFC 4380 example)
            ("2001:0:a00:1:8000:63bf:f7f7:f7f7", false),    // server 10.0.0.1
        ]);
    }

    /// Every range issue 7 names (private, link-local, metadata, unspecified, CGNAT, ULA,
    /// multicast, loopback), and each IPv4 one again in its IPv4-mapped, IPv4-compatible and
    /// NAT64 IPv6 spellings.
    #[test]
    fn every_named_range_is_refused_in_every_spelling() {
        let v4_refused = [
            "10.0.0.1",        // private
            "172.16.5.4",      // private
            "192.168.0.1",     // private
            "169.254.1.1",     // link-local
            "169.254.169.254", // AWS/GCP/Azure metadata
            "100.100.100.200", // Alibaba metadata (CGNAT range)
            "0.0.0.0",         // unspecified
            "100.64.0.1",      // CGNAT
            "100.127.255.254", // CGNAT
            "127.0.0.1",       // loopback
            "224.0.0.251",     // multicast
            "239.1.2.3",       // multicast
            "255.255.255.255", // broadcast
        ];
        for text in v4_refused {
            let v4: Ipv4Addr = text.parse().unwrap();
            let [a, b, c, d] = v4.octets();
            let spellings = [
                IpAddr::V4(v4),
                IpAddr::V6(v4.to_ipv6_mapped()),
                IpAddr::V6(v4.to_ipv6_compatible()),
                IpAddr::V6(Ipv6Addr::new(
                    0x64,
                    0xff9b,
                    0,
                    0,
                    0,
                    0,
                    u16::from_be_bytes([a, b]),
                    u16::from_be_bytes([c, d]),
                )),
            ];
            for ip in spellings {
                assert!(!is_public_address(ip), "{ip} ({text}) must be refused");
            }
        }
        let v6_refused = [
            "::",      // unspecified
            "::1",     // loopback
            "fe80::1", // link-local
            "fe80::a9fe:a9fe",
            "fc00::1",       // unique-local
            "fdff:ffff::1",  // unique-local
            "fd00:ec2::254", // AWS metadata over IPv6
            "ff02::1",       // multicast
            "ff05::1:3",     // multicast
        ];
        for text in v6_refused {
            let ip: IpAddr = text.parse().unwrap();
            assert!(!is_public_address(ip), "{text} must be refused");
        }
        let public = IpAddr::V6(
            "93.184.216.34"
                .parse::<Ipv4Addr>()
                .unwrap()
                .to_ipv6_mapped(),
        );
        assert!(is_public_address(public), "a mapped public address passes");
    }
}
