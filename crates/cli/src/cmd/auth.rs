//! `shellwego auth login|logout|whoami`.

use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use shellwego_api::auth::LoginRequest;
use shellwego_client::StatusCode;

use crate::cmd::{client_for, ClientArgs, Ctx};
use crate::credentials::{self, Credentials};
use crate::output::{emit, fields, json, note, or_dash, Output};
use crate::prompt;

/// How many times a wrong MFA code may be entered.
const MFA_ATTEMPTS: u32 = 3;

#[derive(Debug, Args)]
pub struct AuthArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: AuthCommand,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Log in with email and password and save the token in the credentials file.
    ///
    /// Asks for the email, the password (without echo on a terminal) and,
    /// when the account has MFA, the code. When stdin is not a terminal
    /// the answers are read from it, one per line. The token is saved in
    /// $XDG_CONFIG_HOME/shellwego/credentials.toml (else
    /// ~/.config/shellwego/credentials.toml), mode 0600, with the API URL.
    /// --token and SHELLWEGO_TOKEN still win over the saved token.
    Login(LoginArgs),
    /// Revoke the saved token and remove it from the credentials file.
    ///
    /// The token is revoked at the API it was saved for. --token and
    /// SHELLWEGO_TOKEN are not touched (revoke those with `tokens revoke`).
    Logout,
    /// Show the user the current token belongs to.
    Whoami,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Email address [default: asked].
    #[arg(long)]
    pub email: Option<String>,
    /// Read the password from the first line of stdin (needs --email).
    #[arg(long, requires = "email")]
    pub password_stdin: bool,
    /// MFA code (a TOTP code or a recovery code) [default: asked when needed].
    #[arg(long, value_name = "CODE")]
    pub mfa_code: Option<String>,
    /// Organization the token acts in [default: your first].
    #[arg(long, value_name = "ORG_ID")]
    pub org: Option<String>,
}

pub async fn run(args: AuthArgs) -> anyhow::Result<()> {
    match args.command {
        AuthCommand::Login(l) => {
            let ctx = Ctx::new(&args.client, true)?;
            login(&ctx, l).await
        }
        AuthCommand::Logout => logout(&Ctx::new(&args.client, false)?).await,
        AuthCommand::Whoami => whoami(&Ctx::new(&args.client, false)?).await,
    }
}

async fn login(ctx: &Ctx, args: LoginArgs) -> anyhow::Result<()> {
    let path = ctx.creds_path.clone().ok_or_else(|| {
        anyhow!("cannot tell where to save the token: set HOME or XDG_CONFIG_HOME")
    })?;
    let email = match args.email {
        Some(e) if !e.trim().is_empty() => e.trim().to_string(),
        Some(_) => bail!("--email is empty"),
        None => prompt::ask("Email", "email")?,
    };
    let password = if args.password_stdin {
        match prompt::read_line()? {
            Some(p) if !p.is_empty() => p,
            Some(_) | None => bail!("--password-stdin: no password on stdin"),
        }
    } else {
        prompt::ask_secret("Password", "password")?
    };
    let mut req = LoginRequest {
        email,
        password,
        mfa_code: args.mfa_code.clone(),
        scope: vec![],
        token_type: None,
        organization_id: args.org,
    };
    // No bearer token on a login: a stale SHELLWEGO_TOKEN must not get in the way.
    let anonymous = ctx.client.anonymous();
    let mut attempts = 0;
    let created = loop {
        match anonymous.auth().login(&req).await {
            Ok(v) => break v,
            // Ask for the code only when it was not given as a flag.
            Err(e) if e.wants_mfa_code() && args.mfa_code.is_none() && attempts < MFA_ATTEMPTS => {
                attempts += 1;
                if req.mfa_code.is_some() {
                    note(&e.to_string());
                }
                req.mfa_code = Some(prompt::ask("MFA code", "MFA code")?);
            }
            Err(e) => return Err(e.into()),
        }
    };
    let previous = ctx.stored.clone();
    let creds = Credentials {
        api_url: Some(ctx.client.base().to_string()),
        email: Some(req.email.clone()),
        token: Some(created.token.clone()),
        token_id: Some(created.id.clone()),
    };
    credentials::save(&path, &creds)?;
    retire(&previous, &creds).await;
    match ctx.output {
        Output::Json => emit(&json(created.body())?)?,
        Output::Table => emit(&format!(
            "Logged in to {} as {}.\n{}",
            ctx.client.base(),
            req.email,
            fields(&[
                ("TOKEN ID", created.id.clone()),
                ("TYPE", created.token_type.clone()),
                ("EXPIRES", or_dash(created.expires_at.as_deref())),
                ("SAVED IN", path.display().to_string()),
            ])
        ))?,
    }
    if ctx.token_from_flag_or_env {
        note("note: --token or SHELLWEGO_TOKEN is set and is used instead of the saved token");
    }
    Ok(())
}

/// Best effort: revoke the token a new login replaced, when it was for the
/// same API (so logging in again does not pile up live tokens).
async fn retire(previous: &Credentials, new: &Credentials) {
    let (Some(token), Some(id), Some(url)) = (
        previous.token.clone(),
        previous.token_id.as_deref(),
        previous.api_url.as_deref(),
    ) else {
        return;
    };
    if Some(url) != new.api_url.as_deref() || previous.token_id == new.token_id {
        return;
    }
    if let Ok(c) = client_for(url, Some(token)) {
        let _ = c.auth().revoke(id).await;
    }
}

async fn logout(ctx: &Ctx) -> anyhow::Result<()> {
    let path = ctx
        .creds_path
        .clone()
        .ok_or_else(|| anyhow!("no credentials file: neither HOME nor XDG_CONFIG_HOME is set"))?;
    let mut stored = ctx.stored.clone();
    let Some(token) = stored.token.clone() else {
        note(&format!("Not logged in (no token in {}).", path.display()));
        if ctx.token_from_flag_or_env {
            note("--token or SHELLWEGO_TOKEN is set: unset it, or revoke that token with `shellwego tokens revoke`.");
        }
        return Ok(());
    };
    let url = stored
        .api_url
        .clone()
        .unwrap_or_else(|| ctx.client.base().to_string());
    let message = match stored.token_id.clone() {
        Some(id) => {
            let client = client_for(&url, Some(token))?;
            match client.auth().revoke(&id).await {
                Ok(_) => format!("Logged out of {url}; token {id} revoked.\n"),
                // The token no longer works (expired or revoked elsewhere):
                // forgetting it is all that is left to do.
                Err(e) if e.status() == Some(StatusCode::UNAUTHORIZED) => {
                    format!("Logged out of {url}; token {id} was no longer valid.\n")
                }
                // Anything else: keep the token, so logout can be retried.
                Err(e) => return Err(e.into()),
            }
        }
        None => {
            note("warning: the saved token has no id and was not revoked; revoke it with `shellwego tokens revoke`");
            format!("Logged out of {url}.\n")
        }
    };
    stored.token = None;
    stored.token_id = None;
    credentials::save(&path, &stored)?;
    match ctx.output {
        // 204: the API's body is empty, and so is ours.
        Output::Json => {}
        Output::Table => emit(&message)?,
    }
    if ctx.token_from_flag_or_env {
        note("note: --token or SHELLWEGO_TOKEN is still set");
    }
    Ok(())
}

async fn whoami(ctx: &Ctx) -> anyhow::Result<()> {
    ctx.client.require_token()?;
    let u = ctx.client.user().get().await?;
    match ctx.output {
        Output::Json => emit(&json(u.body())?)?,
        Output::Table => {
            let u = u.into_inner();
            let orgs: Vec<String> = u
                .organizations
                .iter()
                .map(|o| format!("{} ({}, {})", o.name, o.id, o.role))
                .collect();
            emit(&fields(&[
                ("ID", u.id),
                ("EMAIL", u.email),
                ("NAME", u.name),
                ("MFA", if u.mfa_enabled { "on" } else { "off" }.into()),
                (
                    "ORGANIZATIONS",
                    if orgs.is_empty() {
                        "-".into()
                    } else {
                        orgs.join(", ")
                    },
                ),
                ("API", ctx.client.base().to_string()),
            ]))?;
        }
    }
    Ok(())
}
