//! Domain operations behind the handlers. Each one scopes what it reads to
//! what the caller may see, so no handler can forget to.

use std::time::Duration;

use serde_json::json;
use shellwego_api::tokens::TokenCreateRequest;
use shellwego_core::list::ListParams;
use shellwego_core::plan::Plan;
use shellwego_core::time::now;
use shellwego_core::token::TokenKind;
use shellwego_core::{Error, FieldError};
use shellwego_store::events::{self, Event, NewEvent, EVENTS};
use shellwego_store::list::{Page, Scope};
use shellwego_store::nodes::{self, Node, NODES};
use shellwego_store::orgs::Organization;
use shellwego_store::tokens::{self, NewTokenSpec, Token, TOKENS};
use shellwego_store::users::User;
use shellwego_store::{commit, Store};

use crate::auth::Principal;

/// The calling user with their organizations and roles.
pub async fn user_current(
    store: &Store,
    p: &Principal,
) -> Result<(User, Vec<(Organization, String)>), Error> {
    let uid = p.user_id()?;
    let user = store
        .user(uid)
        .await?
        .ok_or_else(|| Error::Unauthenticated("the token's user no longer exists".into()))?;
    let orgs = store.memberships_of(uid).await?;
    Ok((user, orgs))
}

/// The plan whose quotas apply to the caller.
pub fn plan_of(p: &Principal) -> Plan {
    p.plan
}

/// Mint a personal access token for the calling user.
pub async fn token_create(
    store: &Store,
    p: &Principal,
    req: &TokenCreateRequest,
) -> Result<(Token, String), Error> {
    let uid = p.self_service()?;
    // A token for another organization the user belongs to acts there,
    // with the user's role there.
    let m = match &req.organization_id {
        Some(o) => self::orgs::as_member(store, p, o).await?,
        None => p.clone(),
    };
    let org = m.organization_id.clone();
    // A token can only mint tokens that can do no more than itself, and
    // than the holder's role.
    let (scope, restrict) = m.grantable(&req.scope, &req.restrict_to_apps)?;
    // The apps it is restricted to must be apps of that organization.
    let known = store.app_ids_in(&org, &restrict).await?;
    let unknown: Vec<FieldError> = restrict
        .iter()
        .enumerate()
        .filter(|(_, a)| !known.contains(a))
        .map(|(i, a)| {
            FieldError::new(
                format!("restrict_to_apps[{i}]"),
                "not_found",
                format!("there is no app '{a}' in organization {org}; use ids from GET /v1/apps"),
            )
            .with_value(a.clone())
        })
        .collect();
    if !unknown.is_empty() {
        return Err(Error::invalid(unknown));
    }
    let kind = match req.token_type.as_deref() {
        Some("temporary_token") => TokenKind::Temp,
        _ => TokenKind::Pat,
    };
    let lifetime = match kind {
        // Temporary tokens live 15 minutes at most, and for one request.
        TokenKind::Temp => TokenKind::Temp.default_lifespan(),
        _ => req
            .expires_in_secs()
            .map(Duration::from_secs)
            .unwrap_or(TokenKind::Pat.default_lifespan()),
    };
    let expires_at = now() + chrono::Duration::from_std(lifetime).map_err(Error::internal)?;
    let mut tx = store.begin().await?;
    let (tok, secret) = tokens::create(
        &mut tx,
        NewTokenSpec {
            kind,
            name: req.name.trim(),
            user_id: Some(uid),
            service_account_id: None,
            organization_id: &org,
            scope: &scope,
            restrict_to_apps: &restrict,
            expires_at: Some(expires_at),
        },
    )
    .await?;
    events::record(
        &mut tx,
        NewEvent::info("token.created", &p.actor(), "token", &tok.id)
            .in_org(&org)
            .meta(json!({"name": tok.name, "scope": tok.scope, "expires_at": shellwego_core::time::rfc3339(expires_at)})),
    )
    .await?;
    commit(tx).await?;
    Ok((tok, secret))
}

/// The calling user's tokens (never their secrets).
pub async fn token_list(
    store: &Store,
    p: &Principal,
    params: &ListParams,
) -> Result<Page<Token>, Error> {
    let uid = p.user_id()?;
    let scope = Scope::new().is_in("t.user_id", [uid.to_string()]);
    store.list(&TOKENS, &scope, params, tokens::from_row).await
}

/// Revoke one of the calling user's tokens; another user's is "not found".
pub async fn token_revoke(store: &Store, p: &Principal, token_id: &str) -> Result<(), Error> {
    let uid = p.self_service()?;
    let mut tx = store.begin().await?;
    if !tokens::revoke(&mut tx, token_id, uid).await? {
        return Err(Error::not_found("token", token_id));
    }
    events::record(
        &mut tx,
        NewEvent::info("token.revoked", &p.actor(), "token", token_id).in_org(&p.organization_id),
    )
    .await?;
    commit(tx).await
}

/// Events of the caller's organizations.
pub async fn event_list(
    store: &Store,
    p: &Principal,
    params: &ListParams,
) -> Result<Page<Event>, Error> {
    p.authorize("events", "read", None)?;
    let orgs = p.organization_ids();
    let scope = Scope::new().is_in("t.organization_id", orgs);
    store.list(&EVENTS, &scope, params, events::from_row).await
}

/// Nodes of the caller's organizations.
pub async fn node_list(
    store: &Store,
    p: &Principal,
    params: &ListParams,
) -> Result<Page<Node>, Error> {
    p.authorize("nodes", "read", None)?;
    let orgs = p.organization_ids();
    let scope = Scope::new().is_in("t.organization_id", orgs);
    let mut page = store.list(&NODES, &scope, params, nodes::from_row).await?;
    store.load_node_labels(&mut page.items).await?;
    Ok(page)
}

/// One node, if the caller's organizations have it (404 otherwise, never 403).
pub async fn node_get(store: &Store, p: &Principal, node_id: &str) -> Result<Node, Error> {
    p.authorize("nodes", "read", Some(node_id))?;
    let orgs = p.organization_ids();
    store
        .node(node_id, &orgs)
        .await?
        .ok_or_else(|| Error::not_found("node", node_id))
}

pub mod apps;
pub mod controller;
pub mod deploy;
pub mod identity;
pub mod node_agents;
pub mod orgs;
