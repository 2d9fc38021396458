//! `shellwego exec --app APP [--instance ID] [--timeout 30s] -- CMD ARGS…`:
//! run a command in a running instance; its stdout and stderr are printed
//! as they came back, and `shellwego` exits with the command's exit code.

use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use shellwego_api::apps::ExecRequest;

use crate::cmd::{ClientArgs, Ctx};
use crate::output::{emit, json, Output};

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The app (name or id).
    #[arg(long)]
    pub app: String,
    /// The instance (inst_…) [default: a healthy one].
    #[arg(long)]
    pub instance: Option<String>,
    /// Kill the command's process tree after this long (1s to 1h).
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub timeout: String,
    /// Give the command this file as its standard input (`-`: this
    /// command's stdin) [default: none].
    #[arg(long, value_name = "FILE")]
    pub stdin: Option<PathBuf>,
    /// The command and its arguments (after `--`).
    #[arg(required = true, last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Run it; the command's exit code (1 when it had none: killed).
pub async fn run(args: ExecArgs) -> anyhow::Result<i32> {
    let ctx = Ctx::new(&args.client, false)?;
    ctx.client.require_token()?;
    let (id, _) = crate::cmd::apps::resolve(&ctx.client, &args.app).await?;
    let stdin = match &args.stdin {
        None => String::new(),
        Some(p) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read stdin")?;
            s
        }
        Some(p) => {
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?
        }
    };
    let req = ExecRequest {
        command: args.command.clone(),
        instance_id: args.instance.clone(),
        stdin,
        tty: false,
        timeout: Some(args.timeout.clone()),
    };
    let r = ctx.client.apps().exec(&id, &req).await?;
    if ctx.output == Output::Json {
        emit(&json(r.body())?)?;
        return Ok(0);
    }
    let r = r.into_inner();
    std::io::stdout().write_all(r.stdout.as_bytes())?;
    std::io::stderr().write_all(r.stderr.as_bytes())?;
    if r.truncated {
        eprintln!("(output truncated at 512 KiB per stream)");
    }
    if r.timed_out {
        eprintln!("(killed after {}: it ran past --timeout)", args.timeout);
    }
    Ok(r.exit_code.unwrap_or(1))
}
