//! Organizations and memberships.

use serde_json::Value;
use shellwego_core::plan::Plan;
use shellwego_core::time::{from_micros, now, to_micros, Timestamp};
use shellwego_core::{id, Error};
use sqlx::any::AnyRow;

use crate::{db_err, Conn};

#[derive(Debug, Clone, PartialEq)]
pub struct Organization {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub plan: Plan,
    pub settings: Value,
    pub billing: Value,
    pub created_at: Timestamp,
}

const COLUMNS: &str = "o.id, o.name, o.slug, o.plan, o.settings, o.billing, o.created_at";

/// An `organizations` row as stored (`COLUMNS`).
#[derive(sqlx::FromRow)]
struct OrgRow {
    id: String,
    name: String,
    slug: String,
    plan: String,
    settings: String,
    billing: String,
    created_at: i64,
}

impl TryFrom<OrgRow> for Organization {
    type Error = Error;
    fn try_from(r: OrgRow) -> Result<Organization, Error> {
        Ok(Organization {
            settings: crate::doc("organizations", &r.id, "settings", &r.settings)?,
            billing: crate::doc("organizations", &r.id, "billing", &r.billing)?,
            id: r.id,
            name: r.name,
            slug: r.slug,
            plan: Plan::parse(&r.plan),
            created_at: crate::time(r.created_at),
        })
    }
}

pub async fn create(
    db: &mut Conn,
    name: &str,
    slug: &str,
    plan: Plan,
) -> Result<Organization, Error> {
    let id = id::new_id("org");
    let t = now();
    sqlx::query("INSERT INTO organizations (id, name, slug, plan, settings, billing, created_at, updated_at) VALUES ($1, $2, $3, $4, '{}', '{}', $5, $5)")
        .bind(&id)
        .bind(name)
        .bind(slug)
        .bind(plan.as_str())
        .bind(to_micros(t))
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(Organization {
        id,
        name: name.into(),
        slug: slug.into(),
        plan,
        settings: Value::Object(Default::default()),
        billing: Value::Object(Default::default()),
        created_at: from_micros(to_micros(t)),
    })
}

pub async fn add_member(
    db: &mut Conn,
    org_id: &str,
    user_id: &str,
    role: &str,
) -> Result<(), Error> {
    sqlx::query("INSERT INTO memberships (organization_id, user_id, role, resources, created_at) VALUES ($1, $2, $3, '[]', $4)")
        .bind(org_id)
        .bind(user_id)
        .bind(role)
        .bind(to_micros(now()))
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

/// How many organizations on the Free plan `user_id` owns. Concurrent
/// calls for one user are serialized until the transaction ends (an
/// advisory lock on PostgreSQL; SQLite's write transactions are serialized
/// anyway), so two concurrent creations cannot both see room for one more.
pub async fn free_orgs_owned(db: &mut Conn, user_id: &str) -> Result<i64, Error> {
    if db.backend_name() == "PostgreSQL" {
        sqlx::query("SELECT CAST(1 AS BIGINT) AS locked FROM (SELECT pg_advisory_xact_lock(hashtext($1))) AS l")
            .bind(format!("free-orgs:{user_id}"))
            .fetch_one(&mut *db)
            .await
            .map_err(db_err)?;
    }
    sqlx::query_scalar(
        "SELECT COUNT(*) AS n FROM memberships m JOIN organizations o ON o.id = m.organization_id
         WHERE m.user_id = $1 AND m.role = 'owner' AND o.plan = 'free'",
    )
    .bind(user_id)
    .fetch_one(&mut *db)
    .await
    .map_err(db_err)
}

/// An organization a user belongs to, and the user's role there.
#[derive(Debug, Clone, PartialEq)]
pub struct Membership {
    pub organization: Organization,
    pub role: String,
}

#[derive(sqlx::FromRow)]
struct MembershipRow {
    #[sqlx(flatten)]
    organization: OrgRow,
    role: String,
}

impl TryFrom<MembershipRow> for Membership {
    type Error = Error;
    fn try_from(r: MembershipRow) -> Result<Membership, Error> {
        Ok(Membership {
            organization: r.organization.try_into()?,
            role: r.role,
        })
    }
}

/// The organizations `user_id` belongs to, with the user's role in each,
/// oldest membership first.
pub async fn memberships_of(db: &mut Conn, user_id: &str) -> Result<Vec<Membership>, Error> {
    let rows = sqlx::query_as::<_, MembershipRow>(&format!(
        "SELECT {COLUMNS}, m.role FROM memberships m JOIN organizations o ON o.id = m.organization_id WHERE m.user_id = $1 ORDER BY m.created_at, o.id"
    ))
    .bind(user_id)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    crate::convert(rows)
}

pub async fn get(db: &mut Conn, org_id: &str) -> Result<Option<Organization>, Error> {
    sqlx::query_as::<_, OrgRow>(&format!(
        "SELECT {COLUMNS} FROM organizations o WHERE o.id = $1"
    ))
    .bind(org_id)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?
    .map(Organization::try_from)
    .transpose()
}

/// How many organizations there are.
pub async fn count(db: &mut Conn) -> Result<i64, Error> {
    sqlx::query_scalar("SELECT COUNT(*) AS n FROM organizations")
        .fetch_one(&mut *db)
        .await
        .map_err(db_err)
}

/// Organizations a user belongs to, as a list resource (scope: `m.user_id`).
pub static ORGANIZATIONS: crate::list::Resource = crate::list::Resource {
    schema: &shellwego_core::list::ListSchema {
        name: "organizations",
        fields: &[
            shellwego_core::list::FieldSpec::new("name", shellwego_core::list::Kind::Text),
            shellwego_core::list::FieldSpec::new("slug", shellwego_core::list::Kind::Text),
            shellwego_core::list::FieldSpec::new("plan", shellwego_core::list::Kind::Text).one_of(&["free", "starter", "growth", "enterprise"]),
            shellwego_core::list::FieldSpec::new("role", shellwego_core::list::Kind::Text),
            shellwego_core::list::FieldSpec::new("created_at", shellwego_core::list::Kind::Time),
        ],
        searchable: true,
        labels: false,
        default_sort: &[("created_at", shellwego_core::list::Dir::Desc)],
    },
    from: "(SELECT o.id, o.name, o.slug, o.plan, o.settings, o.billing, o.created_at, m.user_id AS member_id, m.role
            FROM organizations o JOIN memberships m ON m.organization_id = o.id) t",
    columns: "t.id, t.name, t.slug, t.plan, t.settings, t.billing, t.created_at, t.role",
    fields: &[
        crate::list::FieldSql::new("name", "t.name"),
        crate::list::FieldSql::new("slug", "t.slug"),
        crate::list::FieldSql::new("plan", "t.plan"),
        crate::list::FieldSql::new("role", "t.role"),
        crate::list::FieldSql::new("created_at", "t.created_at"),
    ],
    search: &["t.name", "t.slug"],
    labels: None,
};

/// An organization from a row of [`ORGANIZATIONS`]' columns.
pub fn org_from_row(row: &AnyRow) -> Result<Organization, Error> {
    crate::decode::<OrgRow, _>(row)
}

/// Change name, billing and settings (None leaves a field alone).
pub async fn update(
    db: &mut Conn,
    org_id: &str,
    name: Option<&str>,
    billing: Option<&Value>,
    settings: Option<&Value>,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE organizations SET name = COALESCE($1, name), billing = COALESCE($2, billing), settings = COALESCE($3, settings), updated_at = $4 WHERE id = $5",
    )
    .bind(name)
    .bind(billing.map(crate::to_json))
    .bind(settings.map(crate::to_json))
    .bind(to_micros(now()))
    .bind(org_id)
    .execute(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// A member of an organization, with the user's profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub user_id: String,
    pub email: String,
    pub name: String,
    pub role: String,
    pub resources: Vec<String>,
    pub mfa_enabled: bool,
    pub joined_at: Timestamp,
}

pub static MEMBERS: crate::list::Resource = crate::list::Resource {
    schema: &shellwego_core::list::ListSchema {
        name: "members",
        fields: &[
            shellwego_core::list::FieldSpec::new("role", shellwego_core::list::Kind::Text),
            shellwego_core::list::FieldSpec::new("email", shellwego_core::list::Kind::Text),
            shellwego_core::list::FieldSpec::new("name", shellwego_core::list::Kind::Text),
            shellwego_core::list::FieldSpec::new("created_at", shellwego_core::list::Kind::Time),
            shellwego_core::list::FieldSpec::new("joined_at", shellwego_core::list::Kind::Time),
        ],
        searchable: true,
        labels: false,
        default_sort: &[("created_at", shellwego_core::list::Dir::Asc)],
    },
    from: "(SELECT m.organization_id, m.user_id AS id, m.role, m.resources, m.created_at, u.email, u.name, u.mfa_enabled
            FROM memberships m JOIN users u ON u.id = m.user_id) t",
    columns: "t.id, t.role, t.resources, t.created_at, t.email, t.name, t.mfa_enabled",
    fields: &[
        crate::list::FieldSql::new("role", "t.role"),
        crate::list::FieldSql::new("email", "t.email"),
        crate::list::FieldSql::new("name", "t.name"),
        crate::list::FieldSql::new("created_at", "t.created_at"),
        crate::list::FieldSql::new("joined_at", "t.created_at"),
    ],
    search: &["t.email", "t.name"],
    labels: None,
};

/// A member row as stored ([`MEMBERS`]' columns; `id` is the user's).
#[derive(sqlx::FromRow)]
struct MemberRow {
    id: String,
    email: String,
    name: String,
    role: String,
    resources: String,
    mfa_enabled: i64,
    created_at: i64,
}

impl TryFrom<MemberRow> for Member {
    type Error = Error;
    fn try_from(r: MemberRow) -> Result<Member, Error> {
        Ok(Member {
            resources: crate::doc("memberships", &r.id, "resources", &r.resources)?,
            user_id: r.id,
            email: r.email,
            name: r.name,
            role: r.role,
            mfa_enabled: crate::flag(r.mfa_enabled),
            joined_at: crate::time(r.created_at),
        })
    }
}

/// A member from a row of [`MEMBERS`]' columns.
pub fn member_from_row(row: &AnyRow) -> Result<Member, Error> {
    crate::decode::<MemberRow, _>(row)
}

/// The role of `user_id` in `org_id`.
pub async fn member_role(
    db: &mut Conn,
    org_id: &str,
    user_id: &str,
) -> Result<Option<String>, Error> {
    sqlx::query_scalar("SELECT role FROM memberships WHERE organization_id = $1 AND user_id = $2")
        .bind(org_id)
        .bind(user_id)
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)
}

/// The number of owners, with their rows locked until the transaction
/// ends (PostgreSQL; SQLite's write transactions are serialized anyway), so
/// two concurrent demotions cannot both see "another owner is left".
pub async fn count_owners(db: &mut Conn, org_id: &str) -> Result<i64, Error> {
    let lock = match db.backend_name() {
        "PostgreSQL" => " FOR UPDATE",
        _ => "",
    };
    let owners: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT user_id FROM memberships WHERE organization_id = $1 AND role = 'owner'{lock}"
    ))
    .bind(org_id)
    .fetch_all(&mut *db)
    .await
    .map_err(db_err)?;
    Ok(owners.len() as i64)
}

pub async fn update_member(
    db: &mut Conn,
    org_id: &str,
    user_id: &str,
    role: Option<&str>,
    resources: Option<&[String]>,
) -> Result<(), Error> {
    sqlx::query("UPDATE memberships SET role = COALESCE($1, role), resources = COALESCE($2, resources) WHERE organization_id = $3 AND user_id = $4")
        .bind(role)
        .bind(resources.map(crate::to_json))
        .bind(org_id)
        .bind(user_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub async fn remove_member(db: &mut Conn, org_id: &str, user_id: &str) -> Result<(), Error> {
    sqlx::query("DELETE FROM memberships WHERE organization_id = $1 AND user_id = $2")
        .bind(org_id)
        .bind(user_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    // Their tokens for this organization stop working with the membership
    // (authentication checks it); revoke them too, for the record.
    sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE organization_id = $2 AND user_id = $3 AND revoked_at IS NULL")
        .bind(to_micros(now()))
        .bind(org_id)
        .bind(user_id)
        .execute(&mut *db)
        .await
        .map_err(db_err)?;
    Ok(())
}

pub async fn add_member_with(
    db: &mut Conn,
    org_id: &str,
    user_id: &str,
    role: &str,
    resources: &[String],
) -> Result<(), Error> {
    sqlx::query("INSERT INTO memberships (organization_id, user_id, role, resources, created_at) VALUES ($1, $2, $3, $4, $5)")
        .bind(org_id)
        .bind(user_id)
        .bind(role)
        .bind(crate::to_json(&resources))
        .bind(to_micros(now()))
        .execute(&mut *db)
        .await
        .map_err(|e| match db_err(e) {
            Error::Conflict(_) => Error::Conflict("the user is already a member of this organization".into()),
            other => other,
        })?;
    Ok(())
}

/// A membership's resource restrictions (none: no such membership).
pub async fn member_resources(
    db: &mut Conn,
    org_id: &str,
    user_id: &str,
) -> Result<Vec<String>, Error> {
    let resources: Option<String> = sqlx::query_scalar(
        "SELECT resources FROM memberships WHERE organization_id = $1 AND user_id = $2",
    )
    .bind(org_id)
    .bind(user_id)
    .fetch_optional(&mut *db)
    .await
    .map_err(db_err)?;
    match resources {
        Some(r) => crate::doc(
            "memberships",
            &format!("{org_id}/{user_id}"),
            "resources",
            &r,
        ),
        None => Ok(vec![]),
    }
}

/// What counts toward an organization's plan limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, sqlx::FromRow)]
pub struct OrgUsage {
    pub nodes: i64,
    pub members: i64,
    /// Memory in use on its nodes (total less available).
    pub memory: i64,
    pub apps: i64,
}

/// What counts toward an organization's plan limits.
pub async fn usage(db: &mut Conn, org_id: &str) -> Result<OrgUsage, Error> {
    sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM nodes WHERE organization_id = $1) AS nodes,
                (SELECT COUNT(*) FROM apps WHERE organization_id = $1) AS apps,
                (SELECT COUNT(*) FROM memberships WHERE organization_id = $1) AS members,
                (SELECT CAST(COALESCE(SUM(memory_total - memory_available), 0) AS BIGINT) FROM nodes WHERE organization_id = $1) AS memory",
    )
    .bind(org_id)
    .fetch_one(&mut *db)
    .await
    .map_err(db_err)
}

/// The oldest organization (the one bootstrap made).
pub async fn first(db: &mut Conn) -> Result<Option<String>, Error> {
    sqlx::query_scalar("SELECT id FROM organizations ORDER BY created_at, id LIMIT 1")
        .fetch_optional(&mut *db)
        .await
        .map_err(db_err)
}

/// An organization's settings (JSON), read inside a transaction.
/// Every organization's settings document, as stored: (id, settings).
pub async fn all_settings(db: &mut Conn) -> Result<Vec<(String, String)>, Error> {
    sqlx::query_as("SELECT id, settings FROM organizations ORDER BY id")
        .fetch_all(&mut *db)
        .await
        .map_err(db_err)
}

pub async fn org_settings(db: &mut Conn, org: &str) -> Result<serde_json::Value, Error> {
    let settings: Option<String> =
        sqlx::query_scalar("SELECT settings FROM organizations WHERE id = $1")
            .bind(org)
            .fetch_optional(&mut *db)
            .await
            .map_err(db_err)?;
    match settings {
        None => Ok(serde_json::Value::Null),
        Some(s) => crate::doc("organizations", org, "settings", &s),
    }
}
