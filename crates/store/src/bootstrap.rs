//! First start on an empty store: an organization, its owner
//! `admin@localhost` and a personal access token, all in one transaction.

use serde_json::json;
use shellwego_core::plan::Plan;
use shellwego_core::time::{now, to_micros};
use shellwego_core::token::TokenKind;
use shellwego_core::{password, Error};

use crate::events::{self, Actor, NewEvent};
use crate::tokens::NewTokenSpec;
use crate::{db_err, orgs, tokens, users, Conn, Store};

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

/// Has this store been bootstrapped already?
pub async fn is_bootstrapped(db: &mut Conn) -> Result<bool, Error> {
    let row = sqlx::query("SELECT value FROM system_state WHERE key = $1")
        .bind(MARKER)
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(row.is_some())
}

/// Mark the store bootstrapped, in the bootstrap's transaction. False: it
/// was already (a concurrent bootstrap conflicts here).
async fn claim(db: &mut Conn) -> Result<bool, Error> {
    let claimed =
        sqlx::query("INSERT INTO system_state (key, value, updated_at) VALUES ($1, $2, $3)")
            .bind(MARKER)
            .bind("1")
            .bind(to_micros(now()))
            .execute(&mut *db)
            .await;
    match claimed {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(d)) if d.is_unique_violation() => Ok(false),
        Err(e) => Err(db_err(e)),
    }
}

/// Bootstrap an empty store, in a transaction of its own (it is a unit
/// of work, not a query: it takes the store to begin it).
/// `persist_token` is called with the new admin token before the
/// transaction commits: if it fails, nothing is stored and the next start
/// tries again. Returns `None` when the store was bootstrapped already (by
/// an earlier start or a concurrent replica).
pub async fn run(
    store: &Store,
    admin_password: Option<&str>,
    persist_token: impl FnOnce(&str) -> Result<(), Error>,
) -> Result<Option<Bootstrapped>, Error> {
    {
        let mut c = store.conn().await?;
        if is_bootstrapped(&mut c).await? {
            return Ok(None);
        }
    }
    let random_password = admin_password.is_none();
    let pw = admin_password
        .map(str::to_string)
        .unwrap_or_else(password::random);
    let pw_hash = password::hash(&pw)?;

    let mut tx = store.begin().await?;
    // The marker row first: a concurrent bootstrap conflicts here.
    if !claim(&mut tx).await? {
        return Ok(None);
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
