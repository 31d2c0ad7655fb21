//! SSRF guard: webhook URLs may only reach public addresses (plus an explicit
//! allowlist). Host names are resolved by our own resolver, which drops non-public
//! addresses, and the connection goes to exactly the vetted addresses (no second lookup,
//! so no DNS rebinding). IP-literal hosts never reach a resolver, so they are checked
//! before every send.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use crate::WebhookError;

/// An IP network, `10.0.0.0/8` or `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Net {
    addr: IpAddr,
    prefix: u8,
}

impl Net {
    /// Parses CIDR notation (a bare address is a /32 or /128).
    pub fn parse(s: &str) -> Result<Net, WebhookError> {
        let bad = || WebhookError::Config(format!("'{s}' is not an IP network (e.g. 10.0.0.0/8)"));
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(Net { addr, prefix })
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                u32::from(n) & mask == u32::from(i) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(i)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                u128::from(n) & mask == u128::from(i) & mask
            }
            _ => false,
        }
    }
}

fn v4_blocked(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local() // includes 169.254.169.254, the cloud metadata address
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // CGNAT 100.64.0.0/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || o[0] >= 240 // reserved
}

fn v6_blocked(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_blocked(v4);
    }
    // NAT64 (64:ff9b::/96) embeds an IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        let v4 = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
        return v4_blocked(v4);
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link local fe80::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || s[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible (deprecated) and ::/96
}

/// Which addresses deliveries may go to.
#[derive(Clone, Debug)]
pub struct Policy {
    allow: Vec<Net>,
    allow_public: bool,
}

impl Policy {
    /// Public addresses (when `allow_public`) plus the `allow` networks.
    pub fn new(allow: &[String], allow_public: bool) -> Result<Self, WebhookError> {
        Ok(Self {
            allow: allow
                .iter()
                .map(|s| Net::parse(s))
                .collect::<Result<_, _>>()?,
            allow_public,
        })
    }

    /// Whether an address may be called.
    pub fn allowed(&self, ip: IpAddr) -> bool {
        if self.allow.iter().any(|n| n.contains(ip)) {
            return true;
        }
        if !self.allow_public {
            return false;
        }
        match ip {
            IpAddr::V4(v4) => !v4_blocked(v4),
            IpAddr::V6(v6) => !v6_blocked(v6),
        }
    }

    /// Checks a URL's scheme and, for an IP-literal host, the address. Host names are
    /// checked by [`Policy::check_resolved`] or at connect time by the resolver.
    pub fn check_literal(&self, url: &str) -> Result<Url, String> {
        let u = Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
        if !matches!(u.scheme(), "http" | "https") {
            return Err("only http and https URLs can receive webhooks".into());
        }
        match u.host() {
            None => Err("the URL has no host".into()),
            Some(url::Host::Ipv4(ip)) => self.vet(IpAddr::V4(ip)).map(|_| u.clone()),
            Some(url::Host::Ipv6(ip)) => self.vet(IpAddr::V6(ip)).map(|_| u.clone()),
            Some(url::Host::Domain(_)) => Ok(u.clone()),
        }
    }

    fn vet(&self, ip: IpAddr) -> Result<(), String> {
        if self.allowed(ip) {
            Ok(())
        } else {
            Err(format!(
                "{ip} is a loopback, private, link-local or otherwise internal address (add it to webhooks.allow_networks to permit it)"
            ))
        }
    }

    /// The registration check: the literal check, then a host name's addresses.
    pub async fn check_url(&self, url: &str) -> Result<(), String> {
        let u = self.check_literal(url)?;
        if let Some(url::Host::Domain(d)) = u.host() {
            self.resolve(d, u.port_or_known_default().unwrap_or(443))
                .await?;
        }
        Ok(())
    }

    /// Resolves a host name and keeps only allowed addresses.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        let all: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .collect();
        let ok: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| self.allowed(a.ip()))
            .collect();
        if ok.is_empty() {
            return Err(format!(
                "{host} resolves only to internal addresses ({})",
                all.iter()
                    .map(|a| a.ip().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(ok)
    }
}

/// The resolver reqwest uses for webhook deliveries.
pub(crate) struct SafeResolver(pub(crate) Arc<Policy>);

impl Resolve for SafeResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        Box::pin(async move {
            let addrs = policy
                .resolve(name.as_str(), 0)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Policy {
        Policy::new(&[], true).unwrap()
    }

    #[test]
    fn blocks_internal_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(!p().allowed(ip.parse().unwrap()), "{ip} must be blocked");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(p().allowed(ip.parse().unwrap()), "{ip} must be allowed");
        }
    }

    #[test]
    fn allowlist_and_private_only() {
        let q = Policy::new(&["127.0.0.0/8".into()], false).unwrap();
        assert!(q.allowed("127.0.0.1".parse().unwrap()));
        assert!(!q.allowed("8.8.8.8".parse().unwrap()), "public off");
        assert!(Net::parse("10.0.0.0/33").is_err());
        assert!(Net::parse("nope").is_err());
    }

    #[test]
    fn literal_urls() {
        assert!(p().check_literal("http://127.0.0.1:8080/x").is_err());
        assert!(p().check_literal("http://[::1]/x").is_err());
        assert!(
            p().check_literal("http://169.254.169.254/latest/meta-data")
                .is_err()
        );
        assert!(p().check_literal("ftp://example.com/").is_err());
        assert!(p().check_literal("https://8.8.8.8/hook").is_ok());
        assert!(p().check_literal("https://example.com/hook").is_ok());
    }
}
