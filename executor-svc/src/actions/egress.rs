//! The egress guard (DESIGN §5.2): actions may reach the public internet, and nothing
//! else unless the operator allow-lists a network. Loopback, private, shared, link-local,
//! unique-local, multicast, broadcast, unspecified, reserved, documentation and
//! benchmarking ranges, cloud metadata addresses, and IPv6 forms that embed such an IPv4
//! address (mapped, compatible, NAT64, 6to4) are refused. This module decides about one
//! address; the HTTP client applies it to literals, to every resolved address at connect
//! time and to every redirect hop.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Why an address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "egress to {address} refused: {reason}; allow its network in the executor's egress configuration to permit it"
)]
pub struct EgressRefusal {
    /// The address (or host) refused.
    pub address: String,
    /// Which kind of destination it is.
    pub reason: String,
}

/// The guard: the refused ranges, minus the operator's allow-list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
}

impl EgressPolicy {
    /// A guard that lets these networks through.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// The networks let through.
    pub fn allowed(&self) -> &[IpNet] {
        &self.allow
    }

    /// Whether `ip` may be reached.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), EgressRefusal> {
        let embedded = embedded_ipv4(ip).map(IpAddr::V4);
        let allowed = |a: IpAddr| self.allow.iter().any(|net| net.contains(&a));
        if allowed(ip) || embedded.is_some_and(allowed) {
            return Ok(());
        }
        match refusal_reason(ip) {
            None => Ok(()),
            Some(reason) => Err(EgressRefusal {
                address: ip.to_string(),
                reason,
            }),
        }
    }

    /// Whether a URL's host may be reached, when it is an IP literal (names are checked
    /// when they are resolved, at connect time).
    pub fn check_url(&self, url: &url::Url) -> Result<(), EgressRefusal> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_ip(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_ip(IpAddr::V6(ip)),
            Some(url::Host::Domain(_)) | None => Ok(()),
        }
    }

    /// The addresses a name resolved to that may be reached, in their order and without
    /// repeats; refused when there is none. The connection is then made to exactly these
    /// addresses, so a name that resolves differently later (DNS rebinding) gains nothing.
    pub fn check_resolved(
        &self,
        host: &str,
        addresses: impl IntoIterator<Item = IpAddr>,
    ) -> Result<Vec<IpAddr>, EgressRefusal> {
        let mut allowed = Vec::new();
        let mut refused = Vec::new();
        for ip in addresses {
            if allowed.contains(&ip)
                || refused
                    .iter()
                    .any(|r: &EgressRefusal| r.address == ip.to_string())
            {
                continue;
            }
            match self.check_ip(ip) {
                Ok(()) => allowed.push(ip),
                Err(refusal) => refused.push(refusal),
            }
        }
        if !allowed.is_empty() {
            for r in &refused {
                tracing::warn!(host, address = %r.address, reason = %r.reason, "egress guard dropped a resolved address");
            }
            return Ok(allowed);
        }
        let reason = if refused.is_empty() {
            "it resolves to no address".to_owned()
        } else {
            let each: Vec<String> = refused
                .iter()
                .map(|r| format!("{} is {}", r.address, r.reason))
                .collect();
            format!(
                "it resolves only to refused addresses ({})",
                each.join(", ")
            )
        };
        Err(EgressRefusal {
            address: host.to_owned(),
            reason,
        })
    }
}

/// The IPv4 address an IPv6 address carries: mapped (`::ffff:a.b.c.d`), compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) or 6to4 (`2002:aabb:ccdd::`).
pub fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        [0, 0, 0, 0, 0, 0, hi, _] if hi != 0 => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, a, b, ..] => Some(Ipv4Addr::new(
            (a >> 8) as u8,
            a as u8,
            (b >> 8) as u8,
            b as u8,
        )),
        _ => None,
    }
}

/// Why an address is not a public destination, or `None` when it is.
pub fn refusal_reason(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => v4_reason(v4).map(str::to_owned),
        IpAddr::V6(v6) => {
            if let Some(v4) = embedded_ipv4(ip) {
                let form = match v6.segments()[0] {
                    0x64 => "NAT64",
                    0x2002 => "6to4",
                    _ if v6.segments()[5] == 0xffff => "IPv4-mapped",
                    _ => "IPv4-compatible",
                };
                return v4_reason(v4).map(|r| format!("{form} form of {v4}, which is {r}"));
            }
            v6_reason(v6).map(str::to_owned)
        }
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], prefix: u8) -> bool {
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    const RANGES: &[([u8; 4], u8, &str)] = &[
        ([255, 255, 255, 255], 32, "the broadcast address"),
        ([169, 254, 169, 254], 32, "a cloud metadata address"),
        ([100, 100, 100, 200], 32, "a cloud metadata address"),
        ([0, 0, 0, 0], 8, "unspecified (\"this network\", 0.0.0.0/8)"),
        ([10, 0, 0, 0], 8, "private (10.0.0.0/8)"),
        ([100, 64, 0, 0], 10, "shared address space (100.64.0.0/10)"),
        ([127, 0, 0, 0], 8, "loopback (127.0.0.0/8)"),
        ([169, 254, 0, 0], 16, "link-local (169.254.0.0/16)"),
        ([172, 16, 0, 0], 12, "private (172.16.0.0/12)"),
        (
            [192, 0, 0, 0],
            24,
            "IETF protocol assignments (192.0.0.0/24)",
        ),
        ([192, 0, 2, 0], 24, "documentation (192.0.2.0/24)"),
        ([192, 88, 99, 0], 24, "6to4 relay anycast (192.88.99.0/24)"),
        ([192, 168, 0, 0], 16, "private (192.168.0.0/16)"),
        ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15)"),
        ([198, 51, 100, 0], 24, "documentation (198.51.100.0/24)"),
        ([203, 0, 113, 0], 24, "documentation (203.0.113.0/24)"),
        ([224, 0, 0, 0], 4, "multicast (224.0.0.0/4)"),
        ([240, 0, 0, 0], 4, "reserved (240.0.0.0/4)"),
    ];
    RANGES
        .iter()
        .find(|(net, prefix, _)| in_v4(ip, *net, *prefix))
        .map(|(_, _, reason)| *reason)
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    let in_net = |net: u128, prefix: u32| {
        let mask = if prefix == 0 {
            0
        } else {
            u128::MAX << (128 - prefix)
        };
        bits & mask == net & mask
    };
    const RANGES: &[(u128, u32, &str)] = &[
        (0, 128, "unspecified (::)"),
        (1, 128, "loopback (::1)"),
        (
            0xfd00_0ec2_0000_0000_0000_0000_0000_0254,
            128,
            "a cloud metadata address",
        ),
        (
            0x0064_ff9b_0001_0000_0000_0000_0000_0000,
            48,
            "local-use NAT64 (64:ff9b:1::/48)",
        ),
        (
            0x0100_0000_0000_0000_0000_0000_0000_0000,
            64,
            "discard-only (100::/64)",
        ),
        (
            0x2001_0db8_0000_0000_0000_0000_0000_0000,
            32,
            "documentation (2001:db8::/32)",
        ),
        (
            0x2001_0000_0000_0000_0000_0000_0000_0000,
            23,
            "IETF protocol assignments, Teredo included (2001::/23)",
        ),
        (
            0x3fff_0000_0000_0000_0000_0000_0000_0000,
            20,
            "documentation (3fff::/20)",
        ),
        (
            0xfc00_0000_0000_0000_0000_0000_0000_0000,
            7,
            "unique-local (fc00::/7)",
        ),
        (
            0xfe80_0000_0000_0000_0000_0000_0000_0000,
            10,
            "link-local (fe80::/10)",
        ),
        (
            0xfec0_0000_0000_0000_0000_0000_0000_0000,
            10,
            "site-local (fec0::/10)",
        ),
        (
            0xff00_0000_0000_0000_0000_0000_0000_0000,
            8,
            "multicast (ff00::/8)",
        ),
    ];
    if let Some((_, _, reason)) = RANGES.iter().find(|(net, prefix, _)| in_net(*net, *prefix)) {
        return Some(reason);
    }
    // Only 2000::/3 is global unicast; everything else is unassigned or special.
    (!in_net(0x2000_0000_0000_0000_0000_0000_0000_0000, 3))
        .then_some("outside global unicast (2000::/3)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(policy: &EgressPolicy, address: &str) -> Result<(), String> {
        let ip: IpAddr = address.parse().unwrap();
        policy.check_ip(ip).map_err(|r| r.reason)
    }

    #[test]
    fn special_destinations_are_refused_with_their_reason() {
        let guard = EgressPolicy::default();
        let table = [
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("0.0.0.0", "unspecified"),
            ("10.1.2.3", "private (10"),
            ("100.64.0.1", "shared address space"),
            ("172.16.0.1", "private (172.16"),
            ("172.31.255.255", "private (172.16"),
            ("192.168.1.1", "private (192.168"),
            ("169.254.169.254", "cloud metadata"),
            ("169.254.1.1", "link-local"),
            ("100.100.100.200", "cloud metadata"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            (
                "::ffff:127.0.0.1",
                "IPv4-mapped form of 127.0.0.1, which is loopback",
            ),
            ("::ffff:10.0.0.1", "IPv4-mapped form of 10.0.0.1"),
            ("::127.0.0.1", "IPv4-compatible form of 127.0.0.1"),
            (
                "64:ff9b::7f00:1",
                "NAT64 form of 127.0.0.1, which is loopback",
            ),
            (
                "64:ff9b::a9fe:a9fe",
                "NAT64 form of 169.254.169.254, which is a cloud metadata",
            ),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("2002:7f00:1::", "6to4 form of 127.0.0.1"),
            ("2002:c0a8:101::1", "6to4 form of 192.168.1.1"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
            ("2001:db8::1", "documentation"),
            ("fe80::1", "link-local"),
            ("fd00::1", "unique-local"),
            ("fd00:ec2::254", "cloud metadata"),
            ("fc00::1", "unique-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("100::1", "discard-only"),
            ("4000::1", "outside global unicast"),
        ];
        for (address, reason) in table {
            let got = check(&guard, address).expect_err(address);
            assert!(
                got.contains(reason),
                "{address}: {got:?} should mention {reason:?}"
            );
        }
    }

    #[test]
    fn public_destinations_pass() {
        let guard = EgressPolicy::default();
        for address in [
            "93.184.215.14",
            "1.1.1.1",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:1.1.1.1",
            "64:ff9b::808:808",
        ] {
            assert_eq!(check(&guard, address), Ok(()), "{address}");
        }
    }

    #[test]
    fn allow_listed_networks_pass_in_every_form() {
        let guard = EgressPolicy::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "10.9.0.0/16".parse().unwrap(),
        ]);
        for address in [
            "127.0.0.1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "10.9.8.7",
        ] {
            assert_eq!(check(&guard, address), Ok(()), "{address}");
        }
        assert!(
            check(&guard, "::1").is_err(),
            "IPv6 loopback is another network"
        );
        assert!(check(&guard, "10.10.0.1").is_err());
    }

    #[test]
    fn a_name_keeps_only_its_allowed_addresses_and_is_refused_without_any() {
        let ips =
            |list: &[&str]| -> Vec<IpAddr> { list.iter().map(|a| a.parse().unwrap()).collect() };
        let guard = EgressPolicy::default();
        assert_eq!(
            guard.check_resolved(
                "mixed.example",
                ips(&["10.0.0.1", "1.1.1.1", "1.1.1.1", "::1"])
            ),
            Ok(ips(&["1.1.1.1"])),
            "refused addresses are dropped, the rest kept once"
        );
        let refusal = guard
            .check_resolved("localhost", ips(&["127.0.0.1", "::1", "127.0.0.1"]))
            .unwrap_err();
        assert_eq!(refusal.address, "localhost");
        assert_eq!(
            refusal.reason,
            "it resolves only to refused addresses (127.0.0.1 is loopback (127.0.0.0/8), ::1 is loopback (::1))"
        );
        assert!(
            refusal
                .to_string()
                .starts_with("egress to localhost refused: it resolves only")
        );
        let empty = guard
            .check_resolved("void.example", Vec::new())
            .unwrap_err();
        assert_eq!(empty.reason, "it resolves to no address");

        let loopback = EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(
            loopback.check_resolved("localhost", ips(&["::1", "127.0.0.1"])),
            Ok(ips(&["127.0.0.1"]))
        );
    }

    #[test]
    fn url_literals_are_checked_in_every_spelling_the_url_parser_accepts() {
        let guard = EgressPolicy::default();
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://0.0.0.0:8080/",
            "http://[64:ff9b::7f00:1]/",
        ] {
            let parsed = url::Url::parse(url).unwrap();
            assert!(guard.check_url(&parsed).is_err(), "{url} must be refused");
        }
        let named = url::Url::parse("http://example.com/").unwrap();
        assert_eq!(
            guard.check_url(&named),
            Ok(()),
            "names are checked when resolved"
        );
    }
}
