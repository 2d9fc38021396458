//! First start on an empty store: an organization, its owner
//! `admin@localhost` and a personal access token, all in one transaction.

use serde_json::json;
use shellwego_core::plan::Plan;
use shellwego_core::time::{now, to_micros};
use shellwego_core::token::TokenKind;
use shellwego_core::{password, Error};
use sqlx::Row;

use crate::events::{self, Actor, NewEvent};
use crate::tokens::NewTokenSpec;
use crate::{db_err, orgs, tokens, users, Store};

pub const ADMIN_EMAIL: &str = "admin@localhost";
const MARKER: &str = "bootstrapped";

#[derive(Debug)]
pub struct Bootstrapped {
    pub organization_id: String,
    pub user_id: String,
    pub token_id: String,
    /// True when no password was given and a random one was set.
    pub random_password: bool,
}

impl Store {
    /// Has this store been bootstrapped already?
    pub async fn is_bootstrapped(&self) -> Result<bool, Error> {
        let row = sqlx::query("SELECT value FROM system_state WHERE key = $1")
            .bind(MARKER)
            .fetch_optional(self.pool())
            .await
            .map_err(db_err)?;
        Ok(row.is_some())
    }

    /// Bootstrap an empty store. `persist_token` is called with the new
    /// admin token before the transaction commits: if it fails, nothing is
    /// stored and the next start tries again. Returns `None` when the store
    /// was bootstrapped already (by an earlier start or a concurrent replica).
    pub async fn bootstrap(
        &self,
        admin_password: Option<&str>,
        persist_token: impl FnOnce(&str) -> Result<(), Error>,
    ) -> Result<Option<Bootstrapped>, Error> {
        if self.is_bootstrapped().await? {
            return Ok(None);
        }
        let random_password = admin_password.is_none();
        let pw = admin_password
            .map(str::to_string)
            .unwrap_or_else(password::random);
        let pw_hash = password::hash(&pw)?;

        let mut tx = self.begin().await?;
        // The marker row first: a concurrent bootstrap conflicts here.
        let claimed =
            sqlx::query("INSERT INTO system_state (key, value, updated_at) VALUES ($1, $2, $3)")
                .bind(MARKER)
                .bind("1")
                .bind(to_micros(now()))
                .execute(&mut *tx)
                .await;
        match claimed {
            Ok(_) => {}
            Err(sqlx::Error::Database(d)) if d.is_unique_violation() => return Ok(None),
            Err(e) => return Err(db_err(e)),
        }
        let org = orgs::create(&mut tx, "Default", "default", Plan::Enterprise).await?;
        let user = users::create(&mut tx, ADMIN_EMAIL, "Administrator", &pw_hash).await?;
        orgs::add_member(&mut tx, &org.id, &user.id, "owner").await?;
        let (tok, secret) = tokens::create(
            &mut tx,
            NewTokenSpec {
                kind: TokenKind::Pat,
                name: "bootstrap admin token",
                user_id: Some(&user.id),
                service_account_id: None,
                organization_id: &org.id,
                scope: &[],
                restrict_to_apps: &[],
                expires_at: None,
            },
        )
        .await?;
        let sys = Actor::system();
        events::record(
            &mut tx,
            NewEvent::info("organization.created", &sys, "organization", &org.id)
                .in_org(&org.id)
                .meta(json!({"bootstrap": true})),
        )
        .await?;
        events::record(
            &mut tx,
            NewEvent::info("user.created", &sys, "user", &user.id)
                .in_org(&org.id)
                .meta(json!({"email": ADMIN_EMAIL, "role": "owner"})),
        )
        .await?;
        events::record(
            &mut tx,
            NewEvent::info("token.created", &sys, "token", &tok.id)
                .in_org(&org.id)
                .meta(json!({"name": tok.name, "user_id": user.id})),
        )
        .await?;
        persist_token(&secret)?;
        crate::commit(tx).await?;
        Ok(Some(Bootstrapped {
            organization_id: org.id,
            user_id: user.id,
            token_id: tok.id,
            random_password,
        }))
    }

    /// Number of rows in `system_state` (tests: a restart does not bootstrap again).
    pub async fn count_organizations(&self) -> Result<i64, Error> {
        let row = sqlx::query("SELECT COUNT(*) AS n FROM organizations")
            .fetch_one(self.pool())
            .await
            .map_err(db_err)?;
        row.try_get::<i64, _>("n").map_err(db_err)
    }
}
