//! The agent's end of the guest daemon: commands for `exec` and exec
//! sessions run **inside** a microVM guest.
//!
//! `init/guestd.c`, a static C program built with the agent (like the
//! container init), is put in every guest as `/.shellwego/sw-guestd`; the
//! guest's init starts it on the third serial port (ttyS2), with the
//! instance's environment and working directory, before the app. QEMU joins
//! that port to the FIFO pair `<vm>/exec.in|out` (`-chardev pipe`). The
//! messages (lines, bytes in base64) are described in guestd.c.
//!
//! One [`Mux`] per running VM (per agent process) holds both FIFOs and
//! carries the messages of all the VM's commands. A new one first sends `z`
//! (what an earlier agent process started there is killed), then pings
//! until the guest answers (up to [`READY`]: a VM still booting is waited
//! for). When QEMU exits, its reader sees the end of the FIFO: every
//! command of the VM ends with an error and the mux is forgotten.
//!
//! Output is passed on with backpressure: a command whose output is not
//! read holds up the VM's other commands (the guest daemon then waits on
//! its serial port); nothing is dropped and nothing piles up in the agent.
//! The guest is not trusted: a line over [`MAX_LINE`] is dropped whole,
//! messages for unknown commands are ignored, and what a guest can send is
//! at most the output of its own commands.
//!
//! A command run this way ends like a host one: at its own exit (what is
//! left of its process group is killed in the guest), or when killed (the
//! `k` message signals its whole process group); an exit by a signal is
//! reported as 128 + the signal, as shells do.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, oneshot, OnceCell};

/// The guest daemon (empty when the agent was built without a static C
/// library).
pub const GUESTD: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/sw-guestd"));

/// How long a new mux waits for the guest daemon to answer.
pub const READY: Duration = Duration::from_secs(30);
/// The longest line taken from a guest.
pub const MAX_LINE: usize = 256 * 1024;
/// The longest command line sent to a guest (its base64 must fit in the
/// guest daemon's line).
const MAX_ARGV: usize = 128 * 1024;
/// Input bytes per message.
const IN_CHUNK: usize = 2048;
/// Output pieces buffered per stream before the guest is held up.
const OUT_QUEUE: usize = 256;

/// Where a VM's guest daemon is reached ([`crate::driver::ExecVia::Guest`]).
#[derive(Clone, Debug)]
pub struct Channel {
    /// The VM's directory (`exec.in`, `exec.out`).
    pub vm_dir: PathBuf,
    /// Names this run of the VM (its directory and QEMU's pid).
    pub key: String,
    /// QEMU's pid.
    pub pid: u32,
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists() && !crate::driver::is_zombie(pid)
}

type Exit = Result<i32, String>;

struct Entry {
    out: mpsc::Sender<Vec<u8>>,
    err: mpsc::Sender<Vec<u8>>,
    exit: oneshot::Sender<Exit>,
}

/// The messages of one VM's commands (see the module documentation).
pub struct Mux {
    lines: mpsc::UnboundedSender<String>,
    sessions: Mutex<HashMap<u64, Entry>>,
    pongs: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next: AtomicU64,
    dead: Mutex<Option<String>>,
}

type Muxes = Mutex<HashMap<String, Arc<OnceCell<Arc<Mux>>>>>;
static MUXES: LazyLock<Muxes> = LazyLock::new(Default::default);

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Forget `key`'s mux (when it is `mux`, or whatever is there when `None`).
fn unregister(key: &str, mux: Option<&Arc<Mux>>) {
    let mut m = lock(&MUXES);
    let same = match (m.get(key).and_then(|c| c.get()), mux) {
        (Some(there), Some(mux)) => Arc::ptr_eq(there, mux),
        (None, _) | (_, None) => true,
    };
    if same {
        m.remove(key);
    }
}

/// The VM's mux, made on first use.
async fn mux(ch: &Channel) -> anyhow::Result<Arc<Mux>> {
    let cell = lock(&MUXES).entry(ch.key.clone()).or_default().clone();
    match cell.get_or_try_init(|| connect(ch)).await {
        Ok(m) if lock(&m.dead).is_none() => Ok(m.clone()),
        Ok(m) => {
            let why = lock(&m.dead).clone().unwrap_or_default();
            unregister(&ch.key, Some(m));
            anyhow::bail!("{why}")
        }
        Err(e) => {
            unregister(&ch.key, None);
            Err(e)
        }
    }
}

async fn connect(ch: &Channel) -> anyhow::Result<Arc<Mux>> {
    use tokio::net::unix::pipe;
    let deadline = Instant::now() + READY;
    // QEMU opens the FIFOs as it starts: until then, opening the one it
    // reads fails (no reader).
    let mut tx = loop {
        match pipe::OpenOptions::new().open_sender(ch.vm_dir.join("exec.in")) {
            Ok(tx) => break tx,
            Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) && alive(ch.pid) => {
                if Instant::now() > deadline {
                    anyhow::bail!("the microVM did not open its command channel");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                anyhow::bail!(
                    "the microVM is not running (its command channel cannot be opened: {e})"
                )
            }
        }
    };
    let (lines, mut queued) = mpsc::unbounded_channel::<String>();
    let mux = Arc::new(Mux {
        lines,
        sessions: Mutex::default(),
        pongs: Mutex::default(),
        next: AtomicU64::new(1),
        dead: Mutex::default(),
    });
    tokio::spawn(async move {
        while let Some(l) = queued.recv().await {
            if tx.write_all(l.as_bytes()).await.is_err() {
                return;
            }
        }
    });
    let reader = {
        let (mux, key, ch) = (mux.clone(), ch.key.clone(), ch.clone());
        tokio::spawn(async move {
            mux.read(&ch).await;
            mux.fail("the microVM stopped while the command ran");
            unregister(&key, Some(&mux));
        })
    };
    mux.send("z".into());
    let deadline = Instant::now() + READY;
    loop {
        let token = mux.next.fetch_add(1, Ordering::Relaxed);
        let (t, r) = oneshot::channel();
        lock(&mux.pongs).insert(token, t);
        mux.send(format!("p {token}"));
        if let Ok(Ok(())) = tokio::time::timeout(Duration::from_millis(500), r).await {
            return Ok(mux);
        }
        lock(&mux.pongs).remove(&token);
        if reader.is_finished() {
            anyhow::bail!("the microVM stopped before it could run the command");
        }
        if Instant::now() > deadline {
            reader.abort();
            // Dropping the mux ends the writer.
            anyhow::bail!(
                "the microVM's guest daemon did not answer within {}s (see the instance's console log)",
                READY.as_secs()
            );
        }
    }
}

impl Mux {
    fn send(&self, line: String) {
        let _ = self.lines.send(line + "\n");
    }

    fn fail(&self, why: &str) {
        *lock(&self.dead) = Some(why.to_string());
        for (_, e) in lock(&self.sessions).drain() {
            let _ = e.exit.send(Err(why.to_string()));
        }
        lock(&self.pongs).clear();
    }

    /// Take the guest's lines until QEMU exits (the FIFO's end while its
    /// process is gone; an end while it lives means the FIFO was opened
    /// before QEMU had it: opened again).
    async fn read(&self, ch: &Channel) {
        let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
        let mut chunk = vec![0u8; 64 * 1024];
        let mut skipping = false;
        let mut rx: Option<tokio::net::unix::pipe::Receiver> = None;
        loop {
            let Some(r) = rx.as_mut() else {
                match tokio::net::unix::pipe::OpenOptions::new()
                    .open_receiver(ch.vm_dir.join("exec.out"))
                {
                    Ok(r) => rx = Some(r),
                    Err(_) => return,
                }
                continue;
            };
            let n = match r.read(&mut chunk).await {
                Ok(0) if alive(ch.pid) => {
                    rx = None;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=i).collect();
                if std::mem::take(&mut skipping) {
                    continue;
                }
                self.handle(&line[..line.len() - 1]).await;
            }
            if buf.len() > MAX_LINE {
                buf.clear();
                skipping = true;
            }
        }
    }

    async fn handle(&self, line: &[u8]) {
        let Ok(line) = std::str::from_utf8(line) else {
            return;
        };
        let mut f = line.trim_end_matches('\r').split(' ');
        let (Some(kind), Some(id)) = (f.next(), f.next().and_then(|i| i.parse::<u64>().ok()))
        else {
            return;
        };
        match kind {
            "P" => {
                if let Some(t) = lock(&self.pongs).remove(&id) {
                    let _ = t.send(());
                }
            }
            "o" | "2" => {
                let Some(data) = f.next().and_then(|d| b64().decode(d).ok()) else {
                    return;
                };
                let to = lock(&self.sessions)
                    .get(&id)
                    .map(|e| if kind == "o" { &e.out } else { &e.err }.clone());
                if let (Some(to), false) = (to, data.is_empty()) {
                    // Backpressure: the reader of this output holds the VM up.
                    let _ = to.send(data).await;
                }
            }
            "X" | "f" => {
                let exit = if kind == "X" {
                    f.next()
                        .and_then(|c| c.parse::<i32>().ok())
                        .ok_or_else(|| "the guest sent a malformed exit".to_string())
                } else {
                    let msg = f
                        .next()
                        .and_then(|d| b64().decode(d).ok())
                        .map(|m| String::from_utf8_lossy(&m).into_owned())
                        .unwrap_or_default();
                    Err(format!("cannot start the command in the microVM: {msg}"))
                };
                if let Some(e) = lock(&self.sessions).remove(&id) {
                    let _ = e.exit.send(exit);
                }
            }
            _ => {}
        }
    }
}

/// Kill or resize a command running in a guest (cheap to clone).
#[derive(Clone)]
pub struct Control {
    mux: Arc<Mux>,
    id: u64,
}

impl Control {
    /// `sig` to the command's process group in the guest.
    pub fn kill(&self, sig: i32) {
        self.mux.send(format!("k {} {sig}", self.id));
    }

    /// Its terminal's new size.
    pub fn resize(&self, cols: u16, rows: u16) {
        self.mux.send(format!("r {} {cols} {rows}", self.id));
    }
}

/// A command running in a guest; dropped before it ended, it is killed.
pub struct Session {
    pub control: Control,
    exit: Option<oneshot::Receiver<Exit>>,
}

impl Session {
    /// Its exit code (128 + n after signal n), or why it is unknown.
    pub async fn wait(&mut self) -> Exit {
        let Some(rx) = self.exit.as_mut() else {
            return Err("already waited for".into());
        };
        let r = rx
            .await
            .unwrap_or_else(|_| Err("the microVM's command channel closed".into()));
        self.exit = None;
        r
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if self.exit.is_some() {
            self.control.kill(9);
        }
    }
}

/// A command's standard input: each write is sent as it comes, the end
/// (shutdown or drop) as `e`.
pub struct Stdin {
    mux: Arc<Mux>,
    id: u64,
    closed: bool,
}

impl AsyncWrite for Stdin {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.closed {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        let n = buf.len().min(IN_CHUNK);
        if n > 0 {
            self.mux
                .send(format!("i {} {}", self.id, b64().encode(&buf[..n])));
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        if !std::mem::replace(&mut self.closed, true) {
            self.mux.send(format!("e {}", self.id));
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for Stdin {
    fn drop(&mut self) {
        if !self.closed {
            self.mux.send(format!("e {}", self.id));
        }
    }
}

/// One output stream of a command, as it comes from the guest.
pub struct Output {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl AsyncRead for Output {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pos >= this.buf.len() {
            match this.rx.poll_recv(cx) {
                Poll::Ready(Some(b)) => {
                    this.buf = b;
                    this.pos = 0;
                }
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = (this.buf.len() - this.pos).min(out.remaining());
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// A command started in a guest: its streams and the session.
pub struct Started {
    pub stdin: Stdin,
    pub stdout: Output,
    pub stderr: Output,
    pub session: Session,
}

/// Start `argv` in the guest behind `ch`, with a terminal of `tty`'s
/// (columns, rows) when given (its output then all comes as stdout).
pub async fn start(
    ch: &Channel,
    argv: &[String],
    tty: Option<(u16, u16)>,
) -> anyhow::Result<Started> {
    if argv.is_empty() {
        anyhow::bail!("no command to run");
    }
    let mut packed = Vec::new();
    for a in argv {
        if a.contains('\0') {
            anyhow::bail!("a command argument holds a NUL byte");
        }
        packed.extend_from_slice(a.as_bytes());
        packed.push(0);
    }
    if packed.len() > MAX_ARGV {
        anyhow::bail!(
            "the command line is {} bytes; at most {MAX_ARGV} can be sent into a microVM",
            packed.len()
        );
    }
    let mux = mux(ch).await?;
    let id = mux.next.fetch_add(1, Ordering::Relaxed);
    let (out, out_rx) = mpsc::channel(OUT_QUEUE);
    let (err, err_rx) = mpsc::channel(OUT_QUEUE);
    let (exit, exit_rx) = oneshot::channel();
    lock(&mux.sessions).insert(id, Entry { out, err, exit });
    let (t, cols, rows) = tty.map_or((0, 0, 0), |(c, r)| (1, c, r));
    mux.send(format!(
        "x {id} {t} {cols} {rows} {}",
        b64().encode(&packed)
    ));
    let output = |rx| Output {
        rx,
        buf: vec![],
        pos: 0,
    };
    Ok(Started {
        stdin: Stdin {
            mux: mux.clone(),
            id,
            closed: false,
        },
        stdout: output(out_rx),
        stderr: output(err_rx),
        session: Session {
            control: Control { mux, id },
            exit: Some(exit_rx),
        },
    })
}
