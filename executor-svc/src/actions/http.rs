//! The guarded HTTP client every HTTP action shares (DESIGN §5.2, §10): reqwest with the
//! egress guard in its DNS resolver (resolved addresses, checked at connect time) and in
//! its redirect policy (every hop), environment proxies ignored, no `Referer`. IP literals
//! never reach a resolver, so a caller checks the first URL with `EgressPolicy::check_url`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::redirect::Policy;
use url::Url;

use super::egress::{EgressPolicy, EgressRefusal};

/// Redirects followed when an action does not say.
pub const DEFAULT_MAX_REDIRECTS: u32 = 5;

/// How long establishing a connection (TLS included) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a client's redirect policy lets through, besides the egress guard.
///
/// reqwest's redirect policy sees only the hop (status, next URL, previous URLs), never
/// the request, so a per-action limit is a property of the client: a handler keeps one
/// client per set of rules it meets (a bounded number: the limit is validated).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RedirectRules {
    /// Redirects followed at most; one more fails the request.
    pub max_redirects: u32,
    /// Refuse a hop to another origin (scheme, host, port). Set when the request carries
    /// a credential in a header reqwest does not strip on such hops (an API key).
    pub same_origin_only: bool,
}

impl Default for RedirectRules {
    fn default() -> Self {
        Self {
            max_redirects: DEFAULT_MAX_REDIRECTS,
            same_origin_only: false,
        }
    }
}

/// Why a redirect was not followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectRefused {
    /// The hop would exceed the limit.
    #[error("too many redirects: at most {max} are followed (the action's max_redirects)")]
    TooMany {
        /// The limit.
        max: u32,
    },
    /// The hop leaves TLS: the request, its headers and body would travel in clear text.
    #[error("redirect from https to {next} refused: it would send the request unencrypted")]
    Downgrade {
        /// Where the hop goes.
        next: String,
    },
    /// The hop leaves the origin of a request that carries an API key.
    #[error(
        "redirect to {next} refused: the request carries an API key, which must not leave {origin}"
    )]
    OtherOrigin {
        /// Where the hop goes.
        next: String,
        /// Where the request started.
        origin: String,
    },
    /// The hop goes to another scheme than http(s).
    #[error("redirect to {next} refused: only http and https are followed")]
    Scheme {
        /// Where the hop goes.
        next: String,
    },
    /// The egress guard refuses the hop's destination.
    #[error("redirect to {next} refused: {refusal}")]
    Egress {
        /// Where the hop goes.
        next: String,
        /// The guard's refusal (also the error's source, for callers that look for it).
        #[source]
        refusal: EgressRefusal,
    },
}

/// Builds the one client handlers share (`ActionEnv::http`): the default redirect rules.
pub fn build_http_client(egress: Arc<EgressPolicy>) -> Result<reqwest::Client, reqwest::Error> {
    build_guarded_client(egress, RedirectRules::default())
}

/// Builds a client with the egress guard and these redirect rules.
pub fn build_guarded_client(
    egress: Arc<EgressPolicy>,
    rules: RedirectRules,
) -> Result<reqwest::Client, reqwest::Error> {
    // reqwest is built without a bundled crypto provider; install ring once per process.
    // An error only means a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let redirect_guard = Arc::clone(&egress);
    reqwest::Client::builder()
        // Environment proxies would connect on our behalf, past the resolver's check.
        .no_proxy()
        .dns_resolver(GuardedResolver { egress })
        .redirect(Policy::custom(move |attempt| {
            match check_redirect(&redirect_guard, rules, attempt.url(), attempt.previous()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        }))
        // A Referer would hand the previous URL (its query included) to the next host.
        .referer(false)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("almanac-executor/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Whether to follow a hop to `next`, `previous` being the URLs requested so far (the
/// first one included).
pub fn check_redirect(
    egress: &EgressPolicy,
    rules: RedirectRules,
    next: &Url,
    previous: &[Url],
) -> Result<(), RedirectRefused> {
    let shown = shown_url(next);
    // `previous` holds the first URL and every hop already followed.
    if previous.len() > rules.max_redirects as usize {
        return Err(RedirectRefused::TooMany {
            max: rules.max_redirects,
        });
    }
    if !matches!(next.scheme(), "http" | "https") {
        return Err(RedirectRefused::Scheme { next: shown });
    }
    if previous.last().is_some_and(|p| p.scheme() == "https") && next.scheme() == "http" {
        return Err(RedirectRefused::Downgrade { next: shown });
    }
    if rules.same_origin_only
        && let Some(first) = previous.first()
        && first.origin() != next.origin()
    {
        return Err(RedirectRefused::OtherOrigin {
            next: shown,
            origin: first.origin().ascii_serialization(),
        });
    }
    egress
        .check_url(next)
        .map_err(|refusal| RedirectRefused::Egress {
            next: shown,
            refusal,
        })
}

/// A URL as a message may show it: without its query and fragment, which may carry
/// tokens.
fn shown_url(url: &Url) -> String {
    let mut shown = url.clone();
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

/// The system resolver behind the egress guard: refused addresses are dropped, and a
/// name with nothing left is refused before any connection is attempted.
#[derive(Debug)]
struct GuardedResolver {
    egress: Arc<EgressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let egress = Arc::clone(&self.egress);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed = egress.check_resolved(&host, resolved.map(|a| a.ip()))?;
            // Port 0: reqwest puts the URL's port (or the scheme's) in its place.
            let addrs: Addrs = Box::new(allowed.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The guard's refusal behind a failed request, if that is why it failed: the resolver's
/// or the redirect policy's, found in the error's chain of sources.
pub fn refusal(error: &reqwest::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(r) = e.downcast_ref::<EgressRefusal>() {
            return Some(r.to_string());
        }
        if let Some(r) = e.downcast_ref::<RedirectRefused>() {
            return Some(r.to_string());
        }
        source = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &[&str]) -> Vec<Url> {
        list.iter().map(|u| Url::parse(u).unwrap()).collect()
    }

    fn hop(rules: RedirectRules, next: &str, previous: &[&str]) -> Result<(), RedirectRefused> {
        let guard = EgressPolicy::new(vec!["127.0.0.1/32".parse().unwrap()]);
        check_redirect(&guard, rules, &Url::parse(next).unwrap(), &urls(previous))
    }

    #[test]
    fn redirects_are_followed_up_to_the_limit() {
        let rules = RedirectRules {
            max_redirects: 2,
            same_origin_only: false,
        };
        let first = "http://127.0.0.1:1/a";
        assert_eq!(hop(rules, "http://127.0.0.1:1/b", &[first]), Ok(()));
        assert_eq!(hop(rules, "http://127.0.0.1:1/c", &[first, first]), Ok(()));
        assert_eq!(
            hop(rules, "http://127.0.0.1:1/d", &[first, first, first]),
            Err(RedirectRefused::TooMany { max: 2 })
        );
        let none = RedirectRules {
            max_redirects: 0,
            ..rules
        };
        assert!(hop(none, "http://127.0.0.1:1/b", &[first]).is_err());
    }

    #[test]
    fn every_hop_passes_the_guard_and_stays_encrypted() {
        let rules = RedirectRules::default();
        let err = hop(rules, "http://[::1]:8080/x?token=t", &["http://127.0.0.1/"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "redirect to http://[::1]:8080/x refused: egress to ::1 refused: loopback (::1); \
             allow its network in the executor's egress configuration to permit it"
        );
        assert!(hop(rules, "http://2130706433/", &["http://127.0.0.1/"]).is_ok());
        assert!(matches!(
            hop(rules, "http://0x7f000002/", &["http://127.0.0.1/"]),
            Err(RedirectRefused::Egress { .. })
        ));
        assert!(matches!(
            hop(rules, "http://example.com/", &["https://example.com/"]),
            Err(RedirectRefused::Downgrade { .. })
        ));
        assert!(matches!(
            hop(rules, "ftp://example.com/", &["http://example.com/"]),
            Err(RedirectRefused::Scheme { .. })
        ));
        assert_eq!(
            hop(rules, "https://example.com/", &["http://example.com/"]),
            Ok(())
        );
    }

    #[test]
    fn an_api_key_never_follows_a_redirect_to_another_origin() {
        let rules = RedirectRules {
            max_redirects: 5,
            same_origin_only: true,
        };
        assert_eq!(
            hop(
                rules,
                "https://api.example.com/v2",
                &["https://api.example.com/v1"]
            ),
            Ok(())
        );
        assert_eq!(
            hop(
                rules,
                "https://evil.example.net/",
                &["https://api.example.com/v1"]
            ),
            Err(RedirectRefused::OtherOrigin {
                next: "https://evil.example.net/".into(),
                origin: "https://api.example.com".into(),
            })
        );
        assert!(
            hop(
                rules,
                "https://api.example.com:444/",
                &["https://api.example.com/"]
            )
            .is_err()
        );
    }
}
