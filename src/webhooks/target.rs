//! Where a webhook may go: URL rules, and the address check made when an
//! endpoint is saved and again at delivery time, after DNS resolution, on the
//! very addresses the connection then uses (a name that resolves to a public
//! address when saved and to 127.0.0.1 later, DNS rebinding, is refused).
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
};

use reqwest::Url;

use crate::config::WebhooksConfig;

pub const MAX_URL: usize = 2000;

/// Why a target was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct Blocked(pub String);

/// Is `ip` an ordinary public unicast address? Loopback, private (RFC 1918,
/// unique local), carrier-grade NAT, link-local (where cloud metadata lives,
/// 169.254.169.254), unspecified, broadcast, multicast, documentation,
/// benchmarking and reserved ranges are not; IPv4-mapped and NAT64 IPv6
/// addresses are judged by the IPv4 address they carry.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) embeds an IPv4 address in the last 32 bits.
            if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                let o = v6.octets();
                return is_public_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7 (fd00:ec2::254 metadata)
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local fec0::/10
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0 && s[1] == 0 && s[2..6] == [0, 0, 0, 0])) // ::/32-ish, IPv4-compatible
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || o[0] == 0 // "this network"
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // carrier-grade NAT 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240) // reserved
}

/// Check an endpoint URL as the API receives it: absolute http(s) (https
/// unless `webhooks.allow_http`), a host, no credentials or fragment, at most
/// [`MAX_URL`] characters, and an IP-literal host must be public unless
/// `webhooks.allow_private`. Returns the normalized URL.
pub fn check_url(raw: &str, cfg: &WebhooksConfig) -> Result<Url, Blocked> {
    let bad = |why: &str| Err(Blocked(why.to_string()));
    let raw = raw.trim();
    if raw.len() > MAX_URL {
        return bad("must be at most 2000 characters");
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("must not contain spaces or control characters");
    }
    let Ok(url) = Url::parse(raw) else {
        return bad("must be an absolute URL such as https://app.example.com/hooks/approvald");
    };
    match url.scheme() {
        "https" => {}
        "http" if cfg.allow_http => {}
        "http" => return bad("must be an https:// URL (webhooks.allow_http is off)"),
        _ => return bad("must be an https:// URL"),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return bad("must not carry credentials");
    }
    if url.fragment().is_some() {
        return bad("must not have a #fragment");
    }
    let Some(host) = url.host() else {
        return bad("must name a host");
    };
    if !cfg.allow_private {
        let ip = match host {
            url::Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            url::Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            url::Host::Domain(d) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                if d == "localhost" || d.ends_with(".localhost") {
                    return bad(
                        "names a loopback host; webhooks go to public addresses (webhooks.allow_private is off)",
                    );
                }
                None
            }
        };
        if let Some(ip) = ip
            && !is_public(ip)
        {
            return Err(Blocked(format!(
                "{ip} is a loopback, private, link-local or reserved address; webhooks go to public addresses (webhooks.allow_private is off)"
            )));
        }
    }
    Ok(url)
}

/// Resolve `host` and check every address it resolves to: all must be
/// public unless `allow_private` (one private answer refuses the name).
pub async fn resolve_checked(
    host: &str,
    port: u16,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| ResolveError::Dns(format!("cannot resolve {host}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(ResolveError::Dns(format!("{host} resolves to no address")));
    }
    if !allow_private && let Some(a) = addrs.iter().find(|a| !is_public(a.ip())) {
        return Err(ResolveError::Blocked(Blocked(format!(
            "{host} resolves to {}, a loopback, private, link-local or reserved address (webhooks.allow_private is off)",
            a.ip()
        ))));
    }
    Ok(addrs)
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("{0}")]
    Dns(String),
    #[error(transparent)]
    Blocked(Blocked),
}

/// The HTTP client's DNS resolver: the checked addresses only, so the
/// connection goes exactly where the check looked.
pub struct CheckedResolver {
    pub allow_private: bool,
}

impl reqwest::dns::Resolve for CheckedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addrs = resolve_checked(&host, 0, allow_private)
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { Box::new(e) })?;
            let it: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(it)
        })
    }
}

/// Does an error chain contain a refused target?
pub fn blocked_in(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(ResolveError::Blocked(b)) = err.downcast_ref::<ResolveError>() {
            return Some(b.0.clone());
        }
        cur = err.source();
    }
    None
}

/// The delivery client for a config: no redirects, no proxy, the
/// configured timeout, the checked resolver.
pub fn client(cfg: &WebhooksConfig) -> anyhow::Result<reqwest::Client> {
    use std::{collections::HashMap, sync::Mutex, time::Duration};
    static CLIENTS: std::sync::OnceLock<Mutex<HashMap<(u64, bool), reqwest::Client>>> =
        std::sync::OnceLock::new();
    let key = (cfg.timeout_secs, cfg.allow_private);
    let mut map = CLIENTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(c) = map.get(&key) {
        return Ok(c.clone());
    }
    let c = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(cfg.timeout_secs))
        .connect_timeout(Duration::from_secs(cfg.timeout_secs))
        .pool_idle_timeout(Duration::from_secs(30))
        .user_agent(concat!("approvald-webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(CheckedResolver {
            allow_private: cfg.allow_private,
        }))
        .build()?;
    map.insert(key, c.clone());
    Ok(c)
}

/// Check the URL's host at delivery time: an IP literal directly, a name
/// through DNS (the client's resolver checks again when it connects).
pub async fn check_at_delivery(url: &Url, cfg: &WebhooksConfig) -> Result<(), ResolveError> {
    check_url(url.as_str(), cfg).map_err(ResolveError::Blocked)?;
    match url.host() {
        Some(url::Host::Domain(d)) => resolve_checked(
            d,
            url.port_or_known_default().unwrap_or(443),
            cfg.allow_private,
        )
        .await
        .map(|_| ()),
        Some(_) => Ok(()),
        None => Err(ResolveError::Blocked(Blocked("no host".into()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn private_addresses_are_not_public() {
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
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn url_rules() {
        let mut cfg = Config::default().webhooks;
        assert!(check_url("https://hooks.example.com/x?y=1", &cfg).is_ok());
        for bad in [
            "http://hooks.example.com/x",
            "ftp://hooks.example.com/x",
            "https://user:pw@hooks.example.com/",
            "https://hooks.example.com/#frag",
            "https://127.0.0.1/x",
            "https://[::1]/x",
            "https://169.254.169.254/latest/meta-data",
            "https://10.0.0.5/x",
            "https://localhost/x",
            "https://a.localhost/x",
            "not a url",
            "https://exa mple.com/",
        ] {
            assert!(check_url(bad, &cfg).is_err(), "{bad}");
        }
        cfg.allow_http = true;
        cfg.allow_private = true;
        assert!(check_url("http://127.0.0.1:9/x", &cfg).is_ok());
    }

    #[tokio::test]
    async fn names_resolving_to_loopback_are_refused() {
        let e = resolve_checked("localhost", 80, false).await.unwrap_err();
        assert!(matches!(e, ResolveError::Blocked(_)), "{e}");
        assert!(resolve_checked("localhost", 80, true).await.is_ok());
    }
}
