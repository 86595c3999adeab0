//! `call_api` credentials: the header an action's `auth` becomes, built from a named
//! secret of the executor's configuration at the one place it is sent. The value is
//! marked sensitive (never printed by the HTTP stack) and its forms are kept so that an
//! answer echoing them is redacted.

use almanac_proto::executor::v1::{HttpAuth, http_auth};
use base64::Engine as _;
use reqwest::header::{AUTHORIZATION, HeaderName, HeaderValue};

use crate::actions::ActionError;
use crate::secrets::Secrets;

/// The credential an action sends, ready for its header.
pub struct Credential {
    /// The header it goes in.
    pub header: HeaderName,
    /// Its value (sensitive).
    pub value: HeaderValue,
    /// The forms of the secret an answer might echo, redacted from the result.
    pub echoes: Vec<String>,
    /// An API key: reqwest does not strip it on a redirect to another origin.
    pub api_key: bool,
}

/// The auth field naming a secret, and the name.
pub fn secret_field(auth: Option<&HttpAuth>) -> Option<(&'static str, &str)> {
    match auth?.kind.as_ref()? {
        http_auth::Kind::Bearer(b) => Some(("auth.bearer.token_secret", &b.token_secret)),
        http_auth::Kind::Basic(b) => Some(("auth.basic.password_secret", &b.password_secret)),
        http_auth::Kind::ApiKey(k) => Some(("auth.api_key.value_secret", &k.value_secret)),
    }
}

/// The credential of `auth`, from `secrets`; `None` without auth.
pub fn credential(
    secrets: &Secrets,
    auth: Option<&HttpAuth>,
) -> Result<Option<Credential>, ActionError> {
    let Some(kind) = auth.and_then(|a| a.kind.as_ref()) else {
        return Ok(None);
    };
    let secret = |name: &str| {
        secrets
            .get(name)
            .map(|s| s.expose().to_owned())
            .ok_or_else(|| {
                ActionError::permanent(format!("this executor has no secret named {name:?}"))
            })
    };
    let (header, value, echoes, api_key) = match kind {
        http_auth::Kind::Bearer(b) => {
            let token = secret(&b.token_secret)?;
            (AUTHORIZATION, format!("Bearer {token}"), vec![token], false)
        }
        http_auth::Kind::Basic(b) => {
            let password = secret(&b.password_secret)?;
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{password}", b.username));
            let value = format!("Basic {encoded}");
            (AUTHORIZATION, value, vec![password, encoded], false)
        }
        http_auth::Kind::ApiKey(k) => {
            let key = secret(&k.value_secret)?;
            let header = HeaderName::from_bytes(k.header.as_bytes()).map_err(|_| {
                ActionError::permanent(format!("{:?} is not a valid header name", k.header))
            })?;
            (header, key.clone(), vec![key], true)
        }
    };
    let mut value = HeaderValue::from_str(&value).map_err(|_| {
        // Never quote the value: it holds the secret.
        ActionError::permanent("the secret of auth cannot be sent in a header")
    })?;
    value.set_sensitive(true);
    Ok(Some(Credential {
        header,
        value,
        echoes,
        api_key,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secrets::Secret;
    use almanac_proto::executor::v1::{ApiKeyAuth, BasicAuth, BearerAuth};

    fn auth(kind: http_auth::Kind) -> HttpAuth {
        HttpAuth { kind: Some(kind) }
    }

    #[test]
    fn each_kind_becomes_its_sensitive_header() {
        let mut secrets = Secrets::default();
        secrets.insert("t", Secret::new("tok"));
        secrets.insert("p", Secret::new("pw"));
        let bearer = auth(http_auth::Kind::Bearer(BearerAuth {
            token_secret: "t".into(),
        }));
        let c = credential(&secrets, Some(&bearer)).unwrap().unwrap();
        assert_eq!(
            (c.header.as_str(), c.value.to_str().unwrap()),
            ("authorization", "Bearer tok")
        );
        assert!(c.value.is_sensitive() && !c.api_key);

        let basic = auth(http_auth::Kind::Basic(BasicAuth {
            username: "u".into(),
            password_secret: "p".into(),
        }));
        let c = credential(&secrets, Some(&basic)).unwrap().unwrap();
        assert_eq!(c.value.to_str().unwrap(), "Basic dTpwdw==");
        assert_eq!(c.echoes, ["pw", "dTpwdw=="]);

        let key = auth(http_auth::Kind::ApiKey(ApiKeyAuth {
            header: "X-Key".into(),
            value_secret: "t".into(),
        }));
        let c = credential(&secrets, Some(&key)).unwrap().unwrap();
        assert_eq!(
            (c.header.as_str(), c.value.to_str().unwrap()),
            ("x-key", "tok")
        );
        assert!(c.api_key);

        assert!(credential(&secrets, None).unwrap().is_none());
        let missing = auth(http_auth::Kind::Bearer(BearerAuth {
            token_secret: "nope".into(),
        }));
        let e = credential(&secrets, Some(&missing)).err().unwrap();
        assert_eq!(e.message, "this executor has no secret named \"nope\"");
        assert!(!e.retryable);
    }
}
