//! Who is calling: the bearer token of a `/v1` request, resolved once per
//! request by the gate middleware into a `Principal`.

use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use shellwego_core::plan::Plan;
use shellwego_core::rbac;
use shellwego_core::time::now;
use shellwego_core::token::{self, TokenKind};
use shellwego_core::Error;
use shellwego_store::events::Actor;
use shellwego_store::{tokens, Store};

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
    /// The holder's role in `organization_id`.
    pub role: String,
    /// The membership's resource restrictions (empty: none).
    pub member_resources: Vec<String>,
    /// The token only sees these apps (empty: all).
    pub restrict_to_apps: Vec<String>,
    /// The organization enforces MFA and this user has none.
    pub mfa_required: bool,
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

    /// The one authorization check: may the caller do `action` on
    /// `resource` (optionally one resource `id`) in its organization?
    /// Effective rights = token scope ∩ role rights ∩ membership
    /// restrictions ∩ the token's app restriction. A specific resource the
    /// caller may not see is "not found", not "forbidden".
    pub fn authorize(&self, resource: &str, action: &str, id: Option<&str>) -> Result<(), Error> {
        let perm = format!("{resource}:{action}");
        if !rbac::role_allows(&self.role, resource, action) {
            return Err(Error::Forbidden(format!(
                "Your role '{}' does not allow {perm}.",
                self.role
            )));
        }
        if !rbac::scope_allows(&self.scope, resource, action) {
            return Err(Error::Forbidden(format!(
                "This token's scope does not include {perm}."
            )));
        }
        if !rbac::restrictions_allow(&self.member_resources, resource, action, id) {
            return Err(match id {
                Some(i) => Error::not_found("resource", i),
                None => Error::Forbidden(format!(
                    "Your membership is restricted and does not include {perm}."
                )),
            });
        }
        if !self.restrict_to_apps.is_empty() {
            match resource {
                "apps" => {
                    if let Some(i) = id {
                        if !self.restrict_to_apps.iter().any(|a| a == i) {
                            return Err(Error::not_found("app", i));
                        }
                    }
                }
                // A secret is its app's (`id` is the app): an organization
                // secret reaches every app, so it is beyond a token
                // restricted to some.
                "secrets" => match id {
                    Some(i) if self.restrict_to_apps.iter().any(|a| a == i) => {}
                    Some(i) => return Err(Error::not_found("app", i)),
                    None => {
                        return Err(Error::Forbidden(
                            "This token is restricted to some apps; organization secrets reach every app. Use an app secret (app_id) of one of its apps.".into(),
                        ))
                    }
                },
                // Webhooks see every app's events.
                "webhooks" => {
                    return Err(Error::Forbidden(
                        "This token is restricted to some apps; webhooks receive every app's events.".into(),
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Managing one's own account (tokens, password, MFA) takes a personal
    /// access or session token whose scope allows `users:write`. Returns
    /// the user id.
    pub fn self_service(&self) -> Result<&str, Error> {
        let uid = self.user_id()?;
        if !matches!(self.token_kind, TokenKind::Pat | TokenKind::Session) {
            return Err(Error::Forbidden(
                "Managing your account needs a personal access or session token.".into(),
            ));
        }
        if !rbac::scope_allows(&self.scope, "users", "write") {
            return Err(Error::Forbidden(
                "This token's scope does not include users:write.".into(),
            ));
        }
        Ok(uid)
    }

    /// Could this caller hand out a token with `scope` and `restrict_to_apps`?
    /// Only if it can do no more than the caller (an empty scope means the
    /// caller's own; an empty app list the caller's own restriction).
    pub fn grantable(
        &self,
        scope: &[String],
        restrict_to_apps: &[String],
    ) -> Result<(Vec<String>, Vec<String>), Error> {
        let scope: Vec<String> = if scope.is_empty() {
            self.scope.clone()
        } else {
            scope.to_vec()
        };
        if let Some(extra) = scope.iter().find(|s| {
            s.split_once(':')
                .is_none_or(|(r, a)| !rbac::scope_allows(&self.scope, r, a))
        }) {
            return Err(Error::Forbidden(format!(
                "This token's scope does not include {extra}, so it cannot grant it."
            )));
        }
        // A token says what it can do: no scope beyond the holder's role,
        // which would be refused on use anyway.
        let beyond: Vec<&str> = scope
            .iter()
            .filter(|s| !rbac::role_grants_scope(&self.role, s))
            .map(String::as_str)
            .collect();
        if !beyond.is_empty() {
            return Err(Error::Forbidden(format!(
                "Your role '{}' does not allow {}; ask for a token within your role's rights.",
                self.role,
                beyond.join(", ")
            )));
        }
        let apps = match (
            self.restrict_to_apps.is_empty(),
            restrict_to_apps.is_empty(),
        ) {
            (true, _) => restrict_to_apps.to_vec(),
            (false, true) => self.restrict_to_apps.clone(),
            (false, false) => {
                if let Some(a) = restrict_to_apps
                    .iter()
                    .find(|a| !self.restrict_to_apps.contains(a))
                {
                    return Err(Error::not_found("app", a.as_str()));
                }
                restrict_to_apps.to_vec()
            }
        };
        Ok((scope, apps))
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

impl<S: Send + Sync> axum::extract::OptionalFromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Option<Self>, ApiError> {
        Ok(parts.extensions.get::<Principal>().cloned())
    }
}

/// The client's address as the request-context layer found it: the TCP
/// peer, or the address a trusted proxy forwarded.
#[derive(Debug, Clone, Copy)]
pub struct RealIp(pub IpAddr);

/// The client's IP, when known (see [`RealIp`]).
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        Ok(ClientIp(parts.extensions.get::<RealIp>().map(|c| c.0)))
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
    let mut db = store.conn().await?;
    let found = tokens::authenticate(&mut db, &token::hash(tok))
        .await?
        .ok_or_else(denied)?;
    // Single-use tokens are used up by this request.
    if found.token.kind == TokenKind::Temp && !tokens::consume(&mut db, &found.token.id).await? {
        return Err(denied());
    }
    // Back to the pool before the request's own work begins.
    drop(db);
    let t = found.token;
    // Remember when a token was last used, at most once a minute.
    let stale = t
        .last_used_at
        .is_none_or(|at| (now() - at).num_seconds() >= 60);
    if stale {
        let (store, id, ip_s) = (store.clone(), t.id.clone(), ip.map(|i| i.to_string()));
        tokio::spawn(async move {
            let touched = match store.conn().await {
                Ok(mut db) => tokens::touch(&mut db, &id, ip_s.as_deref()).await,
                Err(e) => Err(e),
            };
            if let Err(e) = touched {
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
        role: found.role,
        member_resources: found.member_resources,
        restrict_to_apps: t.restrict_to_apps,
        mfa_required: found.mfa_required,
        ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(role: &str, scope: &[&str], resources: &[&str], apps: &[&str]) -> Principal {
        let v = |x: &[&str]| x.iter().map(|s| s.to_string()).collect();
        Principal {
            token_id: "tok_x".into(),
            token_kind: TokenKind::Pat,
            user_id: Some("usr_x".into()),
            organization_id: "org_x".into(),
            plan: Plan::Free,
            scope: v(scope),
            role: role.into(),
            member_resources: v(resources),
            restrict_to_apps: v(apps),
            mfa_required: false,
            ip: None,
        }
    }

    #[test]
    fn effective_rights_are_the_intersection() {
        // Role.
        assert!(principal("developer", &[], &[], &[])
            .authorize("apps", "write", None)
            .is_ok());
        assert!(matches!(
            principal("viewer", &[], &[], &[]).authorize("apps", "write", None),
            Err(Error::Forbidden(_))
        ));
        // Scope.
        let p = principal("owner", &["apps:read"], &[], &[]);
        assert!(p.authorize("apps", "read", Some("app_a")).is_ok());
        assert!(matches!(
            p.authorize("apps", "write", Some("app_a")),
            Err(Error::Forbidden(_))
        ));
        // Membership restrictions: other apps are not found; other kinds forbidden.
        let p = principal("developer", &[], &["app:app_a"], &[]);
        assert!(p.authorize("apps", "write", Some("app_a")).is_ok());
        assert!(matches!(
            p.authorize("apps", "read", Some("app_b")),
            Err(Error::NotFound { .. })
        ));
        assert!(matches!(
            p.authorize("volumes", "read", None),
            Err(Error::Forbidden(_))
        ));
        // A token restricted to apps: every other app is not found.
        let p = principal("owner", &[], &[], &["app_a"]);
        assert!(p.authorize("apps", "read", Some("app_a")).is_ok());
        assert!(matches!(
            p.authorize("apps", "read", Some("app_b")),
            Err(Error::NotFound { .. })
        ));
    }
}
