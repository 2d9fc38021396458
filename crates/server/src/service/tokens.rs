//! Personal access tokens of the calling user: mint, list, revoke.

use std::time::Duration;

use serde_json::json;
use shellwego_api::tokens::TokenCreateRequest;
use shellwego_core::list::ListParams;
use shellwego_core::time::now;
use shellwego_core::token::TokenKind;
use shellwego_core::{Error, FieldError};
use shellwego_store::apps;
use shellwego_store::events::NewEvent;
use shellwego_store::list::{Page, Scope};
use shellwego_store::tokens::{self, NewTokenSpec, Token, TOKENS};

use crate::auth::Principal;
use crate::ctx::ServerCtx;

/// Mint a personal access token for the calling user.
pub async fn token_create(
    ctx: &ServerCtx,
    p: &Principal,
    req: &TokenCreateRequest,
) -> Result<(Token, String), Error> {
    let store = &ctx.store;
    let uid = p.self_service()?;
    // A token for another organization the user belongs to acts there,
    // with the user's role there.
    let m = match &req.organization_id {
        Some(o) => super::orgs::as_member(ctx, p, o).await?,
        None => p.clone(),
    };
    let org = m.organization_id.clone();
    // A token can only mint tokens that can do no more than itself, and
    // than the holder's role.
    let (scope, restrict) = m.grantable(&req.scope, &req.restrict_to_apps)?;
    // The apps it is restricted to must be apps of that organization.
    let known = apps::ids_in(&mut *store.conn().await?, &org, &restrict).await?;
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
    let kind = req.token_type.map_or(TokenKind::Pat, TokenKind::from);
    let lifetime = match kind {
        // Temporary tokens live 15 minutes at most, and for one request.
        TokenKind::Temp => TokenKind::Temp.default_lifespan(),
        _ => req
            .expires_in_secs()
            .map(Duration::from_secs)
            .unwrap_or(TokenKind::Pat.default_lifespan()),
    };
    let expires_at = now() + chrono::Duration::from_std(lifetime).map_err(Error::internal)?;
    let mut tx = ctx.unit().await?;
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
    tx.record(NewEvent::info("token.created", &p.actor(), "token", &tok.id)
            .in_org(&org)
            .meta(json!({"name": tok.name, "scope": tok.scope, "expires_at": shellwego_core::time::rfc3339(expires_at)})));
    tx.commit().await?;
    Ok((tok, secret))
}

/// The calling user's tokens (never their secrets).
pub async fn token_list(
    ctx: &ServerCtx,
    p: &Principal,
    params: &ListParams,
) -> Result<Page<Token>, Error> {
    let store = &ctx.store;
    let uid = p.user_id()?;
    let scope = Scope::new().is_in("t.user_id", [uid.to_string()]);
    crate::service::list_page(store, &TOKENS, &scope, params, tokens::from_row).await
}

/// Revoke one of the calling user's tokens; another user's is "not found".
pub async fn token_revoke(ctx: &ServerCtx, p: &Principal, token_id: &str) -> Result<(), Error> {
    let _store = &ctx.store;
    let uid = p.self_service()?;
    let mut tx = ctx.unit().await?;
    if !tokens::revoke(&mut tx, token_id, uid).await? {
        return Err(Error::not_found("token", token_id));
    }
    tx.record(
        NewEvent::info("token.revoked", &p.actor(), "token", token_id).in_org(&p.organization_id),
    );
    tx.commit().await
}
