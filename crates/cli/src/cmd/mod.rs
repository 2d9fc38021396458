//! The client commands (`auth`, `tokens`, `orgs`, `apps`, `deploy`,
//! `deployments`, `nodes`, `events`, `webhooks`): the
//! options they share, how the API URL and the token are found, list paging
//! and `KEY=VALUE` arguments.

pub mod apps;
pub mod auth;
pub mod deployments;
pub mod domains;
pub mod events;
pub mod exec;
pub mod logs;
pub mod metrics;
pub mod nodes;
pub mod orgs;
pub mod secrets;
pub mod ssh;
pub mod tokens;
mod wait;
pub mod webhooks;

use std::path::PathBuf;

use crate::credentials::{self, Credentials, DEFAULT_API_URL};
use crate::output::Output;
use clap::Args;
use shellwego_client::{Client, ClientError, ListQuery};

/// Options of every client command. Each value comes from the flag, then
/// its environment variable, then the credentials file, then the default.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// API base URL [default: the one saved by `auth login`, else http://127.0.0.1:3000].
    #[arg(long, env = "SHELLWEGO_API_URL", global = true, value_name = "URL")]
    pub api_url: Option<String>,
    /// API token [default: the one saved by `auth login`].
    #[arg(
        long,
        env = "SHELLWEGO_TOKEN",
        global = true,
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Output format: aligned columns, or the API's JSON body.
    #[arg(
        long,
        short = 'o',
        global = true,
        value_enum,
        default_value_t = Output::Table
    )]
    pub output: Output,
}

/// What a client command runs with.
pub struct Ctx {
    pub client: Client,
    pub output: Output,
    /// Where the credentials file is (`None`: neither XDG_CONFIG_HOME nor HOME is set).
    pub creds_path: Option<PathBuf>,
    /// The credentials file's contents (default when there is none).
    pub stored: Credentials,
    /// The token came from `--token` or `SHELLWEGO_TOKEN`, not the file.
    pub token_from_flag_or_env: bool,
}

impl Ctx {
    /// Resolve the API URL and token. A broken credentials file is an
    /// error, unless `lenient` (for `auth login`, which rewrites it).
    pub fn new(args: &ClientArgs, lenient: bool) -> anyhow::Result<Ctx> {
        let creds_path = credentials::default_path();
        let stored = match &creds_path {
            Some(p) => match credentials::load(p) {
                Ok(c) => c.unwrap_or_default(),
                Err(e) if lenient => {
                    eprintln!("warning: {e:#}; it will be replaced");
                    Credentials::default()
                }
                Err(e) => return Err(e),
            },
            None => Credentials::default(),
        };
        let api_url = credentials::pick(args.api_url.as_deref(), stored.api_url.as_deref())
            .unwrap_or_else(|| DEFAULT_API_URL.to_string());
        let explicit = credentials::pick(args.token.as_deref(), None);
        let token_from_flag_or_env = explicit.is_some();
        let token = explicit.or_else(|| credentials::pick(None, stored.token.as_deref()));
        Ok(Ctx {
            client: client_for(&api_url, token)?,
            output: args.output,
            creds_path,
            stored,
            token_from_flag_or_env,
        })
    }
}

/// A client of the API at `url` that names itself `shellwego-cli/<version>`.
pub fn client_for(url: &str, token: Option<String>) -> Result<Client, ClientError> {
    Client::with_user_agent(
        url,
        token,
        concat!("shellwego-cli/", env!("CARGO_PKG_VERSION")),
    )
}

/// Paging options of `list` commands.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    /// Items per page, 1-100 [default: the API's, 20].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub limit: Option<u32>,
    /// Fetch every page (follows pagination.next_cursor); JSON output is
    /// then one `{data, pagination}` with all items and the last page's pagination.
    #[arg(long, conflicts_with = "cursor")]
    pub all: bool,
    /// Start at this cursor (a previous page's next_cursor).
    #[arg(long)]
    pub cursor: Option<String>,
}

impl ListArgs {
    /// The list call these options ask for (filters are added to it).
    pub fn query(&self) -> ListQuery {
        ListQuery::new()
            .limit(self.limit)
            .cursor(self.cursor.clone())
            .all(self.all)
    }
}

/// After one page in a table: say how to get the next.
pub fn more_hint(p: &shellwego_api::Pagination, shown: usize, all: bool) {
    if all || !p.has_more {
        return;
    }
    match &p.next_cursor {
        Some(c) => crate::output::note(&format!(
            "({shown} of {} shown; pass --all, or --cursor {c} for the next page)",
            p.total
        )),
        None => crate::output::note(&format!("({shown} of {} shown; pass --all)", p.total)),
    }
}

/// A `KEY=VALUE` argument (`--env`, `--label`); clap names the flag in the
/// error, e.g. "invalid value 'FOO' for '--env <KEY=VALUE>'".
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        Some(_) => Err("the key before '=' is empty".into()),
        None => Err(format!("expected KEY=VALUE, e.g. {s}=…")),
    }
}

/// A flag taking one of the model's words (`--strategy`), given its
/// `NAMES`: clap lists them in `--help` and in its usage error, and the
/// value is the enum.
pub fn word<T>(names: &'static [&'static str]) -> impl clap::builder::TypedValueParser<Value = T>
where
    T: std::str::FromStr<Err = shellwego_api::model::UnknownValue> + Clone + Send + Sync + 'static,
{
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(names).try_map(|s| s.parse::<T>())
}

/// A duration such as `90s`, `2m` or `1h` (for `--timeout`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    shellwego_core::units::parse_duration(s)
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "expected a duration such as 90s, 2m or 1h".to_string())
}

/// Ask `question` before destroying `what`, unless `--yes`. Without a
/// terminal to ask on, refuse: a script must say `--yes`.
pub fn confirm(what: &str, question: &str, yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !crate::prompt::stdin_is_terminal() {
        anyhow::bail!(
            "not deleting {what} without confirmation: pass --yes (stdin is not a terminal to ask on)"
        );
    }
    if crate::prompt::yes_no(question)? {
        Ok(())
    } else {
        anyhow::bail!("cancelled; {what} was not deleted")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_values_need_an_equals_sign_and_a_key() {
        assert_eq!(
            parse_key_value("A=b=c"),
            Ok(("A".to_string(), "b=c".to_string()))
        );
        assert_eq!(parse_key_value("A="), Ok(("A".to_string(), String::new())));
        assert!(parse_key_value("FOO").is_err());
        assert!(parse_key_value("=x").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(
            parse_duration("2m"),
            Ok(std::time::Duration::from_secs(120))
        );
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
