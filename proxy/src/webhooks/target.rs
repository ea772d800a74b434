//! Where webhooks may be sent: `https` URLs of public hosts. Plain `http`, loopback, private,
//! link-local and other non-public addresses are refused unless the server runs with
//! `--allow-http-upstream` (the development switch for outbound connections).
//!
//! Checked twice: when a subscription is made (the URL's shape, a literal address, and what the
//! host resolves to right then), and at every delivery, where [`GuardedResolver`] is the DNS
//! resolver of the delivery client: a name that resolves to any non-public address is refused,
//! and the connection goes to exactly the addresses that were checked (no second lookup that
//! a rebinding DNS server could answer differently).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use reqwest::Url;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Longest subscription URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// How long the subscription-time DNS lookup may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a URL is not a webhook target.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Not a URL, or not one we can POST to.
    #[error("invalid webhook url: {0}")]
    Invalid(String),
    /// Refused by policy.
    #[error("{0}")]
    Refused(String),
}

const DEV_SWITCH: &str = "start the server with --allow-http-upstream to permit it";

/// Whether `ip` is a public unicast address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let seg = v6.segments();
            // NAT64 (64:ff9b::/96) embeds an IPv4 address in the last 32 bits.
            if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return is_public_v4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (seg[0] & 0xffc0) == 0xfec0 // site-local fec0::/10 (deprecated)
                || (seg[0] == 0x2001 && seg[1] == 0x0db8) // documentation
                || seg[..6] == [0; 6]) // IPv4-compatible ::a.b.c.d and friends
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
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking 198.18/15
        || o[0] >= 240) // reserved
}

fn is_local_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    h == "localhost" || h.ends_with(".localhost")
}

/// Check the shape of `url` and what can be told without DNS: scheme, host, no credentials in
/// the URL, and (without the dev switch) https and no literal non-public address or
/// `localhost`.
pub fn check_url(url: &str, allow_dev: bool) -> Result<Url, TargetError> {
    if url.len() > MAX_URL_LEN {
        return Err(TargetError::Invalid(format!(
            "longer than {MAX_URL_LEN} bytes"
        )));
    }
    let parsed = Url::parse(url).map_err(|e| TargetError::Invalid(format!("{e}")))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_dev => {}
        "http" => {
            return Err(TargetError::Refused(format!(
                "webhook url must be https ({DEV_SWITCH})"
            )));
        }
        other => {
            return Err(TargetError::Invalid(format!(
                "scheme {other:?} is not http(s)"
            )));
        }
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(TargetError::Invalid(
            "credentials in the url are not accepted; the signature authenticates deliveries"
                .into(),
        ));
    }
    if parsed.fragment().is_some() {
        return Err(TargetError::Invalid("a fragment is not allowed".into()));
    }
    let host = match parsed.host_str() {
        Some(h) if !h.is_empty() => h,
        _ => return Err(TargetError::Invalid("no host".into())),
    };
    if !allow_dev {
        let what = match literal_ip(host) {
            Some(ip) if !is_public(ip) => Some(format!("the non-public address {ip}")),
            None if is_local_name(host) => Some(format!("the local host {host}")),
            _ => None,
        };
        if let Some(what) = what {
            return Err(TargetError::Refused(format!(
                "webhook url points at {what} ({DEV_SWITCH})"
            )));
        }
    }
    Ok(parsed)
}

/// The address of a URL host that is an IP literal (`[…]` for IPv6).
fn literal_ip(host: &str) -> Option<IpAddr> {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

/// [`check_url`], then (without the dev switch) resolve the host now and refuse it if it
/// resolves to a non-public address. A name that does not resolve at all is accepted: it may
/// exist later, and every delivery checks again.
pub async fn check_subscription_url(url: &str, allow_dev: bool) -> Result<Url, TargetError> {
    let parsed = check_url(url, allow_dev)?;
    if allow_dev {
        return Ok(parsed);
    }
    if let Some(d) = parsed.host_str().filter(|h| literal_ip(h).is_none()) {
        let port = parsed.port_or_known_default().unwrap_or(443);
        let lookup = tokio::net::lookup_host((d.to_owned(), port));
        if let Ok(Ok(addrs)) = tokio::time::timeout(LOOKUP_TIMEOUT, lookup).await {
            for a in addrs {
                if !is_public(a.ip()) {
                    return Err(TargetError::Refused(format!(
                        "webhook host {d} resolves to the non-public address {} ({DEV_SWITCH})",
                        a.ip()
                    )));
                }
            }
        }
    }
    Ok(parsed)
}

/// The delivery client's DNS resolver: the system's, with non-public answers refused unless
/// the dev switch is on.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    /// Permit non-public addresses (dev switch).
    pub allow_dev: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_dev = self.allow_dev;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if !allow_dev {
                if is_local_name(&host) {
                    return Err(format!("webhook host {host} is local ({DEV_SWITCH})").into());
                }
                if let Some(bad) = addrs.iter().find(|a| !is_public(a.ip())) {
                    return Err(format!(
                        "webhook host {host} resolves to the non-public address {} ({DEV_SWITCH})",
                        bad.ip()
                    )
                    .into());
                }
            }
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_addresses() {
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "2606:4700:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(is_public(public.parse().expect("ip")), "{public}");
        }
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "::127.0.0.1",
        ] {
            assert!(!is_public(private.parse().expect("ip")), "{private}");
        }
    }

    #[test]
    fn urls_need_https_and_a_public_host_without_the_dev_switch() {
        assert!(check_url("https://hooks.example.com/x?y=1", false).is_ok());
        for (url, refused) in [
            ("http://hooks.example.com/x", true),
            ("https://127.0.0.1/x", true),
            ("https://[::1]:8443/x", true),
            ("https://10.0.0.5/x", true),
            ("https://169.254.169.254/latest", true),
            ("https://localhost/x", true),
            ("https://api.localhost./x", true),
            ("ftp://hooks.example.com/x", false),
            ("not a url", false),
            ("https://user:pw@hooks.example.com/x", false),
            ("https://hooks.example.com/x#frag", false),
        ] {
            match check_url(url, false) {
                Err(TargetError::Refused(_)) if refused => {}
                Err(TargetError::Invalid(_)) if !refused => {}
                other => panic!("{url}: {other:?}"),
            }
        }
        assert!(
            check_url("http://127.0.0.1:9/x", true).is_ok(),
            "dev switch"
        );
        assert!(check_url("ftp://127.0.0.1/x", true).is_err());
        assert!(check_url(&format!("https://a.com/{}", "x".repeat(3000)), true).is_err());
    }

    #[tokio::test]
    async fn the_resolver_refuses_names_of_private_addresses() {
        let strict = GuardedResolver { allow_dev: false };
        let name: Name = "localhost".parse().expect("name");
        assert!(strict.resolve(name).await.is_err());
        let lenient = GuardedResolver { allow_dev: true };
        let name: Name = "localhost".parse().expect("name");
        let addrs: Vec<_> = lenient.resolve(name).await.expect("resolves").collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }
}
