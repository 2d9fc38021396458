//! Organizations, members, invitations and service accounts.

use std::time::Duration;

use serde_json::json;
use shellwego_api::orgs::{
    InvitationAccept, InvitationCreate, MemberUpdate, OrganizationCreate, OrganizationUpdate,
    ServiceAccountCreate,
};
use shellwego_core::list::ListParams;
use shellwego_core::plan::Plan;
use shellwego_core::time::now;
use shellwego_core::token::TokenKind;
use shellwego_core::units::parse_duration;
use shellwego_core::{password, Error};
use shellwego_store::events::{Actor, NewEvent};
use shellwego_store::invitations::{self, Invitation, INVITATIONS};
use shellwego_store::list::{Page, Scope};
use shellwego_store::orgs::{
    self, Member, Membership, OrgUsage, Organization, MEMBERS, ORGANIZATIONS,
};
use shellwego_store::service_accounts::{self, ServiceAccount, SERVICE_ACCOUNTS};
use shellwego_store::tokens::{self, NewTokenSpec, Token};
use shellwego_store::users;

use crate::auth::Principal;
use crate::ctx::ServerCtx;

/// The caller as seen by `org_id`: its own token's organization, or
/// another organization its user belongs to (with the role held there).
/// Anything else is "not found".
pub async fn as_member(ctx: &ServerCtx, p: &Principal, org_id: &str) -> Result<Principal, Error> {
    let store = &ctx.store;
    if org_id == p.organization_id {
        return Ok(p.clone());
    }
    let Some(uid) = &p.user_id else {
        return Err(Error::not_found("organization", org_id));
    };
    let mut db = store.conn().await?;
    let found = orgs::memberships_of(&mut db, uid)
        .await?
        .into_iter()
        .find(|m| m.organization.id == org_id);
    let Some(Membership {
        organization: org,
        role,
    }) = found
    else {
        return Err(Error::not_found("organization", org_id));
    };
    let resources = orgs::member_resources(&mut db, &org.id, uid).await?;
    // That organization's own MFA policy applies, not the token's.
    let enforce = org
        .settings
        .get("enforce_mfa")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    let has_mfa = users::get(&mut db, uid)
        .await?
        .is_some_and(|u| u.mfa_enabled);
    drop(db);
    if enforce && !has_mfa {
        return Err(Error::Forbidden(
            "This organization requires multi-factor authentication: enroll at POST /v1/user/mfa, then confirm it.".into(),
        ));
    }
    Ok(Principal {
        organization_id: org.id,
        plan: org.plan,
        role,
        member_resources: resources,
        mfa_required: false,
        ..p.clone()
    })
}

/// Granting access to others (invitations, service accounts) takes a
/// membership without resource restrictions: a restricted member cannot
/// hand out more than they have.
fn unrestricted(m: &Principal) -> Result<(), Error> {
    if m.member_resources.is_empty() {
        Ok(())
    } else {
        Err(Error::Forbidden("Your membership is restricted to some resources, so you cannot grant access to others.".into()))
    }
}

fn slugify(name: &str) -> String {
    let mut s = String::new();
    for c in name.trim().to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            s.push(c);
        } else if !s.ends_with('-') && !s.is_empty() {
            s.push('-');
        }
    }
    let s: String = s.trim_end_matches('-').chars().take(50).collect();
    if s.is_empty() {
        "org".into()
    } else {
        s
    }
}

/// Create an organization (Free plan); the caller becomes its owner.
/// Create an organization on the Free plan, owned by the caller. One user
/// may own at most `max_free_orgs` Free organizations: each has its own
/// quotas, so more would multiply them.
pub async fn org_create(
    ctx: &ServerCtx,
    p: &Principal,
    req: &OrganizationCreate,
) -> Result<(Organization, OrgUsage), Error> {
    let org = org_insert(ctx, p, req).await?;
    let usage = orgs::usage(&mut *ctx.store.conn().await?, &org.id).await?;
    Ok((org, usage))
}

async fn org_insert(
    ctx: &ServerCtx,
    p: &Principal,
    req: &OrganizationCreate,
) -> Result<Organization, Error> {
    let _store = &ctx.store;
    let uid = p.user_id()?;
    let explicit = req.slug.is_some();
    let base = req.slug.clone().unwrap_or_else(|| slugify(&req.name));
    // A derived slug that is taken gets a short suffix; an explicit one is a conflict.
    for attempt in 0..5 {
        let slug = if attempt == 0 {
            base.clone()
        } else {
            format!("{base}-{}", &shellwego_core::id::new_id("x")[2..7])
        };
        let mut tx = ctx.unit().await?;
        let org = match orgs::create(&mut tx, req.name.trim(), &slug, Plan::Free).await {
            Ok(o) => o,
            Err(Error::Conflict(_)) if !explicit => continue,
            Err(Error::Conflict(_)) => {
                return Err(Error::Conflict(format!("the slug '{slug}' is taken")))
            }
            Err(e) => return Err(e),
        };
        // Counted before this one is owned; the transaction rolls back
        // when there is no room.
        let owned = orgs::free_orgs_owned(&mut tx, uid).await?;
        if owned >= i64::from(ctx.config.max_free_orgs_per_user) {
            return Err(Error::QuotaExceeded(format!(
                "You already own {owned} organization(s) on the Free plan, the most one user may own; \
                 move one of them to a paid plan, delete one, or ask the operator to raise max_free_orgs_per_user."
            )));
        }
        orgs::add_member(&mut tx, &org.id, uid, "owner").await?;
        tx.record(
            NewEvent::info("organization.created", &p.actor(), "organization", &org.id)
                .in_org(&org.id)
                .meta(json!({"name": org.name, "slug": org.slug})),
        );
        tx.record(
            NewEvent::info("member.added", &p.actor(), "user", uid)
                .in_org(&org.id)
                .meta(json!({"role": "owner"})),
        );
        tx.commit().await?;
        return Ok(org);
    }
    Err(Error::Conflict(
        "could not find a free slug; pass one".into(),
    ))
}

pub async fn org_list(
    ctx: &ServerCtx,
    p: &Principal,
    params: &ListParams,
) -> Result<Page<Organization>, Error> {
    let store = &ctx.store;
    let uid = p.user_id()?;
    crate::service::list_page(
        store,
        &ORGANIZATIONS,
        &Scope::new().is_in("t.member_id", [uid.to_string()]),
        params,
        orgs::org_from_row,
    )
    .await
}

pub async fn org_get(
    ctx: &ServerCtx,
    p: &Principal,
    org_id: &str,
) -> Result<(Organization, OrgUsage), Error> {
    let store = &ctx.store;
    let m = as_member(ctx, p, org_id).await?;
    m.authorize("organizations", "read", None)?;
    let mut db = store.conn().await?;
    let org = orgs::get(&mut db, org_id)
        .await?
        .ok_or_else(|| Error::not_found("organization", org_id))?;
    let usage = orgs::usage(&mut db, org_id).await?;
    Ok((org, usage))
}

pub async fn org_update(
    ctx: &ServerCtx,
    p: &Principal,
    org_id: &str,
    req: &OrganizationUpdate,
) -> Result<(), Error> {
    let _store = &ctx.store;
    let m = as_member(ctx, p, org_id).await?;
    m.authorize("organizations", "write", None)?;
    let settings = req
        .settings
        .as_ref()
        .map(|s| serde_json::to_value(s).unwrap_or_default());
    let mut tx = ctx.unit().await?;
    orgs::update(
        &mut tx,
        org_id,
        req.name.as_deref().map(str::trim),
        req.billing.as_ref(),
        settings.as_ref(),
    )
    .await?;
    let mut fields = vec![];
    for (f, set) in [
        ("name", req.name.is_some()),
        ("billing", req.billing.is_some()),
        ("settings", req.settings.is_some()),
    ] {
        if set {
            fields.push(f);
        }
    }
    tx.record(
        NewEvent::info("organization.updated", &m.actor(), "organization", org_id)
            .in_org(org_id)
            .meta(json!({"fields": fields})),
    );
    tx.commit().await
}

pub async fn member_list(
    ctx: &ServerCtx,
    p: &Principal,
    org_id: &str,
    params: &ListParams,
) -> Result<Page<Member>, Error> {
    let store = &ctx.store;
    let m = as_member(ctx, p, org_id).await?;
    m.authorize("members", "read", None)?;
    crate::service::list_page(
        store,
        &MEMBERS,
        &Scope::new().is_in("t.organization_id", [org_id.to_string()]),
        params,
        orgs::member_from_row,
    )
    .await
}

/// Change a member's role or restrictions. Making or unmaking an owner
/// takes an owner; the last owner cannot be demoted.
pub async fn member_update(
    ctx: &ServerCtx,
    p: &Principal,
    org_id: &str,
    user_id: &str,
    req: &MemberUpdate,
) -> Result<(), Error> {
    let _store = &ctx.store;
    let m = as_member(ctx, p, org_id).await?;
    m.authorize("members", "write", None)?;
    let mut tx = ctx.unit().await?;
    let current = orgs::member_role(&mut tx, org_id, user_id)
        .await?
        .ok_or_else(|| Error::not_found("member", user_id))?;
    let to_owner = req.role.as_deref() == Some("owner");
    if (current == "owner" || to_owner) && m.role != "owner" {
        return Err(Error::Forbidden(
            "Only an owner can change an owner's membership or make someone owner.".into(),
        ));
    }
    if p.user_id.as_deref() == Some(user_id) && m.role != "owner" {
        return Err(Error::Forbidden(
            "You cannot change your own membership; ask an owner.".into(),
        ));
    }
    if !m.member_resources.is_empty() {
        return Err(Error::Forbidden(
            "Your membership is restricted to some resources, so you cannot change others'.".into(),
        ));
    }
    if let Some(role) = &req.role {
        if current == "owner" && role != "owner" && orgs::count_owners(&mut tx, org_id).await? <= 1
        {
            return Err(Error::Conflict(
                "This is the organization's last owner: make someone else owner first.".into(),
            ));
        }
    }
    orgs::update_member(
        &mut tx,
        org_id,
        user_id,
        req.role.as_deref(),
        req.resources.as_deref(),
    )
    .await?;
    tx.record(NewEvent::info("member.role_changed", &m.actor(), "user", user_id)
            .in_org(org_id)
            .meta(json!({"previous_role": current, "role": req.role.clone().unwrap_or(current.clone()), "resources": req.resources})));
    tx.commit().await
}

/// Remove a member (or leave, for oneself). Not the last owner.
pub async fn member_remove(
    ctx: &ServerCtx,
    p: &Principal,
    org_id: &str,
    user_id: &str,
) -> Result<(), Error> {
    let _store = &ctx.store;
    let m = as_member(ctx, p, org_id).await?;
    let leaving = p.user_id.as_deref() == Some(user_id);
    if !leaving {
        m.authorize("members", "write", None)?;
    }
    let mut tx = ctx.unit().await?;
    let role = orgs::member_role(&mut tx, org_id, user_id)
        .await?
        .ok_or_else(|| Error::not_found("member", user_id))?;
    if role == "owner" {
        if !leaving && m.role != "owner" {
            return Err(Error::Forbidden(
                "Only an owner can remove an owner.".into(),
            ));
        }
        if orgs::count_owners(&mut tx, org_id).await? <= 1 {
            return Err(Error::Conflict(
                "This is the organization's last owner: make someone else owner first.".into(),
            ));
        }
    }
    orgs::remove_member(&mut tx, org_id, user_id).await?;
    tx.record(
        NewEvent::info("member.removed", &m.actor(), "user", user_id)
            .in_org(org_id)
            .meta(json!({"role": role, "left": leaving})),
    );
    tx.commit().await
}

pub async fn invitation_create(
    ctx: &ServerCtx,
    p: &Principal,
    org_id: &str,
    req: &InvitationCreate,
) -> Result<(Invitation, String), Error> {
    let _store = &ctx.store;
    let m = as_member(ctx, p, org_id).await?;
    m.authorize("invitations", "write", None)?;
    unrestricted(&m)?;
    let lifetime = req
        .expires_in
        .as_deref()
        .and_then(parse_duration)
        .unwrap_or(Duration::from_secs(7 * 86_400));
    let mut tx = ctx.unit().await?;
    let (inv, secret) = invitations::create(
        &mut tx,
        org_id,
        &req.email,
        &req.role,
        &req.resources,
        lifetime,
        p.user_id.as_deref(),
    )
    .await?;
    tx.record(
        NewEvent::info("member.invited", &m.actor(), "invitation", &inv.id)
            .in_org(org_id)
            .meta(json!({"email": inv.email, "role": inv.role})),
    );
    tx.commit().await?;
    Ok((inv, secret))
}

pub async fn invitation_list(
    ctx: &ServerCtx,
    p: &Principal,
    org_id: &str,
    params: &ListParams,
) -> Result<Page<Invitation>, Error> {
    let store = &ctx.store;
    let m = as_member(ctx, p, org_id).await?;
    m.authorize("invitations", "read", None)?;
    crate::service::list_page(
        store,
        &INVITATIONS,
        &Scope::new().is_in("t.organization_id", [org_id.to_string()]),
        params,
        invitations::from_row,
    )
    .await
}

pub async fn invitation_revoke(
    ctx: &ServerCtx,
    p: &Principal,
    org_id: &str,
    inv_id: &str,
) -> Result<(), Error> {
    let _store = &ctx.store;
    let m = as_member(ctx, p, org_id).await?;
    m.authorize("invitations", "write", None)?;
    let mut tx = ctx.unit().await?;
    if !invitations::revoke(&mut tx, org_id, inv_id).await? {
        return Err(Error::not_found("invitation", inv_id));
    }
    tx.record(
        NewEvent::info("invitation.revoked", &m.actor(), "invitation", inv_id).in_org(org_id),
    );
    tx.commit().await
}

/// What accepting an invitation did.
pub struct Accepted {
    pub invitation: Invitation,
    pub user_id: String,
    /// A token for a user the invitation created.
    pub token: Option<(Token, String)>,
}

/// Accept an invitation as the calling user, or create the invited user.
pub async fn invitation_accept(
    ctx: &ServerCtx,
    p: Option<&Principal>,
    secret: &str,
    req: &InvitationAccept,
    ip: Option<String>,
) -> Result<Accepted, Error> {
    let store = &ctx.store;
    fn usable(inv: &Invitation) -> Result<(), Error> {
        match inv.status() {
            "accepted" => Err(Error::Gone("This invitation was used already.".into())),
            "revoked" => Err(Error::Gone("This invitation was withdrawn.".into())),
            "expired" => Err(Error::Gone(
                "This invitation has expired; ask for a new one.".into(),
            )),
            _ => Ok(()),
        }
    }
    // Everything slow or read-only happens before the write transaction
    // (on SQLite it holds the database's write lock).
    let peek = invitations::by_token(&mut *store.conn().await?, secret)
        .await?
        .ok_or_else(|| Error::not_found("invitation", "(token)"))?;
    usable(&peek)?;
    enum Who {
        Existing(String, Actor),
        New { name: String, hash: String },
    }
    let who = match p {
        Some(p) => {
            let uid = p.user_id()?.to_string();
            let user = users::get(&mut *store.conn().await?, &uid)
                .await?
                .ok_or_else(|| Error::not_found("user", &uid))?;
            if !user.email.eq_ignore_ascii_case(&peek.email) {
                return Err(Error::Forbidden(format!(
                    "This invitation is for {}, not for you.",
                    peek.email
                )));
            }
            Who::Existing(uid, p.actor())
        }
        None => {
            let (Some(name), Some(pw)) = (&req.name, &req.password) else {
                let msg = "log in and accept, or send name and password to create your account";
                return Err(Error::invalid(vec![
                    shellwego_core::FieldError::new("name", "required", msg),
                    shellwego_core::FieldError::new("password", "required", msg),
                ]));
            };
            if users::credentials_by_email(&mut *store.conn().await?, &peek.email)
                .await?
                .is_some()
            {
                return Err(Error::Conflict(format!(
                    "An account for {} exists: log in and accept the invitation with its token.",
                    peek.email
                )));
            }
            let pw = pw.clone();
            let hash = tokio::task::spawn_blocking(move || password::hash(&pw))
                .await
                .map_err(Error::internal)??;
            Who::New {
                name: name.trim().to_string(),
                hash,
            }
        }
    };

    let mut tx = ctx.unit().await?;
    let inv = invitations::by_token_for_update(&mut tx, secret)
        .await?
        .ok_or_else(|| Error::not_found("invitation", "(token)"))?;
    usable(&inv)?;
    let (user_id, created, actor) = match who {
        Who::Existing(uid, actor) => (uid, false, actor),
        Who::New { name, hash } => {
            let user = users::create(&mut tx, &inv.email, &name, &hash).await?;
            let actor = Actor::user(&user.id, ip);
            tx.record(
                NewEvent::info("user.created", &actor, "user", &user.id)
                    .in_org(&inv.organization_id)
                    .meta(json!({"email": user.email, "via": "invitation"})),
            );
            (user.id, true, actor)
        }
    };
    if !invitations::mark_accepted(&mut tx, &inv.id, &user_id).await? {
        return Err(Error::Gone("This invitation was used already.".into()));
    }
    orgs::add_member_with(
        &mut tx,
        &inv.organization_id,
        &user_id,
        &inv.role,
        &inv.resources,
    )
    .await?;
    tx.record(
        NewEvent::info("member.joined", &actor, "user", &user_id)
            .in_org(&inv.organization_id)
            .meta(json!({"role": inv.role, "invitation_id": inv.id})),
    );
    let token = if created {
        let expires = now()
            + chrono::Duration::from_std(TokenKind::Pat.default_lifespan())
                .map_err(Error::internal)?;
        Some(
            tokens::create(
                &mut tx,
                NewTokenSpec {
                    kind: TokenKind::Pat,
                    name: "invitation",
                    user_id: Some(&user_id),
                    service_account_id: None,
                    organization_id: &inv.organization_id,
                    scope: &[],
                    restrict_to_apps: &[],
                    expires_at: Some(expires),
                },
            )
            .await?,
        )
    } else {
        None
    };
    tx.commit().await?;
    Ok(Accepted {
        invitation: inv,
        user_id,
        token,
    })
}

pub async fn service_account_create(
    ctx: &ServerCtx,
    p: &Principal,
    org_id: &str,
    req: &ServiceAccountCreate,
) -> Result<(ServiceAccount, Token, String), Error> {
    let _store = &ctx.store;
    let m = as_member(ctx, p, org_id).await?;
    m.authorize("service_accounts", "write", None)?;
    unrestricted(&m)?;
    // The account's token can do no more than the caller's.
    let (scope, _) = m.grantable(&req.scope, &[])?;
    let lifetime = req
        .expires_in
        .as_deref()
        .and_then(parse_duration)
        .unwrap_or(TokenKind::Sat.default_lifespan());
    let expires = now() + chrono::Duration::from_std(lifetime).map_err(Error::internal)?;
    let mut tx = ctx.unit().await?;
    let sa = service_accounts::create(
        &mut tx,
        org_id,
        req.name.trim(),
        &req.role,
        &scope,
        p.user_id.as_deref(),
    )
    .await?;
    let (tok, secret) = tokens::create(
        &mut tx,
        NewTokenSpec {
            kind: TokenKind::Sat,
            name: &sa.name,
            user_id: None,
            service_account_id: Some(&sa.id),
            organization_id: org_id,
            scope: &scope,
            restrict_to_apps: &[],
            expires_at: Some(expires),
        },
    )
    .await?;
    tx.record(
        NewEvent::info(
            "service_account.created",
            &m.actor(),
            "service_account",
            &sa.id,
        )
        .in_org(org_id)
        .meta(json!({"name": sa.name, "role": sa.role})),
    );
    tx.record(
        NewEvent::info("token.created", &m.actor(), "token", &tok.id)
            .in_org(org_id)
            .meta(json!({"service_account_id": sa.id})),
    );
    tx.commit().await?;
    Ok((sa, tok, secret))
}

pub async fn service_account_list(
    ctx: &ServerCtx,
    p: &Principal,
    org_id: &str,
    params: &ListParams,
) -> Result<Page<ServiceAccount>, Error> {
    let store = &ctx.store;
    let m = as_member(ctx, p, org_id).await?;
    m.authorize("service_accounts", "read", None)?;
    let scope = Scope::new().is_in("t.organization_id", [org_id.to_string()]);
    crate::service::list_page(
        store,
        &SERVICE_ACCOUNTS,
        &scope,
        params,
        service_accounts::from_row,
    )
    .await
}

pub async fn service_account_delete(
    ctx: &ServerCtx,
    p: &Principal,
    org_id: &str,
    sa_id: &str,
) -> Result<(), Error> {
    let _store = &ctx.store;
    let m = as_member(ctx, p, org_id).await?;
    m.authorize("service_accounts", "write", None)?;
    let mut tx = ctx.unit().await?;
    if !service_accounts::delete(&mut tx, org_id, sa_id).await? {
        return Err(Error::not_found("service_account", sa_id));
    }
    tx.record(
        NewEvent::info(
            "service_account.deleted",
            &m.actor(),
            "service_account",
            sa_id,
        )
        .in_org(org_id),
    );
    tx.commit().await
}
