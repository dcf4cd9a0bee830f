//! Who is calling: the bearer token in the `authorization` metadata, turned
//! into the node the caller speaks for.
//!
//! - Local mode: a bootstrap token from the state folder ([`Tokens`]).
//! - Kubernetes: the node agent's ServiceAccount token, checked by a
//!   TokenReview. The account must be one of the node agent accounts (every
//!   pod has a token bound to its node; only the agent may speak for the
//!   node), and the token must be bound to a pod, whose node the API server
//!   reports in `user.extra["authentication.kubernetes.io/node-name"]`.

use std::{sync::Arc, time::SystemTime};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, api::PostParams};
use tonic::{Code, metadata::MetadataMap};
use tracing::debug;

use super::{
    counters::Counters,
    review_cache::{self, ReviewCache},
    tokens::{TokenError, Tokens},
};

/// The node-name claim of bound ServiceAccount tokens.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The node it may obtain identities for.
    pub node: String,
    /// Who it is, for logs: the ServiceAccount, or the bootstrap token.
    pub principal: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AuthnError {
    #[error("no bearer token in the `authorization` metadata")]
    Missing,
    #[error("the `authorization` metadata is not `Bearer <token>`")]
    NotBearer,
    #[error("bootstrap token refused: {0}")]
    Bootstrap(#[from] TokenError),
    #[error("the API server did not authenticate the token: {0}")]
    Rejected(String),
    #[error("{user} may not request certificates: it is not a node agent account ({allowed})")]
    NotNodeAgent { user: String, allowed: String },
    #[error("the token of {user} is not bound to a node (no {NODE_NAME_EXTRA} in its TokenReview)")]
    NoNode { user: String },
    #[error("reviewing the token failed: {0}")]
    Review(String),
}

impl AuthnError {
    /// A short, stable name for counters.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthnError::Missing | AuthnError::NotBearer => "no_token",
            AuthnError::Bootstrap(TokenError::Expired { .. }) => "expired_token",
            AuthnError::Bootstrap(TokenError::Io { .. } | TokenError::Corrupt { .. }) => {
                "token_store"
            }
            AuthnError::Bootstrap(_) | AuthnError::Rejected(_) => "bad_token",
            AuthnError::NotNodeAgent { .. } => "not_node_agent",
            AuthnError::NoNode { .. } => "token_without_node",
            AuthnError::Review(_) => "token_review_failed",
        }
    }

    /// The gRPC status code the caller gets.
    pub fn code(&self) -> Code {
        match self {
            AuthnError::Bootstrap(TokenError::Io { .. } | TokenError::Corrupt { .. }) => {
                Code::Internal
            }
            AuthnError::Review(_) => Code::Unavailable,
            AuthnError::NotNodeAgent { .. } | AuthnError::NoNode { .. } => Code::PermissionDenied,
            _ => Code::Unauthenticated,
        }
    }
}

/// The bearer token of a request.
pub fn bearer(metadata: &MetadataMap) -> Result<&str, AuthnError> {
    let value = metadata.get("authorization").ok_or(AuthnError::Missing)?;
    let value = value.to_str().map_err(|_| AuthnError::NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(AuthnError::NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthnError::NotBearer);
    }
    Ok(token)
}

/// How callers are authenticated.
#[derive(Clone)]
pub enum Authenticator {
    Bootstrap(Tokens),
    Kube(TokenReviewer),
}

impl Authenticator {
    pub async fn authenticate(&self, token: &str) -> Result<Caller, AuthnError> {
        match self {
            Authenticator::Bootstrap(tokens) => {
                let node = tokens.check(token, SystemTime::now())?;
                Ok(Caller {
                    principal: format!("bootstrap token of node {node}"),
                    node,
                })
            }
            Authenticator::Kube(reviewer) => reviewer.review(token).await,
        }
    }
}

/// Checks ServiceAccount tokens with the API server, remembering successes
/// for a short while ([`ReviewCache`]).
#[derive(Clone)]
pub struct TokenReviewer {
    client: kube::Client,
    /// `namespace/name` of the accounts node agents run as.
    accounts: Vec<String>,
    audiences: Vec<String>,
    cache: Arc<ReviewCache>,
    counters: Option<Arc<Counters>>,
}

impl TokenReviewer {
    pub fn new(client: kube::Client, accounts: Vec<String>, audiences: Vec<String>) -> Self {
        Self {
            client,
            accounts,
            audiences,
            cache: Arc::new(ReviewCache::new(
                review_cache::DEFAULT_TTL,
                review_cache::DEFAULT_CAPACITY,
                Arc::new(SystemTime::now),
            )),
            counters: None,
        }
    }

    /// Replaces the cache (a TTL of zero disables it).
    pub fn with_cache(mut self, cache: ReviewCache) -> Self {
        self.cache = Arc::new(cache);
        self
    }

    /// Counts cache hits and misses there.
    pub fn with_counters(mut self, counters: Arc<Counters>) -> Self {
        self.counters = Some(counters);
        self
    }

    pub async fn review(&self, token: &str) -> Result<Caller, AuthnError> {
        let cached = self.cache.get(token);
        if let Some(counters) = &self.counters {
            counters.review_cache(cached.is_some());
        }
        if let Some(caller) = cached {
            debug!(node = caller.node, "token review answered from the cache");
            return Ok(caller);
        }
        let caller = self.ask(token).await?;
        self.cache.insert(token, caller.clone());
        Ok(caller)
    }

    /// One TokenReview; refusals are not cached.
    async fn ask(&self, token: &str) -> Result<Caller, AuthnError> {
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let request = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
            },
            ..TokenReview::default()
        };
        let reviewed = api
            .create(&PostParams::default(), &request)
            .await
            .map_err(|e| AuthnError::Review(e.to_string()))?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(AuthnError::Rejected(
                status
                    .error
                    .unwrap_or_else(|| "not authenticated".to_owned()),
            ));
        }
        let user = status.user.unwrap_or_default();
        let username = user.username.unwrap_or_default();
        let is_agent = self.accounts.iter().any(|account| {
            account
                .split_once('/')
                .is_some_and(|(ns, sa)| username == format!("system:serviceaccount:{ns}:{sa}"))
        });
        if !is_agent {
            return Err(AuthnError::NotNodeAgent {
                user: username,
                allowed: self.accounts.join(", "),
            });
        }
        let node = user
            .extra
            .as_ref()
            .and_then(|extra| extra.get(NODE_NAME_EXTRA))
            .and_then(|values| values.first())
            .filter(|node| !node.is_empty())
            .cloned()
            .ok_or_else(|| AuthnError::NoNode {
                user: username.clone(),
            })?;
        Ok(Caller {
            node,
            principal: username,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_is_read_from_the_authorization_metadata() {
        let mut metadata = MetadataMap::new();
        assert!(matches!(bearer(&metadata), Err(AuthnError::Missing)));
        metadata.insert("authorization", "Basic abc".parse().unwrap());
        assert!(matches!(bearer(&metadata), Err(AuthnError::NotBearer)));
        metadata.insert("authorization", "Bearer ".parse().unwrap());
        assert!(matches!(bearer(&metadata), Err(AuthnError::NotBearer)));
        metadata.insert("authorization", "bearer tok-1".parse().unwrap());
        assert_eq!(bearer(&metadata).unwrap(), "tok-1");
    }
}
