//! API tokens. Only hashes are stored; see `shellwego_core::token`.

use shellwego_core::list::{Dir, FieldSpec, Kind, ListSchema};
use shellwego_core::plan::Plan;
use shellwego_core::time::{from_micros, now, to_micros, Timestamp};
use shellwego_core::token::{self, NewToken, TokenKind};
use shellwego_core::{id, Error};
use sqlx::any::AnyRow;

use crate::list::{FieldSql, Resource};
use crate::{db_err, to_json, Conn};

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: String,
    pub kind: TokenKind,
    pub name: String,
    pub hint: String,
    pub user_id: Option<String>,
    pub service_account_id: Option<String>,
    pub organization_id: String,
    pub scope: Vec<String>,
    pub restrict_to_apps: Vec<String>,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
    pub last_used_at: Option<Timestamp>,
    pub last_used_ip: Option<String>,
}

/// What authenticating a token yields: the token, its organization's plan
/// and settings, and the rights of whoever holds it there.
#[derive(Debug, Clone, PartialEq)]
pub struct Authenticated {
    pub token: Token,
    pub plan: Plan,
    /// The holder's role in the token's organization (member or service account).
    pub role: String,
    /// The membership's resource restrictions (empty: none).
    pub member_resources: Vec<String>,
    /// The organization requires MFA and the token's user has none.
    pub mfa_required: bool,
}

pub struct NewTokenSpec<'a> {
    pub kind: TokenKind,
    pub name: &'a str,
    pub user_id: Option<&'a str>,
    pub service_account_id: Option<&'a str>,
    pub organization_id: &'a str,
    pub scope: &'a [String],
    pub restrict_to_apps: &'a [String],
    pub expires_at: Option<Timestamp>,
}

const COLUMNS: &str =
    "t.id, t.kind, t.name, t.hint, t.user_id, t.service_account_id, t.organization_id, t.scope, t.restrict_to_apps, t.created_at, t.expires_at, t.revoked_at, t.last_used_at, t.last_used_ip";

/// A `tokens` row as stored (`COLUMNS`).
#[derive(sqlx::FromRow)]
struct TokenRow {
    id: String,
    kind: TokenKind,
    name: String,
    hint: String,
    user_id: Option<String>,
    service_account_id: Option<String>,
    organization_id: String,
    scope: String,
    restrict_to_apps: String,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    last_used_at: Option<i64>,
    last_used_ip: Option<String>,
}

impl TryFrom<TokenRow> for Token {
    type Error = Error;
    fn try_from(r: TokenRow) -> Result<Token, Error> {
        Ok(Token {
            scope: crate::doc("tokens", &r.id, "scope", &r.scope)?,
            restrict_to_apps: crate::doc("tokens", &r.id, "restrict_to_apps", &r.restrict_to_apps)?,
            id: r.id,
            kind: r.kind,
            name: r.name,
            hint: r.hint,
            user_id: r.user_id,
            service_account_id: r.service_account_id,
            organization_id: r.organization_id,
            created_at: crate::time(r.created_at),
            expires_at: crate::opt_time(r.expires_at),
            revoked_at: crate::opt_time(r.revoked_at),
            last_used_at: crate::opt_time(r.last_used_at),
            last_used_ip: r.last_used_ip,
        })
    }
}

/// A token from a row of `COLUMNS`.
pub fn from_row(row: &AnyRow) -> Result<Token, Error> {
    crate::decode::<TokenRow, _>(row)
}

/// Mint a token and store its hash. Returns the record and the secret,
/// which is shown once and never stored.
pub async fn create(db: &mut Conn, spec: NewTokenSpec<'_>) -> Result<(Token, String), Error> {
    let NewToken { secret, hash, hint } = token::generate(spec.kind);
    let id = id::new_id("tok");
    let created = from_micros(to_micros(now()));
    let expires = spec.expires_at.map(|t| from_micros(to_micros(t)));
    sqlx::query(
        "INSERT INTO tokens (id, kind, token_hash, hint, name, user_id, organization_id, scope, restrict_to_apps, created_at, expires_at, service_account_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&id)
    .bind(spec.kind)
    .bind(&hash)
    .bind(&hint)
    .bind(spec.name)
    .bind(spec.user_id)
    .bind(spec.organization_id)
    .bind(to_json(&spec.scope))
    .bind(to_json(&spec.restrict_to_apps))
    .bind(to_micros(created))
    .bind(expires.map(to_micros))
    .bind(spec.service_account_id)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    let t = Token {
        id,
        kind: spec.kind,
        name: spec.name.into(),
        hint,
        user_id: spec.user_id.map(Into::into),
        service_account_id: spec.service_account_id.map(Into::into),
        organization_id: spec.organization_id.into(),
        scope: spec.scope.to_vec(),
        restrict_to_apps: spec.restrict_to_apps.to_vec(),
        created_at: created,
        expires_at: expires,
        revoked_at: None,
        last_used_at: None,
        last_used_ip: None,
    };
    Ok((t, secret))
}

/// Revoke a token of `user_id`. Returns false when there is no such live token.
pub async fn revoke(db: &mut Conn, token_id: &str, user_id: &str) -> Result<bool, Error> {
    let r = sqlx::query(
        "UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND user_id = $3 AND revoked_at IS NULL",
    )
    .bind(to_micros(now()))
    .bind(token_id)
    .bind(user_id)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(r.rows_affected() > 0)
}

pub static TOKENS: Resource = Resource {
    schema: &ListSchema {
        name: "tokens",
        fields: &[
            FieldSpec::new("name", Kind::Text),
            FieldSpec::new("type", Kind::Text).one_of(&[
                "personal_access_token",
                "service_account_token",
                "session_token",
                "temporary_token",
            ]),
            FieldSpec::new("created_at", Kind::Time),
            FieldSpec::new("expires_at", Kind::Time),
            FieldSpec::new("last_used_at", Kind::Time),
        ],
        searchable: true,
        labels: false,
        default_sort: &[("created_at", Dir::Desc)],
    },
    // Revoked (and used-up temporary) tokens are kept for the record, not listed.
    from: "(SELECT * FROM tokens WHERE revoked_at IS NULL) t",
    columns: COLUMNS,
    fields: &[
        FieldSql::new("name", "t.name"),
        FieldSql::new("type", "t.kind"),
        FieldSql::new("created_at", "t.created_at"),
        // Tokens without expiry sort after every expiring one.
        FieldSql::new("expires_at", "COALESCE(t.expires_at, 9223372036854775807)"),
        FieldSql::new("last_used_at", "COALESCE(t.last_used_at, 0)"),
    ],
    search: &["t.name"],
    labels: None,
};

/// A token row with what authenticating it needs of its organization,
/// membership or service account, and user.
#[derive(sqlx::FromRow)]
struct AuthenticatedRow {
    #[sqlx(flatten)]
    token: TokenRow,
    plan: String,
    org_settings: String,
    holder_role: String,
    member_resources: String,
    user_mfa: i64,
}

impl TryFrom<AuthenticatedRow> for Authenticated {
    type Error = Error;
    fn try_from(r: AuthenticatedRow) -> Result<Authenticated, Error> {
        let settings: serde_json::Value = crate::doc(
            "organizations",
            &r.token.organization_id,
            "settings",
            &r.org_settings,
        )?;
        let enforce = settings
            .get("enforce_mfa")
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false);
        // The membership is named only when it is needed (this is the
        // hot path of every authenticated request).
        let member_resources = serde_json::from_str(&r.member_resources).map_err(|e| {
            let membership = format!(
                "{}/{}",
                r.token.organization_id,
                r.token.user_id.as_deref().unwrap_or("")
            );
            crate::doc_error("memberships", &membership, "resources", e)
        })?;
        Ok(Authenticated {
            token: r.token.try_into()?,
            plan: Plan::parse(&r.plan),
            role: r.holder_role,
            member_resources,
            mfa_required: enforce && !crate::flag(r.user_mfa),
        })
    }
}

/// Find the live token whose hash is `hash`. Expired and revoked tokens,
/// and user tokens whose user has left the token's organization, are
/// not found.
pub async fn authenticate(db: &mut Conn, hash: &str) -> Result<Option<Authenticated>, Error> {
    sqlx::query_as::<_, AuthenticatedRow>(&format!(
        "SELECT {COLUMNS}, o.plan, o.settings AS org_settings, COALESCE(m.role, sa.role) AS holder_role,
                COALESCE(m.resources, '[]') AS member_resources, COALESCE(u.mfa_enabled, 1) AS user_mfa
         FROM tokens t
         JOIN organizations o ON o.id = t.organization_id
         LEFT JOIN memberships m ON m.organization_id = t.organization_id AND m.user_id = t.user_id
         LEFT JOIN service_accounts sa ON sa.id = t.service_account_id AND sa.organization_id = t.organization_id AND sa.deleted_at IS NULL
         LEFT JOIN users u ON u.id = t.user_id
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $2)
           AND (m.user_id IS NOT NULL OR sa.id IS NOT NULL)"
    ))
    .bind(hash)
    .bind(to_micros(now()))
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?
    .map(Authenticated::try_from)
    .transpose()
}

/// Use up a single-use token. False when it was used already.
pub async fn consume(db: &mut Conn, token_id: &str) -> Result<bool, Error> {
    let r = sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(to_micros(now()))
        .bind(token_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected() == 1)
}

/// A token by id (revoked ones too).
pub async fn get(db: &mut Conn, token_id: &str) -> Result<Option<Token>, Error> {
    sqlx::query_as::<_, TokenRow>(&format!("SELECT {COLUMNS} FROM tokens t WHERE t.id = $1"))
        .bind(token_id)
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)?
        .map(Token::try_from)
        .transpose()
}

/// Record that a token was used (callers throttle this).
pub async fn touch(db: &mut Conn, token_id: &str, ip: Option<&str>) -> Result<(), Error> {
    sqlx::query("UPDATE tokens SET last_used_at = $1, last_used_ip = $2 WHERE id = $3")
        .bind(to_micros(now()))
        .bind(ip)
        .bind(token_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// Revoke any token by id (authorization is the caller's job).
pub async fn revoke_any(db: &mut Conn, token_id: &str) -> Result<bool, Error> {
    let r = sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(to_micros(now()))
        .bind(token_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(r.rows_affected() > 0)
}

/// Give a token a new secret; the old one stops working. Returns the secret.
/// Rotations of one token closer together than this are refused.
pub const ROTATION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Give a token a new secret, if its secret is still `expected_hash` (the
/// one the caller read) and it was not rotated within
/// [`ROTATION_INTERVAL`]: of a burst of rotations exactly one succeeds,
/// the others get 409.
pub async fn rotate(
    db: &mut Conn,
    token_id: &str,
    kind: TokenKind,
    expected_hash: &str,
) -> Result<(String, String), Error> {
    let NewToken { secret, hash, hint } = token::generate(kind);
    let now = to_micros(now());
    let since = now - i64::try_from(ROTATION_INTERVAL.as_micros()).unwrap_or(0);
    let r = sqlx::query(
        "UPDATE tokens SET token_hash = $1, hint = $2, rotated_at = $3
         WHERE id = $4 AND token_hash = $5 AND revoked_at IS NULL
           AND (rotated_at IS NULL OR rotated_at < $6)",
    )
    .bind(&hash)
    .bind(&hint)
    .bind(now)
    .bind(token_id)
    .bind(expected_hash)
    .bind(since)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    if r.rows_affected() == 0 {
        return Err(Error::Conflict(format!(
            "The token was rotated (or revoked) by another request moments ago; \
             use the secret that request returned, or rotate again in {} seconds.",
            ROTATION_INTERVAL.as_secs()
        )));
    }
    Ok((secret, hint))
}

/// The hash of a token's current secret (to rotate it exactly once).
pub async fn secret_hash(db: &mut Conn, token_id: &str) -> Result<Option<String>, Error> {
    sqlx::query_scalar("SELECT token_hash FROM tokens WHERE id = $1")
        .bind(token_id)
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)
}

/// Revoke every token of a user except `keep` (after a password change:
/// whoever knew the old password may have made tokens with it).
pub async fn revoke_all_but(db: &mut Conn, user_id: &str, keep: &str) -> Result<u64, Error> {
    let r = sqlx::query(
        "UPDATE tokens SET revoked_at = $1 WHERE user_id = $2 AND id <> $3 AND revoked_at IS NULL",
    )
    .bind(to_micros(now()))
    .bind(user_id)
    .bind(keep)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(r.rows_affected())
}
