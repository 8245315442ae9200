//! SASL OAUTHBEARER tokens from your code: a token provider for managed clusters whose
//! tokens come from a cloud SDK or an OAuth flow (for example AWS MSK IAM signers, or a
//! client-credentials grant against your identity provider).
//!
//! librdkafka asks for a token when it first authenticates and again before the token's
//! lifetime ends; the framework calls your [`OAuthTokenProvider`] then, on the client's
//! polling thread (keep it quick: a cached token, or a blocking HTTP call with a timeout).
//! Without a provider, librdkafka's own handlers apply (`enable.sasl.oauthbearer.unsecure.jwt`
//! for development; `sasl.oauthbearer.method=oidc` where librdkafka was built with libcurl);
//! with neither, authentication fails with an error that says to set one.
//!
//! ```
//! use std::time::{Duration, SystemTime, UNIX_EPOCH};
//! use karafka_core::oauth::{OAuthToken, OAuthTokenProvider};
//!
//! fn fetch_token(_config: Option<&str>) -> Result<OAuthToken, Box<dyn std::error::Error + Send + Sync>> {
//!     let expires = SystemTime::now() + Duration::from_secs(900);
//!     Ok(OAuthToken {
//!         token: "eyJhbGciOi...".into(), // from your identity provider
//!         principal: "orders-service".into(),
//!         lifetime_ms: expires.duration_since(UNIX_EPOCH)?.as_millis() as i64,
//!     })
//! }
//! let provider: &dyn OAuthTokenProvider = &fetch_token;
//! assert_eq!(provider.token(None).unwrap().principal, "orders-service");
//! ```

use std::error::Error;
use std::fmt;

/// A token for SASL OAUTHBEARER.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuthToken {
    /// The token value (usually a JWT).
    pub token: String,
    /// The principal the token is for.
    pub principal: String,
    /// When the token expires, in milliseconds since the Unix epoch (librdkafka asks for a
    /// new one before then).
    pub lifetime_ms: i64,
}

impl fmt::Debug for OAuthToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OAuthToken")
            .field("token", &crate::settings::REDACTED)
            .field("principal", &self.principal)
            .field("lifetime_ms", &self.lifetime_ms)
            .finish()
    }
}

/// Supplies OAUTHBEARER tokens. `config` is the client's `sasl.oauthbearer.config` setting,
/// when set. Any `Fn(Option<&str>) -> Result<OAuthToken, _>` is one.
pub trait OAuthTokenProvider: Send + Sync + 'static {
    /// A current token, or why there is none (the authentication then fails with it and
    /// librdkafka asks again later).
    fn token(&self, config: Option<&str>) -> Result<OAuthToken, Box<dyn Error + Send + Sync>>;
}

impl<F> OAuthTokenProvider for F
where
    F: Fn(Option<&str>) -> Result<OAuthToken, Box<dyn Error + Send + Sync>> + Send + Sync + 'static,
{
    fn token(&self, config: Option<&str>) -> Result<OAuthToken, Box<dyn Error + Send + Sync>> {
        self(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let token = OAuthToken {
            token: "secret-token".into(),
            principal: "p".into(),
            lifetime_ms: 1,
        };
        assert!(!format!("{token:?}").contains("secret-token"));
    }
}
