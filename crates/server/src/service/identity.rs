//! Logging in, tokens beyond the basics, the user's own profile.

use std::net::IpAddr;
use std::time::Duration;

use serde_json::json;
use shellwego_api::auth::LoginRequest;
use shellwego_api::user::UserUpdate;
use shellwego_core::time::{now, to_micros};
use shellwego_core::token::TokenKind;
use shellwego_core::{password, Error, RateLimitInfo};
use shellwego_store::events::{Actor, NewEvent, Severity};
use shellwego_store::tokens::{self, NewTokenSpec, Token};
use shellwego_store::{logins, users};

use shellwego_core::plan::Plan;
use shellwego_store::orgs::{self, Membership};
use shellwego_store::users::User;

use crate::auth::Principal;
use crate::ctx::ServerCtx;
use crate::mfa;

/// Failures within this window count toward a lock.
pub const LOCK_WINDOW: Duration = Duration::from_secs(15 * 60);
pub const MAX_ACCOUNT_FAILURES: i64 = 5;
pub const MAX_IP_FAILURES: i64 = 20;

/// A valid argon2id hash of a random password: verified against when the
/// email is unknown, so that both failures take the same time.
static DUMMY_HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn dummy_hash() -> &'static str {
    DUMMY_HASH.get_or_init(|| password::hash(&password::random()).unwrap_or_default())
}

/// Put an attempt to check a secret of `email`'s account on record before
/// checking it.
///
/// * The account: more than 5 failures within the window lock it, correct
///   password or not, until the window has passed (as Keycloak's temporary
///   lockout and Kanidm's soft lock do: the account is what a guesser
///   attacks, from however many addresses). The first refusal records
///   `user.locked`.
/// * The client address: more than 20 failures within the window do not
///   lock anyone out (behind a NAT or a proxy that is everyone); they slow
///   the guesser instead: every further failure from the address is
///   answered only after [`ip_tarpit`]. A correct password for an account
///   that is not locked still succeeds at once. The first such failure
///   records `login.throttled`. (How often an address may try at all is
///   the anonymous API rate limit's business.)
///
/// Returns the attempt's id (to mark it succeeded) and the delay owed if
/// it fails.
async fn guard(
    ctx: &ServerCtx,
    email: &str,
    ip: &str,
    user_id: Option<&str>,
    org: Option<&str>,
) -> Result<(String, Option<Duration>), Error> {
    let store = &ctx.store;
    let window = i64::try_from(LOCK_WINDOW.as_micros()).unwrap_or(0);
    let since = to_micros(now()) - window;
    let mut tx = ctx.unit().await?;
    let (id, f) = logins::begin(&mut tx, email, ip, since).await?;
    let over_account = f.account > MAX_ACCOUNT_FAILURES;
    let over_ip = f.ip > MAX_IP_FAILURES;
    let actor = Actor {
        kind: "user".into(),
        id: user_id.map(str::to_string),
        ip: Some(ip.to_string()),
    };
    if over_account && f.account == MAX_ACCOUNT_FAILURES + 1 {
        let mut ev = NewEvent::info("user.locked", &actor, "user", user_id.unwrap_or("unknown"))
            .severity(Severity::Warning)
            .meta(json!({"email": email, "by": "account", "minutes": LOCK_WINDOW.as_secs() / 60}));
        if let Some(o) = org {
            ev = ev.in_org(o);
        }
        tx.record(ev);
    }
    if !over_account && f.ip == MAX_IP_FAILURES + 1 {
        // Not in any organization's log: the address is not theirs.
        let ev = NewEvent::info("login.throttled", &actor, "ip", ip)
            .severity(Severity::Warning)
            .meta(json!({"email": email, "failures": f.ip, "minutes": LOCK_WINDOW.as_secs() / 60}));
        tx.record(ev);
    }
    tx.commit().await?;
    if !over_account {
        return Ok((id, over_ip.then(|| ip_tarpit(f.ip))));
    }
    let nth = logins::nth_recent_failure(
        &mut *store.conn().await?,
        Some(email),
        None,
        MAX_ACCOUNT_FAILURES,
    )
    .await?;
    let retry = ((nth.unwrap_or(0) + window - to_micros(now())) / 1_000_000).max(1) as u64;
    Err(Error::RateLimited(RateLimitInfo {
        limit: u32::try_from(MAX_ACCOUNT_FAILURES).unwrap_or(u32::MAX),
        window_secs: u32::try_from(LOCK_WINDOW.as_secs()).unwrap_or(u32::MAX),
        retry_after_secs: retry,
    }))
}

/// How long a failed attempt from an address with `failures` failures in
/// the window waits for its answer: 1 s past the limit, doubling every 10
/// failures, at most 16 s.
pub fn ip_tarpit(failures: i64) -> Duration {
    let over = (failures - MAX_IP_FAILURES - 1).clamp(0, 40);
    Duration::from_secs(1 << (over / 10))
}

/// Check a secret of the calling user's (current password, MFA code) under
/// the same lockout as logins.
async fn guarded_check(
    ctx: &ServerCtx,
    p: &Principal,
    email: &str,
    check: impl std::future::Future<Output = Result<bool, Error>>,
) -> Result<bool, Error> {
    let _store = &ctx.store;
    let ip =
        p.ip.map(|i| i.to_string())
            .unwrap_or_else(|| "unknown".into());
    let (attempt, tarpit) = guard(
        ctx,
        email,
        &ip,
        p.user_id.as_deref(),
        Some(&p.organization_id),
    )
    .await?;
    let ok = check.await?;
    if ok {
        let mut tx = ctx.unit().await?;
        logins::succeeded(&mut tx, &attempt).await?;
        tx.commit().await?;
    } else if let Some(d) = tarpit {
        tokio::time::sleep(d).await;
    }
    Ok(ok)
}

fn bad_credentials() -> Error {
    Error::Unauthenticated("Invalid email or password.".into())
}

/// Exchange email and password (and an MFA code) for a token.
pub async fn login(
    ctx: &ServerCtx,
    ip: Option<IpAddr>,
    req: &LoginRequest,
) -> Result<(Token, String), Error> {
    let store = &ctx.store;
    let ip_s = ip
        .map(|i| i.to_string())
        .unwrap_or_else(|| "unknown".into());
    let email = req.email.trim().to_lowercase();
    let (creds, user_orgs) = {
        let mut db = store.conn().await?;
        let creds = users::credentials_by_email(&mut db, &email).await?;
        let user_orgs = match &creds {
            Some(c) => orgs::memberships_of(&mut db, &c.user.id).await?,
            None => vec![],
        };
        (creds, user_orgs)
    };
    let user_id = creds.as_ref().map(|c| c.user.id.clone());
    let first_org = user_orgs.first().map(|m| m.organization.id.clone());
    let (attempt, tarpit) =
        guard(ctx, &email, &ip_s, user_id.as_deref(), first_org.as_deref()).await?;
    let hash = creds.as_ref().and_then(|c| c.password_hash.clone());
    let password_ok = {
        let (pw, h) = (
            req.password.clone(),
            hash.clone().unwrap_or_else(|| dummy_hash().to_string()),
        );
        let ok = tokio::task::spawn_blocking(move || password::verify(&pw, &h))
            .await
            .map_err(Error::internal)?;
        ok && hash.is_some()
    };
    let actor = Actor {
        kind: "user".into(),
        id: creds.as_ref().map(|c| c.user.id.clone()),
        ip: Some(ip_s.clone()),
    };

    // The second factor, when the password was right.
    let mfa_problem = match (&creds, password_ok) {
        (Some(c), true) if c.user.mfa_enabled => match req
            .mfa_code
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => Some(Error::MfaRequired {
                detail: "This account uses multi-factor authentication: send mfa_code.".into(),
                code: "required",
            }),
            Some(code) => {
                let mut tx = ctx.unit().await?;
                let ok = mfa::check_login_code(
                    &mut tx,
                    &ctx.vault,
                    &c.user.id,
                    c.mfa_secret_enc.as_deref(),
                    code,
                )
                .await?;
                tx.commit().await?;
                (!ok).then(|| Error::MfaRequired {
                    detail: "The MFA code is not valid.".into(),
                    code: "invalid_value",
                })
            }
        },
        _ => None,
    };

    if !password_ok || mfa_problem.is_some() {
        // The attempt is on record as a failure already (see `guard`).
        let mut tx = ctx.unit().await?;
        let resource_id = creds
            .as_ref()
            .map(|c| c.user.id.clone())
            .unwrap_or_else(|| "unknown".into());
        let reason = if password_ok {
            "mfa"
        } else {
            "bad_credentials"
        };
        let mut ev = NewEvent::info("user.login_failed", &actor, "user", &resource_id)
            .severity(Severity::Warning)
            .meta(json!({"email": email, "reason": reason}));
        if let Some(o) = &first_org {
            ev = ev.in_org(o);
        }
        tx.record(ev);
        tx.commit().await?;
        if let Some(d) = tarpit {
            tokio::time::sleep(d).await;
        }
        return Err(mfa_problem.unwrap_or_else(bad_credentials));
    }
    let Some(creds) = creds else {
        return Err(bad_credentials());
    };

    let org = match &req.organization_id {
        Some(o) => user_orgs
            .iter()
            .find(|m| &m.organization.id == o)
            .map(|m| m.organization.id.clone())
            .ok_or_else(|| Error::not_found("organization", o))?,
        None => first_org
            .ok_or_else(|| Error::Forbidden("You are not a member of any organization.".into()))?,
    };
    let kind = req.token_type.map_or(TokenKind::Pat, TokenKind::from);
    let expires =
        now() + chrono::Duration::from_std(kind.default_lifespan()).map_err(Error::internal)?;
    let mut tx = ctx.unit().await?;
    logins::succeeded(&mut tx, &attempt).await?;
    let (tok, secret) = tokens::create(
        &mut tx,
        NewTokenSpec {
            kind,
            name: if kind == TokenKind::Session {
                "dashboard session"
            } else {
                "login"
            },
            user_id: Some(&creds.user.id),
            service_account_id: None,
            organization_id: &org,
            scope: &req.scope,
            restrict_to_apps: &[],
            expires_at: Some(expires),
        },
    )
    .await?;
    tx.record(
        NewEvent::info("user.login", &actor, "user", &creds.user.id)
            .in_org(&org)
            .meta(json!({"token_id": tok.id, "type": kind.as_str()})),
    );
    tx.commit().await?;
    Ok((tok, secret))
}

/// Revoke a token: its owner may, and so may an admin of its organization.
/// Anyone else is told it does not exist.
pub async fn token_revoke_any(ctx: &ServerCtx, p: &Principal, token_id: &str) -> Result<(), Error> {
    let store = &ctx.store;
    let t = tokens::get(&mut *store.conn().await?, token_id)
        .await?
        .ok_or_else(|| Error::not_found("token", token_id))?;
    let own = t.user_id.is_some() && t.user_id == p.user_id;
    let admin =
        t.organization_id == p.organization_id && p.authorize("members", "write", None).is_ok();
    if !own && !admin {
        return Err(Error::not_found("token", token_id));
    }
    let mut tx = ctx.unit().await?;
    if !tokens::revoke_any(&mut tx, token_id).await? {
        return Err(Error::not_found("token", token_id));
    }
    tx.record(
        NewEvent::info("token.revoked", &p.actor(), "token", token_id).in_org(&t.organization_id),
    );
    tx.commit().await
}

/// A new secret for one of the caller's tokens; the old one stops working.
pub async fn token_rotate(
    ctx: &ServerCtx,
    p: &Principal,
    token_id: &str,
) -> Result<(Token, String), Error> {
    let store = &ctx.store;
    let uid = p.self_service()?;
    // The secret as it is now, read first: of concurrent rotations only
    // the first to write finds it unchanged.
    let mut db = store.conn().await?;
    let expected = tokens::secret_hash(&mut db, token_id)
        .await?
        .ok_or_else(|| Error::not_found("token", token_id))?;
    let t = tokens::get(&mut db, token_id)
        .await?
        .filter(|t| t.user_id.as_deref() == Some(uid) && t.revoked_at.is_none());
    drop(db);
    let t = t.ok_or_else(|| Error::not_found("token", token_id))?;
    // Rotating hands out the token's secret: only to a caller that could
    // have made such a token itself.
    let (scope, apps) = p.grantable(&t.scope, &t.restrict_to_apps)?;
    if scope != t.scope || apps != t.restrict_to_apps {
        return Err(Error::Forbidden(
            "This token cannot rotate a token that can do more than itself.".into(),
        ));
    }
    if t.kind != TokenKind::Pat {
        return Err(Error::Conflict(
            "Only personal access tokens can be rotated.".into(),
        ));
    }
    let mut tx = ctx.unit().await?;
    let (secret, hint) = tokens::rotate(&mut tx, token_id, t.kind, &expected).await?;
    tx.record(
        NewEvent::info("token.rotated", &p.actor(), "token", token_id).in_org(&t.organization_id),
    );
    tx.commit().await?;
    Ok((Token { hint, ..t }, secret))
}

/// Update the caller's profile; a password change needs the current one and
/// ends the user's other sessions.
pub async fn user_update(ctx: &ServerCtx, p: &Principal, req: &UserUpdate) -> Result<(), Error> {
    let store = &ctx.store;
    let uid = p.self_service()?;
    let new_hash = match &req.password {
        Some(change) => {
            let creds = users::credentials(&mut *store.conn().await?, uid)
                .await?
                .ok_or_else(|| Error::not_found("user", uid))?;
            let (cur, h) = (
                change.current_password.clone(),
                creds.password_hash.unwrap_or_default(),
            );
            // Guessing the current password with a stolen token is limited
            // like logins.
            let verify = async move {
                tokio::task::spawn_blocking(move || password::verify(&cur, &h))
                    .await
                    .map_err(Error::internal)
            };
            let ok = guarded_check(ctx, p, &creds.user.email, verify).await?;
            if !ok {
                return Err(Error::field(
                    "password.current_password",
                    "invalid_value",
                    "does not match your current password",
                ));
            }
            let new = change.new_password.clone();
            Some(
                tokio::task::spawn_blocking(move || password::hash(&new))
                    .await
                    .map_err(Error::internal)??,
            )
        }
        None => None,
    };
    let mut tx = ctx.unit().await?;
    users::update_profile(
        &mut tx,
        uid,
        req.name.as_deref().map(str::trim),
        req.avatar_url.as_deref(),
    )
    .await?;
    let mut changed = vec![];
    if req.name.is_some() {
        changed.push("name");
    }
    if req.avatar_url.is_some() {
        changed.push("avatar_url");
    }
    if let Some(h) = new_hash {
        users::set_password(&mut tx, uid, &h).await?;
        let ended = tokens::revoke_all_but(&mut tx, uid, &p.token_id).await?;
        tx.record(
            NewEvent::info("user.password_changed", &p.actor(), "user", uid)
                .in_org(&p.organization_id)
                .meta(json!({"tokens_revoked": ended})),
        );
    }
    if !changed.is_empty() {
        tx.record(
            NewEvent::info("user.updated", &p.actor(), "user", uid)
                .in_org(&p.organization_id)
                .meta(json!({"fields": changed})),
        );
    }
    tx.commit().await
}

/// Start MFA enrollment: a new secret, kept (encrypted) until confirmed.
pub async fn mfa_enroll(ctx: &ServerCtx, p: &Principal) -> Result<(String, String), Error> {
    let store = &ctx.store;
    let uid = p.self_service()?;
    let user = users::get(&mut *store.conn().await?, uid)
        .await?
        .ok_or_else(|| Error::not_found("user", uid))?;
    if user.mfa_enabled {
        return Err(Error::Conflict(
            "MFA is on already; disable it first to enroll a new device.".into(),
        ));
    }
    let secret = mfa::new_secret();
    let (b32, uri) = mfa::enrollment(&secret, &user.email)?;
    let sealed = ctx
        .vault
        .key_for(&ctx.store, crate::vault::SYSTEM)
        .await?
        .seal(&crate::vault::totp_aad(uid), &secret)?;
    let mut tx = ctx.unit().await?;
    users::set_mfa_pending(&mut tx, uid, &sealed).await?;
    tx.commit().await?;
    Ok((b32, uri))
}

/// Confirm enrollment with a code; MFA is on. Returns the recovery codes.
pub async fn mfa_confirm(ctx: &ServerCtx, p: &Principal, code: &str) -> Result<Vec<String>, Error> {
    let store = &ctx.store;
    let uid = p.self_service()?;
    let creds = users::credentials(&mut *store.conn().await?, uid)
        .await?
        .ok_or_else(|| Error::not_found("user", uid))?;
    let pending = creds
        .mfa_pending_enc
        .ok_or_else(|| Error::Conflict("Start with POST /v1/user/mfa to get a secret.".into()))?;
    let secret = ctx
        .vault
        .open(
            &mut *store.conn().await?,
            &crate::vault::totp_aad(uid),
            &pending,
        )
        .await?;
    if !mfa::verify_totp(&secret, code) {
        return Err(Error::field(
            "code",
            "invalid_value",
            "the code does not match; check the authenticator's clock",
        ));
    }
    let codes = mfa::recovery_codes();
    let hashes: Vec<String> = codes.iter().map(|c| mfa::hash_recovery(c)).collect();
    let mut tx = ctx.unit().await?;
    users::set_mfa(&mut tx, uid, Some(&pending), &hashes).await?;
    tx.record(
        NewEvent::info("user.mfa_enabled", &p.actor(), "user", uid).in_org(&p.organization_id),
    );
    tx.commit().await?;
    Ok(codes)
}

/// Turn MFA off, with a current code or a recovery code.
pub async fn mfa_disable(ctx: &ServerCtx, p: &Principal, code: &str) -> Result<(), Error> {
    let store = &ctx.store;
    let uid = p.self_service()?;
    let creds = users::credentials(&mut *store.conn().await?, uid)
        .await?
        .ok_or_else(|| Error::not_found("user", uid))?;
    if !creds.user.mfa_enabled {
        return Err(Error::Conflict("MFA is not on.".into()));
    }
    let ip =
        p.ip.map(|i| i.to_string())
            .unwrap_or_else(|| "unknown".into());
    let (attempt, tarpit) = guard(
        ctx,
        &creds.user.email,
        &ip,
        Some(uid),
        Some(&p.organization_id),
    )
    .await?;
    let mut tx = ctx.unit().await?;
    logins::succeeded(&mut tx, &attempt).await?;
    if !mfa::check_login_code(
        &mut tx,
        &ctx.vault,
        uid,
        creds.mfa_secret_enc.as_deref(),
        code,
    )
    .await?
    {
        // Rolled back: the attempt stays a failure.
        drop(tx);
        if let Some(d) = tarpit {
            tokio::time::sleep(d).await;
        }
        return Err(Error::field(
            "code",
            "invalid_value",
            "not a valid code or recovery code",
        ));
    }
    users::set_mfa(&mut tx, uid, None, &[]).await?;
    tx.record(
        NewEvent::info("user.mfa_disabled", &p.actor(), "user", uid)
            .in_org(&p.organization_id)
            .severity(Severity::Warning),
    );
    tx.commit().await
}

/// The calling user with their organizations and roles.
pub async fn user_current(
    ctx: &ServerCtx,
    p: &Principal,
) -> Result<(User, Vec<Membership>), Error> {
    let store = &ctx.store;
    let uid = p.user_id()?;
    let user = users::get(&mut *store.conn().await?, uid)
        .await?
        .ok_or_else(|| Error::Unauthenticated("the token's user no longer exists".into()))?;
    let orgs = orgs::memberships_of(&mut *store.conn().await?, uid).await?;
    Ok((user, orgs))
}

/// The plan whose quotas apply to the caller.
pub fn plan_of(p: &Principal) -> Plan {
    p.plan
}
