//! Custom domains: a host name belongs to one organization (claimed with its
//! first route, given up with its last); its routes send requests to apps
//! by longest path prefix. Every change wakes the routers
//! ([`Topic::Routes`]) and is an event.

use serde_json::json;
use shellwego_api::domains::{
    normalize_hostname, normalize_path, CdnRequest, CertificateUpload, DomainCreate, DomainUpdate,
    TlsProvider,
};
use shellwego_core::list::ListParams;
use shellwego_core::Error;
use shellwego_store::domains::{self, Domain, NewDomain, Routing, DOMAINS};
use shellwego_store::events::{Actor, NewEvent};
use shellwego_store::list::{Page, Scope};
use shellwego_store::{apps, Conn};

use crate::auth::Principal;
use crate::bus::Topic;
use crate::ctx::{ServerCtx, Unit};

fn visible(d: Option<Domain>, p: &Principal, id: &str) -> Result<Domain, Error> {
    match d {
        Some(d) if d.organization_id == p.organization_id => Ok(d),
        _ => Err(Error::not_found("domain", id)),
    }
}

/// `enabled: true` of what is not offered yet: a 422 that says so.
fn refuse_unoffered(cdn: Option<&CdnRequest>, waf: Option<bool>) -> Result<(), Error> {
    if cdn.is_some_and(|c| c.enabled) {
        return Err(Error::NotOffered(
            "cdn.enabled: the response cache is not offered by this installation yet; leave cdn out or set enabled to false".into(),
        ));
    }
    if waf == Some(true) {
        return Err(Error::NotOffered(
            "waf_enabled: the web application firewall is not offered by this installation yet; leave it out or set it to false".into(),
        ));
    }
    Ok(())
}

/// The app `app_id` of `org`, or a 400 naming `field`.
async fn app_in_org(db: &mut Conn, org: &str, app_id: &str, field: &str) -> Result<(), Error> {
    let known = apps::ids_in(db, org, std::slice::from_ref(&app_id.to_string())).await?;
    if known.is_empty() {
        return Err(Error::field(
            field,
            "not_found",
            format!("there is no app '{app_id}' in organization {org}; use ids from GET /v1/apps"),
        ));
    }
    Ok(())
}

/// A route to create, validated.
pub struct Wanted<'a> {
    pub hostname: &'a str,
    pub app_id: &'a str,
    pub path: Option<&'a str>,
    pub port: Option<u16>,
    pub strip_prefix: bool,
    pub tls_provider: TlsProvider,
    pub tls_auto_renew: bool,
    pub hsts: bool,
}

/// Create a route in `tx` (the caller checked the app): the host claimed
/// for `org` unless another organization holds it or a wildcard over it
/// (409), the host under the platform's base domain refused (400).
pub async fn create_in(
    ctx: &ServerCtx,
    tx: &mut Unit<'_>,
    actor: &Actor,
    org: &str,
    w: Wanted<'_>,
    field: &str,
) -> Result<Domain, Error> {
    let hostname = normalize_hostname(w.hostname).map_err(|m| {
        Error::invalid(vec![shellwego_core::FieldError::new(
            field,
            "invalid_value",
            m,
        )
        .with_value(w.hostname.to_string())])
    })?;
    let base = ctx.config.domains.base_domain.to_ascii_lowercase();
    let bare = hostname.trim_start_matches("*.");
    if bare == base || bare.ends_with(&format!(".{base}")) {
        return Err(Error::field(
            field,
            "reserved",
            format!("{hostname} is under the platform's own domain {base}, where apps are reached as <app>.{base} already"),
        ));
    }
    let path = normalize_path(w.path.unwrap_or("/"))
        .map_err(|m| Error::field("path", "invalid_value", m))?;
    domains::lock_claims(tx).await?;
    let taken = domains::claimed_by_others(tx, org, &hostname).await?;
    if let Some(other) = taken.first() {
        return Err(Error::Conflict(if *other == hostname {
            format!("{hostname} belongs to another organization")
        } else {
            format!("{hostname} overlaps {other}, which belongs to another organization")
        }));
    }
    domains::claim_host(tx, org, &hostname).await?;
    let d = domains::insert(
        tx,
        NewDomain {
            organization_id: org,
            hostname: &hostname,
            path: &path,
            app_id: w.app_id,
            port: w.port,
            strip_prefix: w.strip_prefix,
            tls_provider: w.tls_provider.as_str(),
            tls_auto_renew: w.tls_auto_renew,
            cdn_enabled: false,
            cache_ttl_secs: None,
            waf_enabled: false,
            hsts: w.hsts,
        },
    )
    .await?;
    tx.record(
        NewEvent::info("domain.created", actor, "domain", &d.id)
            .in_org(org)
            .meta(json!({"hostname": d.hostname, "path": d.path, "app_id": d.app_id, "tls_provider": d.tls_provider})),
    );
    tx.touch(&[Topic::Routes]);
    Ok(d)
}

pub async fn domain_create(
    ctx: &ServerCtx,
    p: &Principal,
    req: &DomainCreate,
) -> Result<Domain, Error> {
    p.authorize("domains", "write", Some(&req.app_id))?;
    refuse_unoffered(req.cdn.as_ref(), req.waf_enabled)?;
    let org = p.organization_id.clone();
    app_in_org(&mut *ctx.store.conn().await?, &org, &req.app_id, "app_id").await?;
    let tls = req.tls.clone().unwrap_or_default();
    let mut tx = ctx.unit().await?;
    let d = create_in(
        ctx,
        &mut tx,
        &p.actor(),
        &org,
        Wanted {
            hostname: &req.hostname,
            app_id: &req.app_id,
            path: req.path.as_deref(),
            port: req.port,
            strip_prefix: req.strip_prefix.unwrap_or(false),
            tls_provider: tls.provider,
            tls_auto_renew: tls.auto_renew.unwrap_or(true),
            hsts: req.hsts.unwrap_or(false),
        },
        "hostname",
    )
    .await?;
    tx.commit().await?;
    Ok(d)
}

pub async fn domain_list(
    ctx: &ServerCtx,
    p: &Principal,
    params: &ListParams,
) -> Result<Page<Domain>, Error> {
    let mut scope = Scope::new().is_in("t.organization_id", p.organization_ids());
    match p.restrict_to_apps.first() {
        None => p.authorize("domains", "read", None)?,
        Some(a) => {
            p.authorize("domains", "read", Some(a))?;
            scope = scope.is_in("t.app_id", p.restrict_to_apps.clone());
        }
    }
    crate::service::list_page(&ctx.store, &DOMAINS, &scope, params, domains::from_row).await
}

pub async fn domain_get(ctx: &ServerCtx, p: &Principal, id: &str) -> Result<Domain, Error> {
    let mut db = ctx.store.conn().await?;
    let d = visible(domains::get(&mut db, id).await?, p, id)?;
    p.authorize("domains", "read", Some(&d.app_id))
        .map_err(|_| Error::not_found("domain", id))?;
    Ok(d)
}

pub async fn domain_update(
    ctx: &ServerCtx,
    p: &Principal,
    id: &str,
    req: &DomainUpdate,
) -> Result<Domain, Error> {
    refuse_unoffered(req.cdn.as_ref(), req.waf_enabled)?;
    let d = domain_get(ctx, p, id).await?;
    p.authorize("domains", "write", Some(&d.app_id))?;
    let app_id = req.app_id.clone().unwrap_or_else(|| d.app_id.clone());
    if app_id != d.app_id {
        p.authorize("domains", "write", Some(&app_id))?;
        app_in_org(
            &mut *ctx.store.conn().await?,
            &d.organization_id,
            &app_id,
            "app_id",
        )
        .await?;
    }
    let path = match &req.path {
        Some(p) => normalize_path(p).map_err(|m| Error::field("path", "invalid_value", m))?,
        None => d.path.clone(),
    };
    let port = match req.port {
        Some(0) => None,
        Some(p) => Some(p),
        None => d.port,
    };
    let mut tx = ctx.unit().await?;
    domains::update(
        &mut tx,
        id,
        Routing {
            app_id: &app_id,
            path: &path,
            port,
            strip_prefix: req.strip_prefix.unwrap_or(d.strip_prefix),
            tls_auto_renew: req
                .tls
                .as_ref()
                .and_then(|t| t.auto_renew)
                .unwrap_or(d.tls_auto_renew),
            cdn_enabled: false,
            cache_ttl_secs: None,
            waf_enabled: false,
            hsts: req.hsts.unwrap_or(d.hsts),
        },
    )
    .await?;
    tx.record(
        NewEvent::info("domain.updated", &p.actor(), "domain", id)
            .in_org(&d.organization_id)
            .meta(json!({"hostname": d.hostname, "path": path, "app_id": app_id, "port": port})),
    );
    tx.touch(&[Topic::Routes]);
    let out = domains::get(&mut tx, id)
        .await?
        .ok_or_else(|| Error::not_found("domain", id))?;
    tx.commit().await?;
    Ok(out)
}

pub async fn domain_delete(ctx: &ServerCtx, p: &Principal, id: &str) -> Result<(), Error> {
    let d = domain_get(ctx, p, id).await?;
    p.authorize("domains", "write", Some(&d.app_id))?;
    let mut tx = ctx.unit().await?;
    domains::lock_claims(&mut tx).await?;
    domains::delete(&mut tx, &d).await?;
    tx.record(
        NewEvent::info("domain.deleted", &p.actor(), "domain", id)
            .in_org(&d.organization_id)
            .meta(json!({"hostname": d.hostname, "path": d.path, "app_id": d.app_id})),
    );
    tx.touch(&[Topic::Routes]);
    tx.commit().await
}

/// Your own certificate for the domain's host: checked (400 naming the
/// field), kept with the key sealed, served by every ingress at once.
pub async fn domain_certificate(
    ctx: &ServerCtx,
    p: &Principal,
    id: &str,
    req: &CertificateUpload,
) -> Result<Domain, Error> {
    let d = domain_get(ctx, p, id).await?;
    p.authorize("domains", "write", Some(&d.app_id))?;
    let c = crate::certs::check(
        &d.hostname,
        &req.certificate,
        &req.private_key,
        req.chain.as_deref(),
        shellwego_core::time::now(),
    )?;
    let key = ctx.vault.key_for(&ctx.store, &d.organization_id).await?;
    let key_enc = key.seal(&crate::certs::key_aad(&d.hostname), c.key_pem.as_bytes())?;
    let mut tx = ctx.unit().await?;
    domains::set_host_cert(
        &mut tx,
        &d.hostname,
        domains::NewCert {
            cert_pem: &c.chain_pem,
            key_enc: &key_enc,
            source: "custom",
            issuer: &c.issuer,
            not_after: c.not_after,
            serial: &c.serial,
        },
    )
    .await?;
    tx.record(
        NewEvent::info("domain.certificate_uploaded", &p.actor(), "domain", id)
            .in_org(&d.organization_id)
            .meta(json!({"hostname": d.hostname, "issuer": c.issuer, "expires_at": shellwego_core::time::rfc3339(c.not_after), "serial": c.serial})),
    );
    tx.touch(&[Topic::Routes]);
    let out = domains::get(&mut tx, id)
        .await?
        .ok_or_else(|| Error::not_found("domain", id))?;
    tx.commit().await?;
    Ok(out)
}

/// Delete an app's routes with it (in its deletion's transaction).
pub async fn delete_of_app(
    tx: &mut Unit<'_>,
    actor: &Actor,
    org: &str,
    app_id: &str,
) -> Result<(), Error> {
    domains::lock_claims(tx).await?;
    for d in domains::delete_of_app(tx, app_id).await? {
        tx.record(
            NewEvent::info("domain.deleted", actor, "domain", &d.id)
                .in_org(org)
                .meta(json!({"hostname": d.hostname, "path": d.path, "app_id": app_id, "reason": "app deleted"})),
        );
    }
    tx.touch(&[Topic::Routes]);
    Ok(())
}
