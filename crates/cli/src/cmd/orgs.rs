//! `shellwego orgs get|members|invite`. The organization is `--org`, else
//! the first one `GET /v1/user` lists.

use anyhow::anyhow;
use clap::{Args, Subcommand};
use shellwego_api::orgs::InvitationCreate;
use shellwego_client::Client;

use crate::cmd::{more_hint, ClientArgs, Ctx, ListArgs};
use crate::output::{emit, fields, json, list, note, or_dash, table, Output};

#[derive(Debug, Args)]
pub struct OrgsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Organization id (org_…) [default: your first organization].
    #[arg(long, global = true, value_name = "ORG_ID")]
    pub org: Option<String>,
    #[command(subcommand)]
    pub command: OrgsCommand,
}

#[derive(Debug, Subcommand)]
pub enum OrgsCommand {
    /// Show an organization: plan, quotas, usage and settings.
    Get,
    /// List an organization's members and their roles.
    Members(ListArgs),
    /// Invite someone by email (the invitation token is shown once).
    Invite(InviteArgs),
}

#[derive(Debug, Args)]
pub struct InviteArgs {
    /// Email address of the person to invite.
    pub email: String,
    /// Role: admin, developer, viewer or billing.
    #[arg(long)]
    pub role: String,
    /// Narrow the member's rights to this resource (app:*, app:app_123,
    /// node:read); repeat or separate with commas [default: everything the role allows].
    #[arg(long = "resource", value_delimiter = ',', value_name = "RESOURCE")]
    pub resources: Vec<String>,
    /// How long the invitation is valid, 1h to 30d [default: 7d].
    #[arg(long, value_name = "DURATION")]
    pub expires_in: Option<String>,
}

pub async fn run(args: OrgsArgs) -> anyhow::Result<()> {
    let ctx = Ctx::new(&args.client, false)?;
    ctx.client.require_token()?;
    let org = org_id(&ctx.client, args.org).await?;
    match args.command {
        OrgsCommand::Get => get(&ctx, &org).await,
        OrgsCommand::Members(l) => members(&ctx, &org, &l).await,
        OrgsCommand::Invite(i) => invite(&ctx, &org, i).await,
    }
}

/// `--org`, else the first organization of the calling user.
async fn org_id(client: &Client, org: Option<String>) -> anyhow::Result<String> {
    if let Some(o) = org.map(|o| o.trim().to_string()).filter(|o| !o.is_empty()) {
        return Ok(o);
    }
    let u = client.user().get().await?.into_inner();
    u.organizations
        .into_iter()
        .next()
        .map(|o| o.id)
        .ok_or_else(|| anyhow!("you belong to no organization; pass --org ORG_ID"))
}

async fn get(ctx: &Ctx, org: &str) -> anyhow::Result<()> {
    let o = ctx.client.orgs().get(org).await?;
    match ctx.output {
        Output::Json => emit(&json(o.body())?)?,
        Output::Table => {
            let q = &o.quotas;
            let u = &o.usage;
            emit(&fields(&[
                ("ID", o.id.clone()),
                ("NAME", o.name.clone()),
                ("SLUG", o.slug.clone()),
                ("PLAN", o.plan.clone()),
                ("MEMBERS", u.members.to_string()),
                ("APPS", format!("{} of {}", u.apps, q.apps)),
                ("NODES", format!("{} of {}", u.nodes, q.nodes)),
                ("MEMORY", format!("{} of {}", u.memory_used, q.memory_total)),
                ("VOLUMES", format!("at most {}", q.volumes_total)),
                (
                    "ENFORCE MFA",
                    if o.settings.enforce_mfa { "yes" } else { "no" }.into(),
                ),
                ("REGIONS", list(&o.settings.allowed_regions)),
                ("AUDIT RETENTION", o.settings.audit_log_retention.clone()),
                ("CREATED", o.created_at.clone()),
            ]))?;
        }
    }
    Ok(())
}

async fn members(ctx: &Ctx, org: &str, args: &ListArgs) -> anyhow::Result<()> {
    let l = ctx.client.orgs().members(org, &args.query()).await?;
    match ctx.output {
        Output::Json => emit(&json(l.body())?)?,
        Output::Table => {
            let rows: Vec<Vec<String>> = l
                .data
                .iter()
                .map(|m| {
                    vec![
                        m.user_id.clone(),
                        m.email.clone(),
                        m.name.clone(),
                        m.role.clone(),
                        list(&m.resources),
                        if m.mfa_enabled { "on" } else { "off" }.into(),
                        m.joined_at.clone(),
                    ]
                })
                .collect();
            emit(&table(
                &[
                    "USER ID",
                    "EMAIL",
                    "NAME",
                    "ROLE",
                    "RESOURCES",
                    "MFA",
                    "JOINED",
                ],
                &rows,
            ))?;
            more_hint(&l.pagination, l.data.len(), args.all);
        }
    }
    Ok(())
}

async fn invite(ctx: &Ctx, org: &str, args: InviteArgs) -> anyhow::Result<()> {
    let req = InvitationCreate {
        email: args.email,
        role: args.role,
        resources: args.resources,
        expires_in: args.expires_in,
    };
    let i = ctx.client.orgs().invite(org, &req).await?;
    match ctx.output {
        Output::Json => emit(&json(i.body())?)?,
        Output::Table => {
            let i = i.into_inner();
            emit(&fields(&[
                ("ID", i.id),
                ("ORGANIZATION", i.organization_id),
                ("EMAIL", i.email.clone()),
                ("ROLE", i.role),
                ("RESOURCES", list(&i.resources)),
                ("STATUS", i.status),
                ("EXPIRES", i.expires_at),
                ("TOKEN", or_dash(i.token.as_deref())),
            ]))?;
            note(&format!(
                "Send the token to {}: it is not shown again.",
                i.email
            ));
        }
    }
    Ok(())
}
