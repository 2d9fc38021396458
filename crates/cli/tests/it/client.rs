//! The client commands (`auth`, `tokens`, `orgs`) of the real `shellwego`
//! binary, against the real server binary started on a free port with its
//! own data dir; HOME and XDG_CONFIG_HOME point into a temp dir. A few
//! tests use a scripted fake API instead, for answers the real server only
//! gives in situations that are slow to set up (an MFA challenge, 429).

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use shellwego_testkit::free_port;
use shellwego_testkit::platform::{run, run_with_stdin, CliHome, Out, Platform, Ready};

use crate::support::{bin, field, BIN};

const ADMIN_EMAIL: &str = "admin@localhost";
const ADMIN_PASSWORD: &str = "admin-password-1";

/// A temp HOME and XDG_CONFIG_HOME for the CLI, and its credentials file.
struct Home {
    cli: CliHome,
}

impl Home {
    fn new() -> Home {
        Home {
            cli: CliHome::new(),
        }
    }

    fn home(&self) -> PathBuf {
        self.cli.home()
    }

    /// Where the CLI keeps its credentials with XDG_CONFIG_HOME set.
    fn creds(&self) -> PathBuf {
        self.cli.xdg().join("shellwego/credentials.toml")
    }

    fn read_creds(&self) -> toml::Table {
        toml::from_str(&std::fs::read_to_string(self.creds()).unwrap()).unwrap()
    }

    fn write_creds(&self, path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        set_mode(path, 0o600);
    }

    /// The CLI with this home, no token or URL from the test's own
    /// environment, and an empty stdin.
    fn cli(&self, args: &[&str]) -> Command {
        self.cli.command(bin(), args)
    }
}

#[cfg(unix)]
fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn ok(c: &mut Command) -> String {
    let o = run(c);
    assert!(
        o.ok,
        "{c:?} failed ({:?}):\n{}\n{}",
        o.code, o.stdout, o.stderr
    );
    o.stdout
}

fn fails(c: &mut Command) -> Out {
    let o = run(c);
    assert!(!o.ok, "{c:?} should have failed:\n{}", o.stdout);
    assert_eq!(o.code, Some(1), "{c:?}: {}", o.stderr);
    o
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// A started `shellwego server` and a home for the CLI.
struct Kit {
    // First: stopped before its home (and its files) go.
    server: Platform,
    home: Home,
    admin_token: String,
}

impl Kit {
    fn start() -> Kit {
        Kit::start_with_config(None)
    }

    /// [`Kit::start`], the server reading `config` (TOML) as its config file.
    fn start_with_config(config: Option<&str>) -> Kit {
        let home = Home::new();
        let mut server = Platform::server(bin())
            .dir(home.cli.dir())
            .env("SHELLWEGO_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .ready(Ready::Token);
        if let Some(c) = config {
            let path = home.cli.dir().join("shellwego.toml");
            std::fs::write(&path, c).unwrap();
            server = server.env("SHELLWEGO_CONFIG", path);
        }
        let server = server.start();
        let admin_token = server.token().to_string();
        Kit {
            server,
            home,
            admin_token,
        }
    }

    fn url(&self) -> String {
        self.server.url()
    }

    fn cli(&self, args: &[&str]) -> Command {
        self.home.cli(args)
    }

    /// The CLI as the bootstrap admin, through the environment.
    fn admin(&self, args: &[&str]) -> Command {
        let mut c = self.cli(args);
        c.env("SHELLWEGO_API_URL", self.url())
            .env("SHELLWEGO_TOKEN", &self.admin_token);
        c
    }
}

#[test]
fn every_client_command_has_help_with_a_one_line_about() {
    let top = ok(Command::new(BIN).arg("--help"));
    for (cmd, about) in [
        ("auth", "Log in"),
        ("tokens", "API tokens"),
        ("orgs", "organization"),
        ("webhooks", "Webhooks"),
    ] {
        let line = top
            .lines()
            .find(|l| l.trim_start().starts_with(cmd))
            .unwrap_or_else(|| panic!("{cmd} missing from --help:\n{top}"));
        assert!(line.contains(about), "{line}");
    }
    for args in [
        vec!["auth"],
        vec!["auth", "login"],
        vec!["auth", "logout"],
        vec!["auth", "whoami"],
        vec!["tokens"],
        vec!["tokens", "create"],
        vec!["tokens", "list"],
        vec!["tokens", "revoke"],
        vec!["orgs"],
        vec!["orgs", "get"],
        vec!["orgs", "members"],
        vec!["orgs", "invite"],
        vec!["webhooks"],
        vec!["webhooks", "create"],
        vec!["webhooks", "list"],
        vec!["webhooks", "get"],
        vec!["webhooks", "update"],
        vec!["webhooks", "delete"],
        vec!["webhooks", "deliveries"],
        vec!["webhooks", "redeliver"],
        vec!["webhooks", "test"],
    ] {
        let mut a = args.clone();
        a.push("--help");
        let text = ok(Command::new(BIN).args(&a));
        assert!(text.contains("Usage:"), "{args:?}: {text}");
        for flag in ["--output", "--api-url", "--token", "SHELLWEGO_TOKEN"] {
            assert!(text.contains(flag), "{args:?} --help lacks {flag}: {text}");
        }
        // The about is one line, before the blank line and Usage.
        let first = text.lines().next().unwrap();
        assert!(
            !first.is_empty() && !first.starts_with("Usage"),
            "{args:?}: {text}"
        );
    }
    let text = ok(Command::new(BIN).args(["tokens", "list", "--help"]));
    for flag in ["--limit", "--all", "--cursor"] {
        assert!(text.contains(flag), "tokens list --help lacks {flag}");
    }
    let text = ok(Command::new(BIN).args(["webhooks", "create", "--help"]));
    for flag in [
        "--event",
        "--header",
        "--secret-stdin",
        "--secret-file",
        "--max-retries",
        "--backoff",
        "exponential",
    ] {
        assert!(text.contains(flag), "webhooks create --help lacks {flag}");
    }
    let text = ok(Command::new(BIN).args(["auth", "login", "--help"]));
    for flag in ["--email", "--password-stdin", "--mfa-code"] {
        assert!(text.contains(flag), "auth login --help lacks {flag}");
    }
    // Never show the token's value in --help.
    let text = ok(Command::new(BIN)
        .args(["auth", "whoami", "--help"])
        .env("SHELLWEGO_TOKEN", "pat_secret_value"));
    assert!(!text.contains("pat_secret_value"));
}

#[test]
fn whoami_with_shellwego_token_in_table_and_json() {
    let kit = Kit::start();
    let table = ok(&mut kit.admin(&["auth", "whoami"]));
    assert_eq!(field(&table, "EMAIL"), ADMIN_EMAIL);
    assert_eq!(field(&table, "NAME"), "Administrator");
    assert!(field(&table, "ORGANIZATIONS").starts_with("Default (org_"));
    assert!(field(&table, "ORGANIZATIONS").ends_with(", owner)"));
    assert_eq!(field(&table, "API"), kit.url());

    let body = json(&ok(&mut kit.admin(&["auth", "whoami", "--output", "json"])));
    assert_eq!(body["email"], ADMIN_EMAIL);
    assert!(body["id"].as_str().unwrap().starts_with("usr_"));
    // As the API sent it: its members in its order.
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys[..3], ["id", "email", "name"]);
    // -o works after the subcommand and before it.
    json(&ok(&mut kit.admin(&["auth", "-o", "json", "whoami"])));

    // Without any token: a clear message, and no request.
    let o = fails(&mut kit.cli(&["auth", "whoami", "--api-url", &kit.url()]));
    assert!(o.stderr.contains("not logged in"), "{}", o.stderr);
    assert!(o.stdout.is_empty());
}

#[test]
fn tokens_create_list_revoke_in_table_and_json() {
    let kit = Kit::start();

    let table = ok(&mut kit.admin(&[
        "tokens",
        "create",
        "ci",
        "--scope",
        "apps:read,deployments:write",
        "--expires-in",
        "90d",
    ]));
    let ci_id = field(&table, "ID");
    let ci_token = field(&table, "TOKEN");
    assert!(ci_id.starts_with("tok_"), "{table}");
    assert!(ci_token.starts_with("pat_"), "{table}");
    assert_eq!(field(&table, "SCOPE"), "apps:read,deployments:write");
    assert_ne!(field(&table, "EXPIRES"), "-");
    // The new token works.
    let who = ok(kit
        .cli(&["auth", "whoami", "--api-url", &kit.url()])
        .env("SHELLWEGO_TOKEN", &ci_token));
    assert_eq!(field(&who, "EMAIL"), ADMIN_EMAIL);

    let body = json(&ok(
        &mut kit.admin(&["tokens", "create", "deploy", "--output", "json"])
    ));
    assert_eq!(body["name"], "deploy");
    assert!(body["token"].as_str().unwrap().starts_with("pat_"));
    assert_eq!(body["type"], "personal_access_token");
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys[..3], ["id", "name", "token"]);

    // Three tokens: the bootstrap one, ci and deploy.
    let list = ok(&mut kit.admin(&["tokens", "list"]));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 4, "{list}");
    assert!(lines[0].starts_with("ID") && lines[0].contains("LAST USED"));
    assert!(list.contains(&ci_id) && list.contains("deploy"));
    assert!(!list.contains(&ci_token), "a list shows no secrets");

    let page = json(&ok(&mut kit.admin(&["tokens", "list", "-o", "json"])));
    assert_eq!(page["data"].as_array().unwrap().len(), 3);
    assert_eq!(page["pagination"]["total"], 3);

    // One page of one, with a hint; then every page.
    let o = run(&mut kit.admin(&["tokens", "list", "--limit", "1"]));
    assert!(o.ok);
    assert_eq!(o.stdout.lines().count(), 2, "{}", o.stdout);
    assert!(o.stderr.contains("--cursor"), "{}", o.stderr);
    let all = ok(&mut kit.admin(&["tokens", "list", "--limit", "1", "--all"]));
    assert_eq!(all.lines().count(), 4, "{all}");
    let all =
        json(&ok(&mut kit.admin(&[
            "tokens", "list", "--limit", "1", "--all", "-o", "json",
        ])));
    assert_eq!(all["data"].as_array().unwrap().len(), 3);
    assert_eq!(all["pagination"]["has_more"], false);
    // The cursor of page one gets page two.
    let first = json(&ok(
        &mut kit.admin(&["tokens", "list", "--limit", "1", "-o", "json"])
    ));
    let cursor = first["pagination"]["next_cursor"].as_str().unwrap();
    let second = json(&ok(&mut kit.admin(&[
        "tokens", "list", "--limit", "1", "--cursor", cursor, "-o", "json",
    ])));
    assert_ne!(first["data"][0]["id"], second["data"][0]["id"]);

    // Revoke: the token stops working.
    let revoked = ok(&mut kit.admin(&["tokens", "revoke", &ci_id]));
    assert_eq!(revoked, format!("Revoked {ci_id}.\n"));
    let o = fails(
        kit.cli(&["auth", "whoami", "--api-url", &kit.url()])
            .env("SHELLWEGO_TOKEN", &ci_token),
    );
    assert!(o.stderr.contains("trace_id: req_"), "{}", o.stderr);
    // Revoking twice: the API says there is no such live token.
    let o = fails(&mut kit.admin(&["tokens", "revoke", &ci_id]));
    assert!(o.stderr.contains("trace_id: req_"), "{}", o.stderr);
    // JSON output of a 204 is the (empty) body.
    let deploy_id = body["id"].as_str().unwrap();
    assert_eq!(
        ok(&mut kit.admin(&["tokens", "revoke", deploy_id, "-o", "json"])),
        ""
    );
}

#[test]
fn flags_beat_environment_beats_credentials_file() {
    let kit = Kit::start();
    let closed = format!("http://127.0.0.1:{}", free_port());
    let file = |url: &str, token: &str| format!("api_url = \"{url}\"\ntoken = \"{token}\"\n");

    // The file alone.
    kit.home
        .write_creds(&kit.home.creds(), &file(&kit.url(), &kit.admin_token));
    let who = ok(&mut kit.cli(&["auth", "whoami"]));
    assert_eq!(field(&who, "EMAIL"), ADMIN_EMAIL);
    // SHELLWEGO_TOKEN beats the file; --token beats SHELLWEGO_TOKEN.
    let o = fails(
        kit.cli(&["auth", "whoami"])
            .env("SHELLWEGO_TOKEN", "pat_bogus"),
    );
    assert!(o.stderr.contains("trace_id: req_"), "{}", o.stderr);
    ok(kit
        .cli(&["auth", "whoami", "--token", &kit.admin_token])
        .env("SHELLWEGO_TOKEN", "pat_bogus"));
    let o = fails(&mut kit.cli(&["auth", "whoami", "--token", "pat_bogus"]));
    assert!(o.stderr.starts_with("error: "), "{}", o.stderr);

    // The same for the URL.
    kit.home
        .write_creds(&kit.home.creds(), &file(&closed, &kit.admin_token));
    let o = fails(&mut kit.cli(&["auth", "whoami"]));
    assert!(
        o.stderr
            .contains(&format!("cannot reach the API at {closed}/v1/user")),
        "{}",
        o.stderr
    );
    ok(kit
        .cli(&["auth", "whoami"])
        .env("SHELLWEGO_API_URL", kit.url()));
    ok(kit
        .cli(&["auth", "whoami", "--api-url", &kit.url()])
        .env("SHELLWEGO_API_URL", &closed));
    fails(
        kit.cli(&["auth", "whoami", "--api-url", &closed])
            .env("SHELLWEGO_API_URL", kit.url()),
    );

    // Without XDG_CONFIG_HOME the file is under $HOME/.config.
    std::fs::remove_file(kit.home.creds()).unwrap();
    let in_home = kit.home.home().join(".config/shellwego/credentials.toml");
    kit.home
        .write_creds(&in_home, &file(&kit.url(), &kit.admin_token));
    fails(&mut kit.cli(&["auth", "whoami"]));
    ok(kit.cli(&["auth", "whoami"]).env_remove("XDG_CONFIG_HOME"));

    // A file others can read still works, with a warning.
    #[cfg(unix)]
    {
        set_mode(&in_home, 0o644);
        let o = run(kit.cli(&["auth", "whoami"]).env_remove("XDG_CONFIG_HOME"));
        assert!(o.ok);
        assert!(o.stderr.contains("chmod 600"), "{}", o.stderr);
    }
    // A broken file is an error that names it.
    kit.home.write_creds(&kit.home.creds(), "token = [");
    let o = fails(&mut kit.cli(&["auth", "whoami"]));
    assert!(o.stderr.contains("credentials.toml"), "{}", o.stderr);
}

#[test]
fn problems_are_printed_with_detail_fields_and_trace_id() {
    let kit = Kit::start();
    let o = fails(&mut kit.admin(&["tokens", "create", "x", "--expires-in", "400d"]));
    assert!(o.stdout.is_empty());
    assert!(o.stderr.starts_with("error: "), "{}", o.stderr);
    assert!(
        o.stderr
            .contains("\n  expires_in: must be between 1h and 365d\n"),
        "{}",
        o.stderr
    );
    assert!(o.stderr.contains("\n  trace_id: req_"), "{}", o.stderr);

    let o = fails(&mut kit.admin(&["tokens", "create", "x", "--scope", "Apps"]));
    assert!(o.stderr.contains("  scope[0]: "), "{}", o.stderr);

    let o = fails(&mut kit.admin(&["tokens", "revoke", "tok_doesnotexist"]));
    assert!(o.stderr.starts_with("error: "), "{}", o.stderr);
    assert!(o.stderr.contains("trace_id: req_"), "{}", o.stderr);

    // Bad flags are usage errors (exit 2), before any request.
    let o = run(&mut kit.admin(&["tokens", "list", "--limit", "0"]));
    assert_eq!(o.code, Some(2));
    let o = run(&mut kit.admin(&["tokens", "list", "--output", "yaml"]));
    assert_eq!(o.code, Some(2));
}

#[test]
fn an_unreachable_api_or_a_bad_url_is_a_clear_error() {
    let home = Home::new();
    let url = format!("http://127.0.0.1:{}", free_port());
    let o = fails(
        home.cli(&["tokens", "list", "--api-url", &url])
            .env("SHELLWEGO_TOKEN", "pat_x"),
    );
    assert!(
        o.stderr.starts_with(&format!(
            "error: cannot reach the API at {url}/v1/user/tokens"
        )),
        "{}",
        o.stderr
    );
    let o = fails(
        home.cli(&["auth", "whoami", "--api-url", "localhost:3000"])
            .env("SHELLWEGO_TOKEN", "pat_x"),
    );
    assert!(o.stderr.contains("http://"), "{}", o.stderr);
}

// ---- A scripted fake API -------------------------------------------------

#[derive(Debug, Clone)]
struct Seen {
    request_line: String,
    authorization: Option<String>,
    /// The request head (request line and headers).
    head: String,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }
}

struct Fake {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    /// Answer one connection per scripted `(status, extra header lines,
    /// body)`, in order, each with `Connection: close`.
    fn start(script: Vec<(u16, &'static str, String)>) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(vec![]));
        let log = seen.clone();
        std::thread::spawn(move || {
            for (status, headers, body) in script {
                let Ok((mut conn, _)) = listener.accept() else {
                    return;
                };
                let req = read_request(&mut conn);
                log.lock().unwrap().push(req);
                let kind = if status >= 400 {
                    "application/problem+json"
                } else {
                    "application/json"
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{headers}Connection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Fake { port, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn read_request(conn: &mut std::net::TcpStream) -> Seen {
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = vec![];
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "the client closed early");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    };
    let len: usize = header("content-length").map_or(0, |v| v.parse().unwrap());
    while buf.len() < head_end + len {
        let n = conn.read(&mut chunk).unwrap();
        assert!(n > 0, "the client closed early");
        buf.extend_from_slice(&chunk[..n]);
    }
    Seen {
        request_line: head.lines().next().unwrap_or_default().to_string(),
        authorization: header("authorization"),
        body: String::from_utf8_lossy(&buf[head_end..head_end + len]).to_string(),
        head,
    }
}

/// A problem document; `errors` is left out when it is `null` (as the
/// server leaves out an empty list).
fn problem(status: u16, detail: &str, errors: Value) -> String {
    let mut p = serde_json::json!({
        "type": "https://api.shellwego.com/errors/x", "title": "T", "status": status,
        "detail": detail, "instance": "/v1/auth/token", "trace_id": "req_fake",
    });
    if !errors.is_null() {
        p["errors"] = errors;
    }
    p.to_string()
}

fn token_created() -> String {
    serde_json::json!({
        "id": "tok_fake", "name": "cli", "token": "pat_fake", "type": "personal_access_token",
        "expires_at": "2027-01-01T00:00:00Z", "scope": [], "restrict_to_apps": [],
        "permissions": {"resources": ["*"], "actions": ["*"]},
    })
    .to_string()
}

#[test]
fn login_asks_for_the_mfa_code_saves_the_token_0600_and_logout_revokes_it() {
    let home = Home::new();
    let mfa = serde_json::json!([{"field": "mfa_code", "code": "required", "message": "enter the code from your authenticator"}]);
    let fake = Fake::start(vec![
        (401, "", problem(401, "MFA code required", mfa)),
        (200, "", token_created()),
        (204, "", String::new()),
    ]);
    // A token in the environment is not sent with a login.
    let o = run_with_stdin(
        home.cli(&["auth", "login", "--api-url", &fake.url()])
            .env("SHELLWEGO_TOKEN", "pat_from_env"),
        "admin@localhost\nadmin-password-1\n123456\n",
    );
    assert!(o.ok, "{}\n{}", o.stdout, o.stderr);
    assert!(o.stderr.contains("SHELLWEGO_TOKEN is set"), "{}", o.stderr);
    assert!(
        o.stdout.starts_with(&format!(
            "Logged in to {} as admin@localhost.\n",
            fake.url()
        )),
        "{}",
        o.stdout
    );
    assert_eq!(field(&o.stdout, "TOKEN ID"), "tok_fake");
    assert!(!o.stdout.contains("pat_fake"), "the secret is not printed");

    let seen = fake.seen();
    assert_eq!(seen[0].request_line, "POST /v1/auth/token HTTP/1.1");
    assert_eq!(seen[0].authorization, None);
    let first = json(&seen[0].body);
    assert_eq!(first["email"], "admin@localhost");
    assert_eq!(first["password"], "admin-password-1");
    assert_eq!(first["mfa_code"], Value::Null);
    assert_eq!(json(&seen[1].body)["mfa_code"], "123456");

    #[cfg(unix)]
    assert_eq!(mode(&home.creds()), 0o600);
    let creds = home.read_creds();
    assert_eq!(creds["api_url"].as_str(), Some(fake.url().as_str()));
    assert_eq!(creds["email"].as_str(), Some("admin@localhost"));
    assert_eq!(creds["token"].as_str(), Some("pat_fake"));
    assert_eq!(creds["token_id"].as_str(), Some("tok_fake"));

    // Logout revokes the saved token with itself, then forgets it.
    let out = ok(&mut home.cli(&["auth", "logout"]));
    assert!(out.contains("token tok_fake revoked"), "{out}");
    let seen = fake.seen();
    assert_eq!(
        seen[2].request_line,
        "DELETE /v1/auth/token/tok_fake HTTP/1.1"
    );
    assert_eq!(seen[2].authorization.as_deref(), Some("Bearer pat_fake"));
    let creds = home.read_creds();
    assert!(creds.get("token").is_none() && creds.get("token_id").is_none());
    assert_eq!(creds["api_url"].as_str(), Some(fake.url().as_str()));
    #[cfg(unix)]
    assert_eq!(mode(&home.creds()), 0o600);
    // Logged out: whoami says so, logout again is a no-op.
    let o = fails(&mut home.cli(&["auth", "whoami"]));
    assert!(o.stderr.contains("not logged in"), "{}", o.stderr);
    let o = run(&mut home.cli(&["auth", "logout"]));
    assert!(o.ok && o.stderr.contains("Not logged in"), "{}", o.stderr);
}

#[test]
fn login_failures_are_problems_and_save_nothing() {
    let home = Home::new();
    let fake = Fake::start(vec![
        (
            429,
            "Retry-After: 30\r\n",
            problem(429, "Too many failed logins; try again later.", Value::Null),
        ),
        (
            401,
            "",
            problem(401, "Wrong email or password.", serde_json::json!([])),
        ),
    ]);
    let login = || {
        let mut c = home.cli(&[
            "auth",
            "login",
            "--api-url",
            &fake.url(),
            "--email",
            "admin@localhost",
            "--password-stdin",
        ]);
        run_with_stdin(&mut c, "wrong-password\n")
    };
    let o = login();
    assert_eq!(o.code, Some(1));
    assert_eq!(
        o.stderr,
        "error: Too many failed logins; try again later.\n  retry after: 30s\n  trace_id: req_fake\n"
    );
    let o = login();
    assert_eq!(o.code, Some(1));
    assert!(o.stderr.starts_with("error: Wrong email or password.\n"));
    assert!(!home.creds().exists());
    assert_eq!(json(&fake.seen()[0].body)["password"], "wrong-password");

    // Nothing on stdin: no prompt hangs, a clear error.
    let o = fails(&mut home.cli(&["auth", "login", "--api-url", &fake.url()]));
    assert!(o.stderr.contains("no email given"), "{}", o.stderr);
    // --password-stdin needs --email.
    let o = run(&mut home.cli(&["auth", "login", "--password-stdin"]));
    assert_eq!(o.code, Some(2));
}

#[test]
fn logout_keeps_the_token_when_revoking_fails() {
    let home = Home::new();
    let fake = Fake::start(vec![
        (
            503,
            "",
            problem(503, "The store is unavailable.", Value::Null),
        ),
        (401, "", problem(401, "The token was revoked.", Value::Null)),
    ]);
    home.write_creds(
        &home.creds(),
        &format!(
            "api_url = \"{}\"\ntoken = \"pat_fake\"\ntoken_id = \"tok_fake\"\n",
            fake.url()
        ),
    );
    let o = fails(&mut home.cli(&["auth", "logout"]));
    assert!(o.stderr.contains("The store is unavailable."));
    assert_eq!(home.read_creds()["token"].as_str(), Some("pat_fake"));
    // A token that no longer works is simply forgotten.
    let out = ok(&mut home.cli(&["auth", "logout"]));
    assert!(out.contains("no longer valid"), "{out}");
    assert!(home.read_creds().get("token").is_none());
}

// ---- Against routes the server gains with the identity work ---------------
// (`POST /v1/auth/token`, `DELETE /v1/auth/token/{id}`, `/v1/organizations/…`)

#[test]
fn login_then_whoami_then_logout_against_the_server() {
    let kit = Kit::start();
    let o = run_with_stdin(
        &mut kit.cli(&["auth", "login", "--api-url", &kit.url()]),
        &format!("{ADMIN_EMAIL}\n{ADMIN_PASSWORD}\n"),
    );
    assert!(o.ok, "{}\n{}", o.stdout, o.stderr);
    assert!(o.stdout.starts_with("Logged in to "), "{}", o.stdout);
    #[cfg(unix)]
    assert_eq!(mode(&kit.home.creds()), 0o600);
    let creds = kit.home.read_creds();
    assert_eq!(creds["api_url"].as_str(), Some(kit.url().as_str()));
    assert_eq!(creds["email"].as_str(), Some(ADMIN_EMAIL));
    assert!(creds["token_id"].as_str().unwrap().starts_with("tok_"));
    let first_token = creds["token"].as_str().unwrap().to_string();

    // No SHELLWEGO_TOKEN, no --api-url: both from the file.
    let who = ok(&mut kit.cli(&["auth", "whoami"]));
    assert_eq!(field(&who, "EMAIL"), ADMIN_EMAIL);
    assert_eq!(field(&who, "API"), kit.url());

    // Again, with flags and JSON: the API's body. The first token is retired.
    let o = run_with_stdin(
        &mut kit.cli(&[
            "auth",
            "login",
            "--email",
            ADMIN_EMAIL,
            "--password-stdin",
            "-o",
            "json",
        ]),
        &format!("{ADMIN_PASSWORD}\n"),
    );
    assert!(o.ok, "{}", o.stderr);
    let body = json(&o.stdout);
    let token = body["token"].as_str().unwrap().to_string();
    assert_eq!(
        kit.home.read_creds()["token"].as_str(),
        Some(token.as_str())
    );
    assert_eq!(
        kit.home.read_creds()["token_id"].as_str(),
        body["id"].as_str()
    );
    fails(
        kit.cli(&["auth", "whoami"])
            .env("SHELLWEGO_TOKEN", &first_token),
    );

    // Logout: the token stops working and leaves the file.
    let out = ok(&mut kit.cli(&["auth", "logout"]));
    assert!(out.contains("revoked"), "{out}");
    assert!(kit.home.read_creds().get("token").is_none());
    let o = fails(&mut kit.cli(&["auth", "whoami"]));
    assert!(o.stderr.contains("not logged in"), "{}", o.stderr);
    let o = fails(kit.cli(&["auth", "whoami"]).env("SHELLWEGO_TOKEN", &token));
    assert!(o.stderr.contains("trace_id: req_"), "{}", o.stderr);
}

#[test]
fn login_with_a_wrong_password_fails_and_saves_nothing() {
    let kit = Kit::start();
    let o = run_with_stdin(
        &mut kit.cli(&["auth", "login", "--api-url", &kit.url()]),
        &format!("{ADMIN_EMAIL}\nnot-the-password\n"),
    );
    assert_eq!(o.code, Some(1), "{}", o.stdout);
    assert!(o.stderr.starts_with("error: "), "{}", o.stderr);
    // The route's own 401, not the fallback of a server without it.
    assert!(!o.stderr.contains("There is no route"), "{}", o.stderr);
    assert!(o.stderr.contains("trace_id: req_"), "{}", o.stderr);
    assert!(!kit.home.creds().exists());
}

#[test]
fn orgs_get_members_invite() {
    let kit = Kit::start();
    let table = ok(&mut kit.admin(&["orgs", "get"]));
    assert_eq!(field(&table, "NAME"), "Default");
    assert_eq!(field(&table, "PLAN"), "enterprise");
    let org_id = field(&table, "ID");
    assert!(org_id.starts_with("org_"));

    let body = json(&ok(&mut kit.admin(&["orgs", "get", "-o", "json"])));
    assert_eq!(body["id"], org_id.as_str());
    assert_eq!(body["name"], "Default");
    // --org before or after the subcommand.
    json(&ok(
        &mut kit.admin(&["orgs", "get", "--org", &org_id, "-o", "json"])
    ));
    json(&ok(
        &mut kit.admin(&["orgs", "--org", &org_id, "get", "-o", "json"])
    ));

    let members = ok(&mut kit.admin(&["orgs", "members"]));
    let lines: Vec<&str> = members.lines().collect();
    assert_eq!(lines.len(), 2, "{members}");
    assert!(lines[0].starts_with("USER ID"));
    assert!(lines[1].contains(ADMIN_EMAIL) && lines[1].contains("owner"));
    let page = json(&ok(
        &mut kit.admin(&["orgs", "members", "--all", "-o", "json"])
    ));
    assert_eq!(page["data"][0]["email"], ADMIN_EMAIL);
    assert_eq!(page["data"][0]["role"], "owner");

    let table = ok(&mut kit.admin(&["orgs", "invite", "dev@example.com", "--role", "developer"]));
    assert_eq!(field(&table, "EMAIL"), "dev@example.com");
    assert_eq!(field(&table, "ROLE"), "developer");
    assert_eq!(field(&table, "STATUS"), "pending");
    assert_eq!(field(&table, "ORGANIZATION"), org_id);
    assert_ne!(field(&table, "TOKEN"), "-");
    let inv = json(&ok(&mut kit.admin(&[
        "orgs",
        "invite",
        "viewer@example.com",
        "--role",
        "viewer",
        "--expires-in",
        "1d",
        "--org",
        &org_id,
        "-o",
        "json",
    ])));
    assert_eq!(inv["email"], "viewer@example.com");
    assert!(inv["id"].as_str().unwrap().starts_with("inv_"));
    assert!(!inv["token"].as_str().unwrap().is_empty());

    // Mistakes are problems with the field named.
    let o = fails(&mut kit.admin(&["orgs", "invite", "x@example.com", "--role", "owner"]));
    assert!(o.stderr.contains("  role: "), "{}", o.stderr);
    assert!(o.stderr.contains("trace_id: req_"), "{}", o.stderr);
    let o = fails(&mut kit.admin(&["orgs", "get", "--org", "org_doesnotexist"]));
    assert!(o.stderr.contains("trace_id: req_"), "{}", o.stderr);
}

/// A webhook receiver for the CLI's tests: answers every request 200 and
/// keeps it.
struct Hooked {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Hooked {
    fn start() -> Hooked {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(vec![]));
        let log = seen.clone();
        std::thread::spawn(move || {
            while let Ok((mut conn, _)) = listener.accept() {
                let req = read_request(&mut conn);
                log.lock().unwrap().push(req);
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Hooked { port, seen }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Wait (up to 20 s) for `n` requests.
    fn wait(&self, n: usize) -> Vec<Seen> {
        let t = std::time::Instant::now();
        loop {
            let seen = self.seen.lock().unwrap().clone();
            if seen.len() >= n {
                return seen;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{} requests, not {n}",
                seen.len()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn webhooks_create_test_deliveries_redeliver_update_delete() {
    // The receiver is on loopback: the operator allows private targets.
    let kit = Kit::start_with_config(Some(
        "[ssrf]\nallow_private_targets = true\n[webhooks]\nretry_base = \"1s\"\n",
    ));
    let rx = Hooked::start();
    let table = ok(&mut kit.admin(&[
        "webhooks",
        "create",
        &rx.url(),
        "--event",
        "app.*,token.created",
        "--header",
        "X-Team=platform",
        "--max-retries",
        "3",
        "--backoff",
        "linear",
    ]));
    let id = field(&table, "ID");
    assert!(id.starts_with("whk_"), "{table}");
    let secret = field(&table, "SECRET");
    assert!(secret.starts_with("whsec_"), "{table}");
    assert_eq!(field(&table, "EVENTS"), "app.*,token.created");
    assert_eq!(field(&table, "RETRIES"), "3 (linear)");
    assert_eq!(field(&table, "STATUS"), "active");
    assert_eq!(field(&table, "HEADERS"), "X-Team");

    // The secret is never shown again.
    let list = ok(&mut kit.admin(&["webhooks", "list"]));
    assert!(list.lines().next().unwrap().starts_with("ID"), "{list}");
    assert!(list.contains(&id), "{list}");
    let got = json(&ok(&mut kit.admin(&["webhooks", "get", &id, "-o", "json"])));
    assert_eq!(got["id"], id.as_str());
    assert_eq!(got["headers"]["X-Team"], "[redacted]");
    for out in [&list, &got.to_string()] {
        assert!(!out.contains(&secret), "{out}");
    }

    // A secret of one's own, read from stdin (never a flag's value).
    let mut c = kit.admin(&[
        "webhooks",
        "create",
        &rx.url(),
        "-e",
        "deployment.*",
        "--secret-stdin",
        "-o",
        "json",
    ]);
    let o = run_with_stdin(&mut c, "whsec_from_stdin_0123456789\n");
    assert!(o.ok, "{}", o.stderr);
    let own = json(&o.stdout);
    assert_eq!(own["secret"], "whsec_from_stdin_0123456789");
    let own_id = own["id"].as_str().unwrap().to_string();
    assert_eq!(
        ok(&mut kit.admin(&["webhooks", "delete", &own_id, "--yes"])),
        format!("Deleted webhook {own_id}.\n")
    );

    // A test ping reaches the receiver, signed.
    let o = run(&mut kit.admin(&["webhooks", "test", &id]));
    assert!(o.ok, "{}", o.stderr);
    let delivery = field(&o.stdout, "ID");
    assert!(delivery.starts_with("whd_"), "{}", o.stdout);
    assert_eq!(field(&o.stdout, "STATUS"), "pending");
    let seen = rx.wait(1);
    assert_eq!(
        seen[0].header("x-shellwego-delivery"),
        Some(delivery.clone())
    );
    assert_eq!(seen[0].header("x-shellwego-event").as_deref(), Some("ping"));
    assert_eq!(seen[0].header("x-team").as_deref(), Some("platform"));
    assert!(seen[0]
        .header("x-shellwego-signature")
        .unwrap()
        .starts_with("sha256="));

    // Its deliveries: the list, and the one with its body.
    let t = std::time::Instant::now();
    let page = loop {
        let page = json(&ok(&mut kit.admin(&[
            "webhooks",
            "deliveries",
            &id,
            "-o",
            "json",
        ])));
        if page["data"][0]["status"] == "succeeded" {
            break page;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{page:#}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(page["data"][0]["id"], delivery.as_str());
    let rows = ok(&mut kit.admin(&["webhooks", "deliveries", &id]));
    assert!(rows.lines().next().unwrap().starts_with("ID"), "{rows}");
    assert!(
        rows.contains(&delivery) && rows.contains("succeeded"),
        "{rows}"
    );
    let one = json(&ok(&mut kit.admin(&[
        "webhooks",
        "deliveries",
        &id,
        &delivery,
        "-o",
        "json",
    ])));
    assert_eq!(one["payload"]["type"], "ping");
    assert_eq!(one["payload"]["data"]["webhook_id"], id.as_str());

    // Redeliver: the same delivery, once more.
    let o = run(&mut kit.admin(&["webhooks", "redeliver", &id, &delivery]));
    assert!(o.ok, "{}", o.stderr);
    assert_eq!(field(&o.stdout, "ID"), delivery);
    let seen = rx.wait(2);
    assert_eq!(
        seen[1].header("x-shellwego-delivery"),
        Some(delivery.clone())
    );
    assert_eq!(seen[0].body, seen[1].body);

    // Disabled: a ping is refused (409, with the trace id); enabled again.
    let table = ok(&mut kit.admin(&["webhooks", "update", &id, "--disable"]));
    assert_eq!(field(&table, "STATUS"), "disabled");
    let o = fails(&mut kit.admin(&["webhooks", "test", &id]));
    assert!(o.stderr.contains("trace_id: req_"), "{}", o.stderr);
    assert!(o.stderr.contains("disabled"), "{}", o.stderr);
    let table = ok(&mut kit.admin(&["webhooks", "update", &id, "--enable", "-e", "deployment.*"]));
    assert_eq!(field(&table, "STATUS"), "active");
    assert_eq!(field(&table, "EVENTS"), "deployment.*");

    // Mistakes name the field.
    let o = fails(&mut kit.admin(&["webhooks", "create", &rx.url(), "-e", "nope.*"]));
    assert!(o.stderr.contains("events[0]"), "{}", o.stderr);
    let o = fails(&mut kit.admin(&[
        "webhooks",
        "create",
        &rx.url(),
        "-e",
        "*",
        "--header",
        "Host=x",
    ]));
    assert!(o.stderr.contains("headers.Host"), "{}", o.stderr);

    // Deleting asks first; without a terminal it needs --yes.
    let o = fails(&mut kit.admin(&["webhooks", "delete", &id]));
    assert!(o.stderr.contains("--yes"), "{}", o.stderr);
    assert_eq!(
        ok(&mut kit.admin(&["webhooks", "delete", &id, "--yes", "-o", "json"])),
        ""
    );
    let o = fails(&mut kit.admin(&["webhooks", "get", &id]));
    assert!(o.stderr.contains("trace_id: req_"), "{}", o.stderr);
}
