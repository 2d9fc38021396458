//! `shellwego ssh --app APP [--instance ID] [-- CMD ARGS…]`: an interactive
//! session in a running instance (`GET /v1/apps/{id}/exec/ws`), a shell by
//! default. With a terminal on stdin it gets a terminal too (raw mode here,
//! its size, and its new size when the window changes); otherwise stdin is
//! passed through and its end ends the command's input. Exits with the
//! command's exit code.

use std::io::Write;

use anyhow::{bail, Context};
use clap::Args;
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::cmd::{ClientArgs, Ctx};

#[derive(Debug, Args)]
pub struct SshArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The app (name or id).
    #[arg(long)]
    pub app: String,
    /// The instance (inst_…) [default: a healthy one].
    #[arg(long)]
    pub instance: Option<String>,
    /// The command and its arguments (after `--`) [default: /bin/sh].
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// The terminal's size (`stty size`: rows cols).
fn size() -> Option<(u16, u16)> {
    let out = std::process::Command::new("stty")
        .arg("size")
        .stdin(std::process::Stdio::inherit())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let mut it = text.split_whitespace();
    let rows = it.next()?.parse().ok()?;
    let cols = it.next()?.parse().ok()?;
    Some((cols, rows))
}

/// Raw mode on stdin until dropped.
struct Raw(Option<nix::sys::termios::Termios>);

impl Raw {
    fn on() -> Raw {
        let stdin = std::io::stdin();
        let Ok(old) = nix::sys::termios::tcgetattr(&stdin) else {
            return Raw(None);
        };
        let mut raw = old.clone();
        nix::sys::termios::cfmakeraw(&mut raw);
        let _ = nix::sys::termios::tcsetattr(&stdin, nix::sys::termios::SetArg::TCSANOW, &raw);
        Raw(Some(old))
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        if let Some(old) = &self.0 {
            let _ = nix::sys::termios::tcsetattr(
                std::io::stdin(),
                nix::sys::termios::SetArg::TCSANOW,
                old,
            );
        }
    }
}

pub async fn run(args: SshArgs) -> anyhow::Result<i32> {
    let ctx = Ctx::new(&args.client, false)?;
    ctx.client.require_token()?;
    let (id, _) = crate::cmd::apps::resolve(&ctx.client, &args.app).await?;
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdin());
    let mut query: Vec<(&str, String)> = vec![];
    for c in &args.command {
        query.push(("command", c.clone()));
    }
    if let Some(i) = &args.instance {
        query.push(("instance_id", i.clone()));
    }
    if tty {
        query.push(("tty", "true".into()));
        if let Some((cols, rows)) = size() {
            query.push(("cols", cols.to_string()));
            query.push(("rows", rows.to_string()));
        }
    }
    let (url, token) = ctx
        .client
        .websocket(&["v1", "apps", &id, "exec", "ws"], &query);
    let mut req = url.as_str().into_client_request()?;
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse()?);
    }
    let (ws, _) = match tokio_tungstenite::connect_async(req).await {
        Ok(x) => x,
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            let body = res
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            let detail: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            bail!(
                "{} ({})",
                detail["detail"].as_str().unwrap_or(body.as_str()),
                res.status()
            );
        }
        Err(e) => return Err(e).context("cannot open the session"),
    };
    let (mut sink, mut stream) = ws.split();
    let _raw = tty.then(Raw::on);
    // Stdin from a thread of its own (a blocking read).
    let (in_tx, mut in_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    std::thread::spawn(move || {
        use std::io::Read;
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 8192];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if in_tx.blocking_send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut stdin_open = true;
    let mut winch = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
    let mut stdout = std::io::stdout();
    loop {
        tokio::select! {
            got = in_rx.recv(), if stdin_open => {
                match got {
                    None => {
                        stdin_open = false;
                        if !tty {
                            sink.send(Message::Text(r#"{"type":"eof"}"#.into())).await?;
                        }
                    }
                    Some(bytes) => sink.send(Message::Binary(bytes.into())).await?,
                }
            }
            _ = winch.recv() => {
                if let Some((cols, rows)) = size() {
                    let m = serde_json::json!({"type": "resize", "cols": cols, "rows": rows});
                    sink.send(Message::Text(m.to_string().into())).await?;
                }
            }
            m = stream.next() => {
                match m {
                    Some(Ok(Message::Binary(b))) => {
                        stdout.write_all(&b)?;
                        stdout.flush()?;
                    }
                    Some(Ok(Message::Text(t))) => {
                        let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                        match v["type"].as_str() {
                            Some("exit") => return Ok(v["exit_code"].as_i64().map_or(1, |c| c as i32)),
                            Some("error") => {
                                drop(_raw);
                                bail!("{}", v["message"].as_str().unwrap_or("the session failed"));
                            }
                            _ => {}
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => return Ok(1),
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e).context("the session broke"),
                }
            }
        }
    }
}
