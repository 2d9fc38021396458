//! Who is calling: the bearer token of a `/v1` request, resolved once per
//! request by the gate middleware into a `Principal`.

use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use shellwego_core::plan::Plan;
use shellwego_core::time::now;
use shellwego_core::token::{self, TokenKind};
use shellwego_core::Error;
use shellwego_store::events::Actor;
use shellwego_store::Store;

use crate::problem::ApiError;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub token_id: String,
    pub token_kind: TokenKind,
    pub user_id: Option<String>,
    /// The organization the token acts in.
    pub organization_id: String,
    pub plan: Plan,
    pub scope: Vec<String>,
    pub ip: Option<IpAddr>,
}

impl Principal {
    /// The caller as an event actor.
    pub fn actor(&self) -> Actor {
        let ip = self.ip.map(|i| i.to_string());
        match &self.user_id {
            Some(u) => Actor::user(u, ip),
            None => Actor {
                kind: "token".into(),
                id: Some(self.token_id.clone()),
                ip,
            },
        }
    }

    /// The user behind the token, or 403 for tokens that have none.
    pub fn user_id(&self) -> Result<&str, Error> {
        self.user_id.as_deref().ok_or_else(|| {
            Error::Forbidden("this endpoint needs a user's token, not a service account's".into())
        })
    }

    /// The organizations the caller may see: the one the token acts in.
    /// (Authentication has checked that the token's user is a member.)
    pub fn organization_ids(&self) -> Vec<String> {
        vec![self.organization_id.clone()]
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Principal>().cloned().ok_or_else(|| {
            ApiError(Error::Unauthenticated(
                "This endpoint needs a token: send 'Authorization: Bearer <token>'.".into(),
            ))
        })
    }
}

/// The outcome of reading the `Authorization` header.
pub enum Presented<'a> {
    None,
    Bearer(&'a str),
    Malformed,
}

pub fn presented(headers: &HeaderMap) -> Presented<'_> {
    match headers.get(header::AUTHORIZATION).map(|v| v.to_str()) {
        None => Presented::None,
        Some(Ok(v)) => match v.split_once(' ') {
            Some((scheme, tok))
                if scheme.eq_ignore_ascii_case("bearer") && !tok.trim().is_empty() =>
            {
                Presented::Bearer(tok.trim())
            }
            _ => Presented::Malformed,
        },
        Some(Err(_)) => Presented::Malformed,
    }
}

/// Resolve a presented token. Unknown, expired and revoked tokens all give
/// the same 401, so that nothing is learnt about which it was.
pub async fn authenticate(
    store: &Store,
    tok: &str,
    ip: Option<IpAddr>,
) -> Result<Principal, Error> {
    let denied = || Error::Unauthenticated("The token is invalid, expired or revoked.".into());
    if !token::looks_valid(tok) {
        return Err(denied());
    }
    let found = store
        .authenticate(&token::hash(tok))
        .await?
        .ok_or_else(denied)?;
    let t = found.token;
    // Remember when a token was last used, at most once a minute.
    let stale = t
        .last_used_at
        .is_none_or(|at| (now() - at).num_seconds() >= 60);
    if stale {
        let (store, id, ip_s) = (store.clone(), t.id.clone(), ip.map(|i| i.to_string()));
        tokio::spawn(async move {
            if let Err(e) = store.touch_token(&id, ip_s.as_deref()).await {
                tracing::debug!(error = %e, "could not record token use");
            }
        });
    }
    Ok(Principal {
        token_id: t.id,
        token_kind: t.kind,
        user_id: t.user_id,
        organization_id: t.organization_id,
        plan: found.plan,
        scope: t.scope,
        ip,
    })
}
