//! Secrets and the app env: values sealed at rest by the vault, opened only
//! to hand them to an instance (and, for env values not marked write-only,
//! to show them to the app's readers).
//!
//! An app's instances receive, as environment variables, its own env, then
//! its organization's secrets, then its app secrets (a later one wins on a
//! name). Which secret versions a release gets is pinned when the release
//! is made (`AppSpec::secrets`, see [`current_pins`]); creating, rotating,
//! deleting or expiring a secret rolls the apps it reaches to a new release
//! (a rolling deployment: zero downtime).

use std::collections::BTreeMap;

use serde_json::json;
use shellwego_api::secrets::{SecretCreate, SecretScope, SecretVersionCreate};
use shellwego_core::list::ListParams;
use shellwego_core::model::AppSpec;
use shellwego_core::time::parse_rfc3339;
use shellwego_core::Error;
use shellwego_store::events::NewEvent;
use shellwego_store::list::{Page, Scope};
use shellwego_store::secrets::{self, NewSecret, Secret, Version, SECRETS};
use shellwego_store::{apps, Conn};

use crate::auth::Principal;
use crate::ctx::ServerCtx;
use crate::vault::Vault;

/// The associated data of a secret version's value.
pub fn secret_aad(id: &str, version: i64) -> String {
    format!("secret:{id}:{version}")
}

/// The associated data of an app's env value.
pub fn env_aad(app_id: &str, name: &str) -> String {
    format!("env:{app_id}:{name}")
}

/// Seal env values given in a request (all of them: a value is plaintext
/// until sealed here, whatever it looks like).
pub async fn seal_env_values(
    ctx: &ServerCtx,
    org: &str,
    app_id: &str,
    values: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, Error> {
    if values.is_empty() {
        return Ok(BTreeMap::new());
    }
    let key = ctx.vault.key_for(&ctx.store, org).await?;
    values
        .iter()
        .map(|(k, v)| Ok((k.clone(), key.seal(&env_aad(app_id, k), v.as_bytes())?)))
        .collect()
}

/// The app's env in plaintext.
pub async fn open_env(
    vault: &Vault,
    db: &mut Conn,
    app_id: &str,
    spec: &AppSpec,
) -> Result<BTreeMap<String, String>, Error> {
    let mut out = BTreeMap::new();
    for (k, v) in &spec.env {
        out.insert(
            k.clone(),
            vault.open_string(db, &env_aad(app_id, k), v).await?,
        );
    }
    Ok(out)
}

/// Replace the app's sealed env values by their plaintext, to show it;
/// write-only ones by an empty string (never shown).
pub async fn reveal_env(ctx: &ServerCtx, a: &mut shellwego_store::apps::App) -> Result<(), Error> {
    if a.spec.env.is_empty() {
        return Ok(());
    }
    let mut db = ctx.store.conn().await?;
    let mut env = open_env(&ctx.vault, &mut db, &a.id, &a.spec).await?;
    for k in &a.spec.env_write_only {
        if let Some(v) = env.get_mut(k) {
            v.clear();
        }
    }
    a.spec.env = env;
    Ok(())
}

/// What an instance of a release (`spec`) gets as its environment: the
/// env, then the pinned organization secrets, then the pinned app secrets.
/// Secrets given out are marked used.
pub async fn instance_env(
    vault: &Vault,
    db: &mut Conn,
    app_id: &str,
    spec: &AppSpec,
) -> Result<BTreeMap<String, String>, Error> {
    let mut env = open_env(vault, db, app_id, spec).await?;
    if spec.secrets.is_empty() {
        return Ok(env);
    }
    let pins: Vec<(String, i64)> = spec.secrets.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let mut values = secrets::pinned_values(db, &pins).await?;
    // Organization secrets first, so an app secret of the same name wins.
    values.sort_by_key(|v| (v.scope == SecretScope::App.as_str(), v.name.clone()));
    for v in &values {
        let plain = vault
            .open_string(db, &secret_aad(&v.secret_id, v.version), &v.value_enc)
            .await?;
        env.insert(v.name.clone(), plain);
    }
    let used: Vec<String> = values.into_iter().map(|v| v.secret_id).collect();
    secrets::touch_used(db, &used).await?;
    Ok(env)
}

/// A secret with its versions (metadata).
pub struct Detailed {
    pub secret: Secret,
    pub versions: Vec<Version>,
}

fn visible(s: Option<Secret>, p: &Principal, id: &str) -> Result<Secret, Error> {
    match s {
        Some(s) if s.organization_id == p.organization_id => Ok(s),
        _ => Err(Error::not_found("secret", id)),
    }
}

pub async fn secret_create(
    ctx: &ServerCtx,
    p: &Principal,
    req: &SecretCreate,
) -> Result<Detailed, Error> {
    let scope = req.scope();
    p.authorize("secrets", "write", req.app_id.as_deref())?;
    let org = p.organization_id.clone();
    if let Some(app_id) = &req.app_id {
        let known = apps::ids_in(
            &mut *ctx.store.conn().await?,
            &org,
            std::slice::from_ref(app_id),
        )
        .await?;
        if known.is_empty() {
            return Err(Error::field(
                "app_id",
                "not_found",
                format!(
                    "there is no app '{app_id}' in organization {org}; use ids from GET /v1/apps"
                ),
            ));
        }
    }
    let expires_at = req.expires_at.as_deref().and_then(parse_rfc3339);
    let key = ctx.vault.key_for(&ctx.store, &org).await?;
    let id = secrets::new_id();
    let sealed = key.seal(&secret_aad(&id, 1), req.value.as_bytes())?;
    let mut tx = ctx.unit().await?;
    let s = secrets::insert(
        &mut tx,
        &id,
        NewSecret {
            organization_id: &org,
            name: &req.name,
            scope: scope.as_str(),
            app_id: req.app_id.as_deref(),
            expires_at,
            created_by: p.user_id.as_deref(),
        },
        &sealed,
    )
    .await?;
    let rolled = crate::controller::secrets::roll_consumers(
        &mut tx,
        &p.actor(),
        &org,
        req.app_id.as_deref(),
        &format!("secret {} created", s.name),
    )
    .await?;
    tx.record(
        NewEvent::info("secret.created", &p.actor(), "secret", &s.id)
            .in_org(&org)
            .meta(json!({"name": s.name, "scope": s.scope, "app_id": s.app_id, "version": 1, "apps_rolled": rolled})),
    );
    let versions = secrets::versions(&mut tx, &s.id).await?;
    tx.commit().await?;
    Ok(Detailed {
        secret: s,
        versions,
    })
}

pub async fn secret_list(
    ctx: &ServerCtx,
    p: &Principal,
    params: &ListParams,
) -> Result<Page<Detailed>, Error> {
    // A token restricted to some apps lists their secrets only.
    let mut scope = Scope::new().is_in("t.organization_id", p.organization_ids());
    match p.restrict_to_apps.first() {
        None => p.authorize("secrets", "read", None)?,
        Some(a) => {
            p.authorize("secrets", "read", Some(a))?;
            scope = scope.is_in("t.app_id", p.restrict_to_apps.clone());
        }
    }
    let page =
        crate::service::list_page(&ctx.store, &SECRETS, &scope, params, secrets::from_row).await?;
    let mut db = ctx.store.conn().await?;
    let mut items = Vec::with_capacity(page.items.len());
    for s in page.items {
        let versions = secrets::versions(&mut db, &s.id).await?;
        items.push(Detailed {
            secret: s,
            versions,
        });
    }
    Ok(Page {
        items,
        pagination: page.pagination,
    })
}

pub async fn secret_get(ctx: &ServerCtx, p: &Principal, id: &str) -> Result<Detailed, Error> {
    let mut db = ctx.store.conn().await?;
    let s = visible(secrets::get(&mut db, id).await?, p, id)?;
    p.authorize("secrets", "read", s.app_id.as_deref())?;
    let versions = secrets::versions(&mut db, id).await?;
    Ok(Detailed {
        secret: s,
        versions,
    })
}

/// A new version: the apps it reaches roll to it.
pub async fn secret_rotate(
    ctx: &ServerCtx,
    p: &Principal,
    id: &str,
    req: &SecretVersionCreate,
) -> Result<Detailed, Error> {
    let before = visible(
        secrets::get(&mut *ctx.store.conn().await?, id).await?,
        p,
        id,
    )?;
    p.authorize("secrets", "write", before.app_id.as_deref())?;
    let key = ctx
        .vault
        .key_for(&ctx.store, &before.organization_id)
        .await?;
    let mut tx = ctx.unit().await?;
    let s = visible(secrets::get_for_update(&mut tx, id).await?, p, id)?;
    let version = s.version + 1;
    let sealed = key.seal(&secret_aad(id, version), req.value.as_bytes())?;
    let expires = req
        .expires_at
        .as_deref()
        .map(|e| {
            parse_rfc3339(e).ok_or_else(|| {
                Error::field("expires_at", "invalid_value", "must be an RFC 3339 time")
            })
        })
        .transpose()?;
    secrets::add_version(
        &mut tx,
        &s,
        &sealed,
        p.user_id.as_deref(),
        expires.map(Some),
    )
    .await?;
    let rolled = crate::controller::secrets::roll_consumers(
        &mut tx,
        &p.actor(),
        &s.organization_id,
        s.app_id.as_deref(),
        &format!("secret {} rotated to version {version}", s.name),
    )
    .await?;
    tx.record(
        NewEvent::info("secret.rotated", &p.actor(), "secret", id)
            .in_org(&s.organization_id)
            .meta(json!({"name": s.name, "scope": s.scope, "app_id": s.app_id, "version": version, "apps_rolled": rolled})),
    );
    let secret = secrets::get(&mut tx, id)
        .await?
        .ok_or_else(|| Error::not_found("secret", id))?;
    let versions = secrets::versions(&mut tx, id).await?;
    tx.commit().await?;
    Ok(Detailed { secret, versions })
}

/// Delete a secret: the apps it reached roll without it.
pub async fn secret_delete(ctx: &ServerCtx, p: &Principal, id: &str) -> Result<(), Error> {
    let mut tx = ctx.unit().await?;
    let s = visible(secrets::get_for_update(&mut tx, id).await?, p, id)?;
    p.authorize("secrets", "write", s.app_id.as_deref())?;
    secrets::delete(&mut tx, id).await?;
    let rolled = crate::controller::secrets::roll_consumers(
        &mut tx,
        &p.actor(),
        &s.organization_id,
        s.app_id.as_deref(),
        &format!("secret {} deleted", s.name),
    )
    .await?;
    tx.record(
        NewEvent::info("secret.deleted", &p.actor(), "secret", id)
            .in_org(&s.organization_id)
            .meta(json!({"name": s.name, "scope": s.scope, "app_id": s.app_id, "apps_rolled": rolled})),
    );
    tx.commit().await
}

/// Seal every env value stored in plaintext (apps and releases written
/// before env was encrypted at rest), once, at start. Idempotent: sealed
/// documents are recognised by their spec version.
pub async fn seal_stored_env(ctx: &ServerCtx) -> Result<usize, Error> {
    let legacy = {
        let mut db = ctx.store.conn().await?;
        shellwego_store::apps::legacy_env_specs(&mut db).await?
    };
    if legacy.is_empty() {
        return Ok(0);
    }
    let mut n = 0;
    let mut keys = BTreeMap::new();
    for (org, _, _, _) in &legacy {
        if !keys.contains_key(org) {
            keys.insert(org.clone(), ctx.vault.key_for(&ctx.store, org).await?);
        }
    }
    let mut tx = ctx.begin().await?;
    for (org, app_id, release, mut spec) in legacy {
        let key = &keys[&org];
        for (k, v) in spec.env.iter_mut() {
            *v = key.seal(&env_aad(&app_id, k), v.as_bytes())?;
        }
        shellwego_store::apps::set_sealed_spec(&mut tx, &app_id, release, &spec).await?;
        n += 1;
    }
    shellwego_store::commit(tx).await?;
    ctx.store.compact_log().await?;
    Ok(n)
}
