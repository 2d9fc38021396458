//! One harness for `shellwego` child processes: [`Platform`] is a control
//! plane (`shellwego up` or `shellwego server`) on free loopback ports with
//! its data dir, log file and admin token, waited for until ready;
//! [`Proc`] is any child (an agent, a router, nginx) with its log file.
//! Both stop with SIGTERM ([`Proc::terminate`]) or SIGKILL ([`Proc::kill`]),
//! are killed when dropped, and print the end of their log when the test
//! fails. Also here: [`free_port`], [`wait_for_file`], and `/proc`
//! readings of the instances a platform runs.

use std::ffi::{OsStr, OsString};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::api::{Api, Method};

/// A loopback port that was free a moment ago (the usual race is
/// acceptable in tests).
pub fn free_port() -> u16 {
    try_free_port().expect("no free loopback port")
}

/// [`free_port`], as an error rather than a panic.
pub fn try_free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Wait (up to 30 s) until `path` exists and is not empty; its content.
pub fn wait_for_file(path: &Path) -> String {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return s;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never appeared", path.display());
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `n` lines of the file at `path`.
pub fn tail_of(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => tail(&text, n),
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Variables of the test's own environment that would configure a child
/// `shellwego` (its config file, store, data dir, listener, identity):
/// removed, so that a child is configured by what the test says only.
/// Host settings (`SHELLWEGO_MICROVM_*`) are passed on.
const CONFIGURING: &[&str] = &[
    "SHELLWEGO_ADMIN_PASSWORD",
    "SHELLWEGO_AGENT_DATA_DIR",
    "SHELLWEGO_API_URL",
    "SHELLWEGO_CONFIG",
    "SHELLWEGO_CONTROL_PLANE",
    "SHELLWEGO_DATABASE_URL",
    "SHELLWEGO_DATA_DIR",
    "SHELLWEGO_JOIN_TOKEN",
    "SHELLWEGO_LISTEN",
    "SHELLWEGO_LOG",
    "SHELLWEGO_LOG_FORMAT",
    "SHELLWEGO_MASTER_KEY",
    "SHELLWEGO_NODE_TIMEOUT",
    "SHELLWEGO_OWNER_TAG",
    "SHELLWEGO_REGION",
    "SHELLWEGO_SHUTDOWN_TIMEOUT",
    "SHELLWEGO_TOKEN",
];

/// The log filter of children: `SHELLWEGO_LOG` as given to [`Proc`] users,
/// else `info,sqlx=warn` (the binary's own default).
pub const LOG_FILTER: &str = "info,sqlx=warn";

/// `bin args…` with the configuring variables of the test's environment
/// removed, `SHELLWEGO_LOG` set to [`LOG_FILTER`], no colours, and an empty
/// stdin. Tests set what they need on top.
pub fn shellwego_command(bin: &Path, args: &[impl AsRef<OsStr>]) -> Command {
    configured(Command::new(bin), args)
}

/// [`shellwego_command`] run in network namespace `netns` (a host of a
/// [`crate::netns::Lan`]; see [`crate::netns::command_in`]).
pub fn shellwego_command_in(netns: &str, bin: &Path, args: &[impl AsRef<OsStr>]) -> Command {
    configured(crate::netns::command_in(netns, bin), args)
}

/// `c` (the program to run) with `args` and the environment of
/// [`shellwego_command`].
fn configured(mut c: Command, args: &[impl AsRef<OsStr>]) -> Command {
    c.args(args);
    for k in CONFIGURING {
        c.env_remove(k);
    }
    c.env("SHELLWEGO_LOG", LOG_FILTER)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    c
}

/// `shellwego <subcommand>`, naming a [`Proc`].
fn shellwego_name(args: &[impl AsRef<OsStr>]) -> String {
    format!(
        "shellwego {}",
        args.first()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .unwrap_or_default()
    )
}

/// A child process, its stdout and stderr appended to a log file. Killed
/// (SIGKILL) when dropped; the end of its log is printed then when the
/// thread is panicking (a failing test).
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Start `cmd`, its output appended to `log`; `name` names it in messages.
    pub fn spawn(name: impl Into<String>, cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
        let name = name.into();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let child = cmd
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start `{name}`"))?;
        Ok(Proc {
            name,
            child,
            log: log.to_path_buf(),
        })
    }

    /// `shellwego args…` (see [`shellwego_command`]), logging to `log`.
    pub fn shellwego(bin: &Path, args: &[impl AsRef<OsStr>], log: &Path) -> anyhow::Result<Proc> {
        Proc::spawn(shellwego_name(args), &mut shellwego_command(bin, args), log)
    }

    /// [`Proc::shellwego`] in network namespace `netns` (a host of a
    /// [`crate::netns::Lan`]): its pid is the program's, so signals reach it.
    pub fn shellwego_in(
        netns: &str,
        bin: &Path,
        args: &[impl AsRef<OsStr>],
        log: &Path,
    ) -> anyhow::Result<Proc> {
        Proc::spawn(
            format!("{} (in {netns})", shellwego_name(args)),
            &mut shellwego_command_in(netns, bin, args),
            log,
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail_of(&self.log, lines)
    }

    /// Its exit status, once it has exited (reaped then).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// An error, with the end of its log, when it has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(st) = self.try_wait() {
            bail!(
                "`{}` exited ({st}); the end of its log:\n{}",
                self.name,
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// Send `sig`, unless it has exited already.
    pub fn signal(&mut self, sig: nix::sys::signal::Signal) {
        if self.try_wait().is_some() {
            return;
        }
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        }
    }

    /// Wait until it exits.
    pub fn wait(&mut self) -> ExitStatus {
        self.child
            .wait()
            .unwrap_or_else(|e| panic!("waiting for `{}`: {e}", self.name))
    }

    /// SIGTERM, then SIGKILL when it has not exited within `grace`; its
    /// exit status.
    pub fn terminate(&mut self, grace: Duration) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        while t.elapsed() < grace {
            if let Some(st) = self.try_wait() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "`{}` (pid {}) ignored SIGTERM for {grace:?}; killing it",
            self.name,
            self.id()
        );
        self.kill()
    }

    /// [`Proc::terminate`] for async callers (it sleeps on the runtime).
    pub async fn terminate_async(&mut self, grace: Duration) -> ExitStatus {
        self.signal(nix::sys::signal::Signal::SIGTERM);
        let t = Instant::now();
        while t.elapsed() < grace {
            if let Some(st) = self.try_wait() {
                return st;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.kill()
    }

    /// SIGKILL and reap; its exit status.
    pub fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.wait()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- the last lines of `{}`'s log ({}) -----\n{}",
                self.name,
                self.log.display(),
                self.log_tail(100)
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a started control plane must have done before [`Platform`]'s
/// start returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// Written its admin token (it accepts connections by then).
    Token,
    /// That, and `/readyz` answers 200.
    Api,
    /// That, and a node is ready (`up`'s local agent has probed its
    /// drivers and joined).
    Node,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Up,
    Server,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Role::Up => "up",
            Role::Server => "server",
        }
    }
}

/// How to start a [`Platform`]; from [`Platform::up`] or [`Platform::server`].
#[derive(Debug, Clone)]
pub struct PlatformBuilder {
    bin: PathBuf,
    role: Role,
    dir: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    data_dir_flag: bool,
    cwd: Option<PathBuf>,
    ports: Option<(u16, u16)>,
    listen_ip: IpAddr,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    log_name: Option<String>,
    ready: Ready,
    timeout: Duration,
    poll: Duration,
    clean_up_apps: bool,
}

impl PlatformBuilder {
    /// The directory for its files (log, data dir, a home for the CLI).
    /// Default: a temp dir the platform owns, kept (and named) when the
    /// test fails.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Its data dir [default: `<dir>/data`].
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Pass `--data-dir` [default: yes]. Without it, the process uses its
    /// default (`.shellwego` in its working directory, or what a config
    /// file says): say where with [`PlatformBuilder::data_dir`].
    pub fn data_dir_flag(mut self, pass: bool) -> Self {
        self.data_dir_flag = pass;
        self
    }

    /// Its working directory [default: the test's].
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }

    /// The API's and the ingress's ports [default: free ones]; the same
    /// ports again to restart on them.
    pub fn ports(mut self, api: u16, ingress: u16) -> Self {
        self.ports = Some((api, ingress));
        self
    }

    /// The address its API (and `up`'s ingress) listens on, and where the
    /// platform's own requests and [`Platform::url`] go [default:
    /// 127.0.0.1], e.g. a [`crate::netns::Lan`]'s gateway, which agents in
    /// the LAN's hosts reach. The ports are chosen free on loopback.
    pub fn listen_ip(mut self, ip: impl Into<IpAddr>) -> Self {
        self.listen_ip = ip.into();
        self
    }

    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    pub fn args(mut self, args: &[impl AsRef<OsStr>]) -> Self {
        self.args.extend(args.iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// An environment variable of the process (over [`shellwego_command`]'s).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.env
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// Its log file in `dir` [default: `up.log` or `server.log`]; appended to.
    pub fn log_name(mut self, name: impl Into<String>) -> Self {
        self.log_name = Some(name.into());
        self
    }

    /// What start waits for [default: [`Ready::Api`]].
    pub fn ready(mut self, ready: Ready) -> Self {
        self.ready = ready;
        self
    }

    /// How long start may wait [default: 60 s].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How often start looks [default: 50 ms].
    pub fn poll(mut self, every: Duration) -> Self {
        self.poll = every;
        self
    }

    /// When dropped while running, delete every app and wait (up to 60 s)
    /// until their instances are gone before stopping: instances outlive
    /// `up` by design [default: yes for `up`, no for `server`].
    pub fn clean_up_apps(mut self, yes: bool) -> Self {
        self.clean_up_apps = yes;
        self
    }

    /// Start and wait until ready; panics with the end of its log.
    pub fn start(self) -> Platform {
        let mut p = self.prepare().unwrap_or_else(|e| panic!("{e:#}"));
        if let Err(e) = p.spawn_and_wait_blocking() {
            panic!("{e:#}");
        }
        p
    }

    /// [`PlatformBuilder::start`], as an error rather than a panic.
    pub fn try_start(self) -> anyhow::Result<Platform> {
        let mut p = self.prepare()?;
        p.spawn_and_wait_blocking()?;
        Ok(p)
    }

    /// [`PlatformBuilder::try_start`] for async callers (waits on the runtime).
    pub async fn start_async(self) -> anyhow::Result<Platform> {
        let mut p = self.prepare()?;
        p.spawn()?;
        let t = Instant::now();
        while !p.ready_now(t)? {
            tokio::time::sleep(p.spec.poll).await;
        }
        Ok(p)
    }

    fn prepare(self) -> anyhow::Result<Platform> {
        let (tmp, dir) = match &self.dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::tempdir()?;
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        std::fs::create_dir_all(&dir)?;
        let data_dir = self.data_dir.clone().unwrap_or_else(|| dir.join("data"));
        let (api_port, ingress_port) = match self.ports {
            Some(p) => p,
            None => (try_free_port()?, try_free_port()?),
        };
        let https_port = try_free_port()?;
        let log = dir.join(
            self.log_name
                .clone()
                .unwrap_or_else(|| format!("{}.log", self.role.as_str())),
        );
        Ok(Platform {
            spec: self,
            tmp,
            dir,
            data_dir,
            api_port,
            ingress_port,
            https_port,
            log,
            token: String::new(),
            proc: None,
        })
    }
}

/// A started control plane (`shellwego up` or `shellwego server`).
pub struct Platform {
    spec: PlatformBuilder,
    tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    data_dir: PathBuf,
    api_port: u16,
    ingress_port: u16,
    https_port: u16,
    log: PathBuf,
    token: String,
    proc: Option<Proc>,
}

impl Platform {
    /// `bin up` (control plane, local agent and ingress); `bin` is the
    /// `shellwego` binary (`env!("CARGO_BIN_EXE_shellwego")` in the CLI's
    /// tests, `std::env::current_exe()` in the benchmarks).
    pub fn up(bin: impl Into<PathBuf>) -> PlatformBuilder {
        Platform::builder(bin.into(), Role::Up)
    }

    /// `bin server` (the control plane alone).
    pub fn server(bin: impl Into<PathBuf>) -> PlatformBuilder {
        Platform::builder(bin.into(), Role::Server)
    }

    fn builder(bin: PathBuf, role: Role) -> PlatformBuilder {
        PlatformBuilder {
            bin,
            role,
            dir: None,
            data_dir: None,
            data_dir_flag: true,
            cwd: None,
            ports: None,
            listen_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            args: vec![],
            env: vec![],
            log_name: None,
            ready: Ready::Api,
            timeout: Duration::from_secs(60),
            poll: Duration::from_millis(50),
            clean_up_apps: role == Role::Up,
        }
    }

    fn command(&self) -> Command {
        let s = &self.spec;
        let mut args: Vec<OsString> = vec![
            s.role.as_str().into(),
            "--listen".into(),
            self.api_addr().to_string().into(),
        ];
        if s.role == Role::Up {
            args.push("--ingress-listen".into());
            args.push(
                SocketAddr::new(s.listen_ip, self.ingress_port)
                    .to_string()
                    .into(),
            );
            args.push("--ingress-https-listen".into());
            args.push(
                SocketAddr::new(s.listen_ip, self.https_port)
                    .to_string()
                    .into(),
            );
        }
        if s.data_dir_flag {
            args.push("--data-dir".into());
            args.push(self.data_dir.clone().into());
        }
        args.extend(s.args.iter().cloned());
        let mut c = shellwego_command(&s.bin, &args);
        c.envs(s.env.iter().map(|(k, v)| (k, v)));
        if let Some(d) = &s.cwd {
            c.current_dir(d);
        }
        c
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let name = format!("shellwego {}", self.spec.role.as_str());
        self.proc = Some(Proc::spawn(name, &mut self.command(), &self.log)?);
        Ok(())
    }

    fn spawn_and_wait_blocking(&mut self) -> anyhow::Result<()> {
        self.spawn()?;
        let t = Instant::now();
        while !self.ready_now(t)? {
            std::thread::sleep(self.spec.poll);
        }
        Ok(())
    }

    /// Ready as asked? An error when the process exited or the time is up.
    fn ready_now(&mut self, since: Instant) -> anyhow::Result<bool> {
        let name = format!("shellwego {}", self.spec.role.as_str());
        if let Some(p) = self.proc.as_mut() {
            p.check_alive()?;
        }
        let ready = self.token_now()
            && (self.spec.ready == Ready::Token
                || (self.readyz() && (self.spec.ready == Ready::Api || self.node_ready())));
        if !ready && since.elapsed() > self.spec.timeout {
            bail!(
                "`{name}` was not ready ({:?}) within {:?}; the end of its log ({}):\n{}",
                self.spec.ready,
                self.spec.timeout,
                self.log.display(),
                self.log_tail(40)
            );
        }
        Ok(ready)
    }

    fn token_now(&mut self) -> bool {
        match std::fs::read_to_string(self.data_dir.join("admin-token")) {
            Ok(t) if !t.trim().is_empty() => {
                self.token = t.trim().to_string();
                true
            }
            _ => false,
        }
    }

    fn readyz(&self) -> bool {
        self.request("GET", "/readyz", None, None, Duration::from_secs(5))
            .is_ok_and(|r| r.status == 200)
    }

    fn node_ready(&self) -> bool {
        self.get_ok("/v1/nodes").is_some_and(|n| {
            n["data"]
                .as_array()
                .is_some_and(|d| d.iter().any(|n| n["status"] == "ready"))
        })
    }

    /// Start it again, with the same arguments, ports and data (stopped
    /// first with SIGKILL if it still runs), its output appended to the
    /// same log; waits until ready.
    pub fn restart(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
        if let Err(e) = self.spawn_and_wait_blocking() {
            panic!("restart: {e:#}");
        }
    }

    /// The directory of its files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The data dir of `up`'s local agent.
    pub fn agent_dir(&self) -> PathBuf {
        self.data_dir.join("agent")
    }

    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    pub fn ingress_port(&self) -> u16 {
        self.ingress_port
    }

    /// The ingress's HTTPS port (`up` only).
    pub fn https_port(&self) -> u16 {
        self.https_port
    }

    /// Where its API listens (`127.0.0.1:<api port>` unless
    /// [`PlatformBuilder::listen_ip`] said otherwise).
    pub fn api_addr(&self) -> SocketAddr {
        SocketAddr::new(self.spec.listen_ip, self.api_port)
    }

    /// `http://<api addr>` (`http://127.0.0.1:<api port>` by default).
    pub fn url(&self) -> String {
        format!("http://{}", self.api_addr())
    }

    /// The bootstrap admin's token.
    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its whole log so far (all its runs).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail_of(&self.log, lines)
    }

    /// The running process; `None` once stopped.
    pub fn proc(&mut self) -> Option<&mut Proc> {
        self.proc.as_mut()
    }

    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::id)
    }

    /// An error, with the end of its log, when it is not running.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.proc.as_mut() {
            Some(p) => p.check_alive(),
            None => bail!("`shellwego {}` was stopped", self.spec.role.as_str()),
        }
    }

    /// SIGKILL (instances are left running, as on a crash).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill();
        }
    }

    /// SIGTERM, SIGKILL after `grace`; its exit status (none when it was
    /// not running).
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.proc.take().map(|mut p| p.terminate(grace))
    }

    /// [`Platform::terminate`] for async callers.
    pub async fn terminate_async(&mut self, grace: Duration) -> Option<ExitStatus> {
        match self.proc.take() {
            Some(mut p) => Some(p.terminate_async(grace).await),
            None => None,
        }
    }

    /// Send `sig` and wait until it exits; its exit status.
    pub fn signal(&mut self, sig: nix::sys::signal::Signal) -> ExitStatus {
        let mut p = self.proc.take().expect("the platform is not running");
        p.signal(sig);
        p.wait()
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        content_type: Option<&str>,
        timeout: Duration,
    ) -> std::io::Result<crate::http::Response> {
        let mut req = crate::http::Request::new(method, path)
            .bearer(&self.token)
            .timeout(timeout);
        if let Some(b) = body {
            req = req.body(content_type.unwrap_or("application/json"), b);
        }
        crate::http::send(self.api_addr(), &req)
    }

    /// `(status, JSON body)` as the admin; an error when the request fails.
    pub fn try_call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Value)> {
        let bytes = body.map(|b| b.to_string().into_bytes());
        let r = self.request(
            method.as_str(),
            path,
            bytes.as_deref(),
            None,
            crate::http::TIMEOUT,
        )?;
        Ok((r.status, r.json()))
    }

    /// `(status, JSON body)` as the admin; panics when the request fails.
    pub fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.try_call(method.clone(), path, body.as_ref())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}\n{}", self.log_tail(40)))
    }

    /// GET's body, whatever the status.
    pub fn get(&self, path: &str) -> Value {
        self.call(Method::GET, path, None).1
    }

    /// GET's body when it answers 2xx; `None` otherwise, or when the
    /// request fails (for polling).
    pub fn get_ok(&self, path: &str) -> Option<Value> {
        match self.try_call(Method::GET, path, None) {
            Ok((st, v)) if (200..300).contains(&st) => Some(v),
            _ => None,
        }
    }

    /// `POST /v1/uploads` of `archive`: the upload id.
    pub fn upload(&self, archive: &[u8]) -> String {
        let r = self
            .request(
                "POST",
                "/v1/uploads",
                Some(archive),
                Some("application/octet-stream"),
                crate::http::TIMEOUT,
            )
            .unwrap_or_else(|e| panic!("POST /v1/uploads: {e}"));
        let v = r.json();
        assert_eq!(r.status, 201, "upload: {v}");
        v["upload_id"].as_str().unwrap().to_string()
    }

    /// GET `/` through the ingress as `<app>.localhost`: status and body.
    pub fn through_ingress(&self, app: &str) -> (u16, String) {
        through_at(SocketAddr::new(self.spec.listen_ip, self.ingress_port), app)
            .unwrap_or_else(|e| panic!("GET / as {app}.localhost through the ingress: {e}"))
    }

    /// `shellwego router` on `port`, fed from this platform's store (its
    /// data dir), with the platform's environment, logging to `router.log`
    /// in its directory.
    pub fn router(&self, port: u16) -> Proc {
        let args: Vec<OsString> = vec![
            "router".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}").into(),
            "--data-dir".into(),
            self.data_dir.clone().into(),
        ];
        let mut cmd = shellwego_command(&self.spec.bin, &args);
        cmd.envs(self.spec.env.iter().map(|(k, v)| (k, v)));
        Proc::spawn("shellwego router", &mut cmd, &self.dir.join("router.log"))
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Wait until app `id` satisfies `ok` (polled every 200 ms, up to
    /// `secs`); the app.
    pub fn wait_app(&self, id: &str, what: &str, secs: u64, ok: impl Fn(&Value) -> bool) -> Value {
        let t = Instant::now();
        loop {
            let a = self.get(&format!("/v1/apps/{id}"));
            if ok(&a) {
                return a;
            }
            assert!(
                t.elapsed() < Duration::from_secs(secs),
                "{what}: {a:#}\n{}",
                self.log_tail(60)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The async API client as the admin.
    pub fn api(&self) -> Api {
        Api::new(self.url(), self.token.clone())
    }

    /// A home for the CLI in the platform's directory.
    pub fn cli_home(&self) -> CliHome {
        CliHome::at(&self.dir)
    }

    /// The CLI as the bootstrap admin (through SHELLWEGO_API_URL and
    /// SHELLWEGO_TOKEN), with a home of its own and an empty stdin.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut c = self.cli_home().command(&self.spec.bin, args);
        c.env("SHELLWEGO_API_URL", self.url())
            .env("SHELLWEGO_TOKEN", &self.token);
        c
    }

    /// Register a node named `name` and start `shellwego agent` for it
    /// with `data_dir`, `extra` arguments, the platform's environment and
    /// its log in `log`: the node's id and the agent process.
    pub fn join_agent(
        &self,
        name: &str,
        data_dir: &Path,
        extra: &[&str],
        log: &Path,
    ) -> anyhow::Result<(String, Proc)> {
        let (st, reg) = self.try_call(
            Method::POST,
            "/v1/nodes",
            Some(&serde_json::json!({"hostname": name})),
        )?;
        if st != 201 {
            bail!("register node {name}: {st} {reg}");
        }
        let node = reg["id"].as_str().context("no node id")?.to_string();
        let token = reg["join_token"].as_str().context("no join token")?;
        let mut args: Vec<OsString> = vec![
            "agent".into(),
            "--control-plane".into(),
            self.url().into(),
            "--join-token".into(),
            token.into(),
            "--data-dir".into(),
            data_dir.into(),
            "--name".into(),
            name.into(),
        ];
        args.extend(extra.iter().map(OsString::from));
        let mut cmd = shellwego_command(&self.spec.bin, &args);
        cmd.envs(self.spec.env.iter().map(|(k, v)| (k, v)));
        Ok((
            node,
            Proc::spawn(format!("shellwego agent {name}"), &mut cmd, log)?,
        ))
    }

    /// Delete every app and wait (up to `limit`) until their instances are
    /// gone: no instance left in the local agent's data dir, no process
    /// working in the data dir.
    pub fn delete_apps_and_wait(&self, limit: Duration) {
        let ids: Vec<String> = self
            .get_ok("/v1/apps?limit=100")
            .and_then(|l| {
                l["data"].as_array().map(|d| {
                    d.iter()
                        .filter_map(|a| a["id"].as_str().map(str::to_string))
                        .collect()
                })
            })
            .unwrap_or_default();
        for id in &ids {
            let _ = self.try_call(Method::DELETE, &format!("/v1/apps/{id}"), None);
        }
        let instances = self.agent_dir().join("instances");
        let left = || {
            std::fs::read_dir(&instances).is_ok_and(|mut d| d.next().is_some())
                || !processes_in(&self.data_dir).is_empty()
        };
        let t = Instant::now();
        while left() && t.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Platform {
    /// Instances outlive `up`: when it still runs, its apps are deleted
    /// and their instances waited for first; then SIGTERM (SIGKILL after a
    /// minute). When the test failed, the end of the log is printed and a
    /// temp dir of the platform's own is kept.
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if let Some(p) = self.proc.as_mut() {
            if p.try_wait().is_none() && self.spec.clean_up_apps {
                self.delete_apps_and_wait(Duration::from_secs(60));
            }
        }
        if let Some(mut p) = self.proc.take() {
            p.terminate(Duration::from_secs(60));
            // Its own Drop prints its log when panicking.
        } else if panicking {
            eprintln!(
                "----- the last lines of {} -----\n{}",
                self.log.display(),
                self.log_tail(100)
            );
        }
        if panicking {
            if let Some(t) = self.tmp.as_mut() {
                t.disable_cleanup(true);
                eprintln!(
                    "----- the platform's files are kept in {} -----",
                    self.dir.display()
                );
            }
        }
    }
}

/// A temp HOME and XDG_CONFIG_HOME for the CLI (its credentials file goes
/// there), and none of the test's own SHELLWEGO_TOKEN or SHELLWEGO_API_URL.
pub struct CliHome {
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl CliHome {
    /// In a temp dir of its own.
    pub fn new() -> CliHome {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let mut h = CliHome::at(tmp.path());
        h._tmp = Some(tmp);
        h
    }

    /// In `dir` (`dir/home` and `dir/xdg`).
    pub fn at(dir: &Path) -> CliHome {
        let _ = std::fs::create_dir_all(dir.join("home"));
        CliHome {
            dir: dir.to_path_buf(),
            _tmp: None,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    pub fn xdg(&self) -> PathBuf {
        self.dir.join("xdg")
    }

    /// `bin args…` with this home and an empty stdin.
    pub fn command(&self, bin: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(bin);
        c.args(args)
            .env("HOME", self.home())
            .env("XDG_CONFIG_HOME", self.xdg())
            .env_remove("SHELLWEGO_TOKEN")
            .env_remove("SHELLWEGO_API_URL")
            .stdin(Stdio::null());
        c
    }
}

impl Default for CliHome {
    fn default() -> Self {
        CliHome::new()
    }
}

/// GET `/` from a router or ingress on `port` as `<app>.localhost`:
/// status and body.
pub fn through(port: u16, app: &str) -> std::io::Result<(u16, String)> {
    through_at(SocketAddr::from(([127, 0, 0, 1], port)), app)
}

/// [`through`] a router or ingress at `addr`.
pub fn through_at(addr: SocketAddr, app: &str) -> std::io::Result<(u16, String)> {
    let host = format!("{app}.localhost");
    let r = crate::http::send(addr, &crate::http::Request::new("GET", "/").host(&host))?;
    Ok((r.status, r.text()))
}

/// Every pid in `/proc`.
pub fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// Processes working in `dir` or under it (instances run in their agent's
/// data dir).
pub fn processes_in(dir: &Path) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .collect()
}

/// Processes whose environment holds one of `vars` (`KEY=value`).
pub fn processes_with_env(vars: &[String]) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|kv| vars.iter().any(|v| kv == v.as_bytes()))
            })
        })
        .collect()
}

/// Processes whose environment says they are an instance of `app_id`.
pub fn processes_of(app_id: &str) -> Vec<u32> {
    processes_with_env(&[format!("SHELLWEGO_APP_ID={app_id}")])
}

/// Is `pid` running (a zombie is not)?
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rfind(')').is_some_and(|i| !s[i + 2..].starts_with('Z')))
}

/// The pid an agent with data dir `agent_dir` recorded for instance
/// `inst` (`instances/<inst>/state.json`).
pub fn instance_pid(agent_dir: &Path, inst: &str) -> Option<u32> {
    let s =
        std::fs::read_to_string(agent_dir.join("instances").join(inst).join("state.json")).ok()?;
    let v: Value = serde_json::from_str(&s).ok()?;
    v["running"]["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
}

/// What a finished command did.
#[derive(Debug, Clone)]
pub struct Out {
    pub ok: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<std::process::Output> for Out {
    fn from(o: std::process::Output) -> Out {
        Out {
            ok: o.status.success(),
            code: o.status.code(),
            stdout: String::from_utf8(o.stdout).expect("stdout is UTF-8"),
            stderr: String::from_utf8(o.stderr).expect("stderr is UTF-8"),
        }
    }
}

/// Run `c` to its end, capturing its output.
pub fn run(c: &mut Command) -> Out {
    c.output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"))
        .into()
}

/// Run `c` with `input` piped to its stdin.
pub fn run_with_stdin(c: &mut Command, input: &str) -> Out {
    use std::io::Write;
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    child
        .stdin
        .take()
        .expect("a piped stdin")
        .write_all(input.as_bytes())
        .expect("writing stdin");
    child
        .wait_with_output()
        .expect("waiting for the command")
        .into()
}
