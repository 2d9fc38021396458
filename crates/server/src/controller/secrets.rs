//! Secrets over time: the apps a secret reaches roll to a new release when
//! it changes (see `crate::service::secrets`), and the expiry sweep (the
//! replica that leads it): a `secret.expiring` warning 7 days before a
//! secret expires, its apps rolled without it when it has, and deleted
//! secrets removed once no release pins them.

use std::time::Duration;

use serde_json::json;
use shellwego_core::model::Strategy;
use shellwego_core::time::now;
use shellwego_core::Error;
use shellwego_store::events::{Actor, NewEvent, Severity};
use shellwego_store::{apps, secrets, Tx};

use super::reconcile::reconcile_in;
use super::rollout as deploy;
use super::Controller;
use crate::bus::Topic;
use crate::ctx::{ServerCtx, Unit, DESIRED};

/// Roll every app of `org` (or only `app`) whose pinned secrets differ
/// from its current ones to a new release: a rolling deployment. Returns
/// the apps rolled.
pub async fn roll_consumers(
    tx: &mut Unit<'_>,
    actor: &Actor,
    org: &str,
    app: Option<&str>,
    reason: &str,
) -> Result<Vec<String>, Error> {
    let ids = match app {
        Some(a) => vec![a.to_string()],
        None => apps::ids_of_org(tx, org).await?,
    };
    let mut rolled = vec![];
    for id in ids {
        let Some(mut a) = apps::get_for_update(tx, &id).await? else {
            continue;
        };
        if secrets::current_pins(tx, org, &id).await? == a.spec.secrets {
            continue;
        }
        tx.touch(DESIRED);
        deploy::start(
            tx,
            actor,
            &mut a,
            deploy::Target::New,
            Strategy::Rolling,
            deploy::Options::default(),
            reason,
            None,
        )
        .await?;
        apps::update(tx, &a).await?;
        reconcile_in(tx, &id).await?;
        rolled.push(id);
    }
    Ok(rolled)
}

pub struct SecretExpiry;

impl Controller for SecretExpiry {
    const NAME: &'static str = "secret-expiry";

    fn wakes_on(&self) -> &'static [Topic] {
        &[]
    }

    fn every(&self, _: &ServerCtx) -> Duration {
        Duration::from_secs(30)
    }

    async fn pass(&mut self, ctx: &ServerCtx) -> Result<&'static [Topic], Error> {
        sweep(ctx).await?;
        Ok(&[])
    }
}

/// How long before its expiry a secret is warned about.
pub const EXPIRY_WARNING: chrono::Duration = chrono::Duration::days(7);

/// One pass of the expiry sweep: warn about secrets expiring within 7
/// days (`secret.expiring`, once), roll the apps of expired ones without
/// them (`secret.expired`), and remove deleted secrets no release pins any
/// more. Returns how many secrets it acted on.
pub async fn sweep(ctx: &ServerCtx) -> Result<usize, Error> {
    let mut n = 0;
    let at = now();
    let warn =
        secrets::expiring_unwarned(&mut *ctx.store.conn().await?, at + EXPIRY_WARNING).await?;
    for s in warn {
        if s.expires_at.is_some_and(|e| e <= at) {
            continue; // expired already: handled below
        }
        let mut tx = ctx.unit().await?;
        secrets::set_warned(&mut tx, &s.id).await?;
        tx.record(
            NewEvent::info("secret.expiring", &Actor::system(), "secret", &s.id)
                .in_org(&s.organization_id)
                .severity(Severity::Warning)
                .meta(json!({"name": s.name, "scope": s.scope, "app_id": s.app_id, "expires_at": s.expires_at.map(shellwego_core::time::rfc3339)})),
        );
        tx.commit().await?;
        n += 1;
    }
    let expired = secrets::expired_unhandled(&mut *ctx.store.conn().await?, at).await?;
    for s in expired {
        let mut tx = ctx.unit().await?;
        secrets::set_expired_handled(&mut tx, &s.id).await?;
        let rolled = roll_consumers(
            &mut tx,
            &Actor::system(),
            &s.organization_id,
            s.app_id.as_deref(),
            &format!("secret {} expired", s.name),
        )
        .await?;
        tx.record(
            NewEvent::info("secret.expired", &Actor::system(), "secret", &s.id)
                .in_org(&s.organization_id)
                .severity(Severity::Warning)
                .meta(json!({"name": s.name, "scope": s.scope, "app_id": s.app_id, "apps_rolled": rolled})),
        );
        tx.commit().await?;
        n += 1;
    }
    // Reading every release's spec only when there is something to purge.
    if secrets::any_deleted(&mut *ctx.store.conn().await?).await? {
        let mut tx = ctx.begin().await?;
        let pinned = pinned_secret_ids(&mut tx).await?;
        n += secrets::purge_deleted(&mut tx, &pinned).await? as usize;
        shellwego_store::commit(tx).await?;
    }
    Ok(n)
}

/// The secrets pinned by a release some instance runs.
async fn pinned_secret_ids(tx: &mut Tx) -> Result<Vec<String>, Error> {
    let mut ids: Vec<String> = shellwego_store::deployments::specs_in_use(tx)
        .await?
        .into_iter()
        .flat_map(|s| s.secrets.into_keys())
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}
