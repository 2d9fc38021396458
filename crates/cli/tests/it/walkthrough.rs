//! The README's walkthrough is a test: the commands of the ```sh block
//! under "### Deploy an app", run as written, in order, in one bash, against
//! a `shellwego up` whose node reports 2 cores (`--cpus 2`: four replicas at
//! the default 0.5 CPU fill it, so the restart and the canary replace in
//! place), with the runtime driver `up` picks on the machine (`container`
//! where runc works, else `process`; tarball apps never default to
//! `microvm`).
//!
//! How the block reads (the convention of the README's examples):
//! - a line not starting with `#` is a command (a trailing `\` continues
//!   it); a `# …` after it on the same line, and the indented `# …` lines
//!   that continue that, are explanations and are not checked;
//! - the `# …` lines that start at column 0 right after a command are what
//!   it prints (stdout and stderr together, in the order printed, as when
//!   not on a terminal): each must match a line of the output, in order,
//!   with other lines (progress) allowed in between. `…` stands for any
//!   text, and a line that is only `…` for lines left out. Runs of spaces
//!   count as one (tables align to their content); ends are trimmed;
//! - every command must exit 0 (the walkthrough shows no failing command).
//!
//! The only changes to the commands are mechanical, and listed here:
//! - the ingress address `127.0.0.1:8000` becomes the test's ingress port,
//!   and `/tmp/` a temp dir of the test's (in commands and expected
//!   output: [`substitutions`]);
//! - the API URL is the test's `up` through `SHELLWEGO_API_URL` (what the
//!   README's `http://127.0.0.1:3000` default stands for);
//! - bash runs in a temp dir where `.shellwego` is `up`'s data dir and
//!   `examples` a link to the repository's, with `shellwego` on `PATH` the
//!   binary under test, `HOME` a temp dir and no other environment (no
//!   proxy: every URL a command names must be the test's loopback ports).
//!
//! The test starts `up` and waits for its node to be ready (its agent probes
//! the drivers first) before the first command.
//!
//! Timings are the README's own: the canary's 30 s pause is kept. The
//! whole walkthrough takes about 1.5 minutes (each step may take 150 s
//! before the test gives up on it).

// Test code may panic: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use shellwego_testkit::free_port;
use shellwego_testkit::platform::{Platform, Ready};

use crate::support::{bin, BIN};
const README: &str = include_str!("../../../../README.md");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
/// The section whose first ```sh block is the walkthrough.
const SECTION: &str = "### Deploy an app";
/// How long one step may take.
const STEP_LIMIT: Duration = Duration::from_secs(150);

/// A command of the walkthrough and the output the README shows for it.
#[derive(Debug, PartialEq)]
struct Step {
    /// Line in README.md (1-based).
    line: usize,
    /// As written, with its trailing comment.
    command: String,
    /// The `# ` lines after it, without the `# `.
    expected: Vec<String>,
}

/// The steps of the first ```sh block after `section` in `readme`.
fn steps(readme: &str, section: &str) -> Vec<Step> {
    let lines: Vec<&str> = readme.lines().collect();
    let heading = lines
        .iter()
        .position(|l| l.trim_end() == section)
        .unwrap_or_else(|| panic!("README.md has no {section:?} heading"));
    let open = (heading + 1..lines.len())
        .find(|&i| lines[i].trim_end() == "```sh")
        .unwrap_or_else(|| panic!("no ```sh block under {section:?} in README.md"));
    let mut out: Vec<Step> = vec![];
    let mut continued = false;
    for (i, l) in lines.iter().enumerate().skip(open + 1) {
        if l.trim_end() == "```" {
            return out;
        }
        if continued {
            let s = out.last_mut().unwrap();
            s.command.push('\n');
            s.command.push_str(l);
            continued = l.ends_with('\\');
        } else if let Some(shown) = l.strip_prefix('#') {
            let s = out.last_mut().unwrap_or_else(|| {
                panic!("README.md:{}: an output line before any command", i + 1)
            });
            s.expected
                .push(shown.strip_prefix(' ').unwrap_or(shown).to_string());
        } else if l.trim().is_empty() || l.trim_start().starts_with('#') {
            // A blank line, or an explanation continued on its own line.
        } else {
            out.push(Step {
                line: i + 1,
                command: l.to_string(),
                expected: vec![],
            });
            continued = l.ends_with('\\');
        }
    }
    panic!("the ```sh block under {section:?} in README.md is not closed")
}

/// A command without its trailing comment: a `#` starting a word outside
/// quotes.
fn code_of(command: &str) -> &str {
    let (mut single, mut double, mut word_start) = (false, false, true);
    for (i, c) in command.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single => double = !double,
            '#' if !single && !double && word_start => return command[..i].trim_end(),
            _ => {}
        }
        word_start = c.is_whitespace();
    }
    command.trim_end()
}

/// Runs of whitespace as one space, ends trimmed.
fn normalize(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `line` matches `pattern`, where `…` stands for any text (both normalized).
fn matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split('…').collect();
    let [first, middle @ .., last] = parts.as_slice() else {
        return pattern == line;
    };
    if line.len() < first.len() + last.len() || !line.starts_with(first) || !line.ends_with(last) {
        return false;
    }
    let mut rest = &line[first.len()..line.len() - last.len()];
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    true
}

/// The first expected line (index) not found in `output`, in order.
fn first_missing(expected: &[String], output: &str) -> Option<usize> {
    let actual: Vec<String> = output.lines().map(normalize).collect();
    let mut at = 0;
    for (i, e) in expected.iter().enumerate() {
        let e = normalize(e);
        if e == "…" {
            continue;
        }
        match actual[at..].iter().position(|a| matches(&e, a)) {
            Some(j) => at += j + 1,
            None => return Some(i),
        }
    }
    None
}

/// The mechanical substitutions, README → this test, applied to every
/// command and expected line: the ingress address and `/tmp/`.
fn substitutions(ingress: u16, tmp: &Path) -> Vec<(&'static str, String)> {
    vec![
        ("127.0.0.1:8000", format!("127.0.0.1:{ingress}")),
        ("/tmp/", format!("{}/", tmp.display())),
    ]
}

fn substitute(text: &str, subs: &[(&'static str, String)]) -> String {
    subs.iter()
        .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
}

fn indent(text: &str) -> String {
    if text.is_empty() {
        return "    (nothing)".into();
    }
    text.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `shellwego up --cpus 2` in `work` (its data dir `work/.shellwego`, the
/// default), its node ready, its log in `dir/up.log`.
fn start_up(work: &Path, dir: &Path, api: u16, ingress: u16) -> Platform {
    let up = Platform::up(bin())
        .dir(dir)
        .cwd(work)
        .data_dir(work.join(".shellwego"))
        .data_dir_flag(false)
        .ports(api, ingress)
        .args(&["--cpus", "2"])
        // Without a line per request: the tail shown on a failure is
        // what happened.
        .env(
            "SHELLWEGO_LOG",
            "info,sqlx=warn,shellwego_server::http=warn",
        )
        // Ready, and its node joined (the agent probes the drivers first).
        .ready(Ready::Node)
        .try_start()
        .unwrap_or_else(|e| {
            panic!("`shellwego up --cpus 2` did not start with its node ready: {e:#}")
        });
    let nodes = up.get("/v1/nodes");
    let node = nodes["data"]
        .as_array()
        .and_then(|d| d.iter().find(|n| n["status"] == "ready"))
        .unwrap();
    assert_eq!(node["capacity"]["cpu_cores"], 2, "up --cpus 2: {node:#}");
    up
}

/// One bash for the whole walkthrough (so `export` carries over), in a
/// process group of its own; each step's output goes to a file.
struct Shell {
    child: Child,
    stdin: ChildStdin,
    done: mpsc::Receiver<String>,
    outputs: PathBuf,
    errors: PathBuf,
}

impl Shell {
    fn start(work: &Path, dir: &Path, env: &[(&str, String)]) -> Shell {
        let outputs = dir.join("steps");
        std::fs::create_dir_all(&outputs).unwrap();
        let errors = dir.join("bash.stderr");
        let mut child = Command::new("bash")
            .args(["--noprofile", "--norc"])
            .current_dir(work)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&errors).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Shell {
            child,
            stdin,
            done,
            outputs,
            errors,
        }
    }

    /// Run step `n`: its exit status and output, or `Err(output so far)`
    /// when it takes longer than `limit` or bash ends.
    fn run(&mut self, n: usize, command: &str, limit: Duration) -> Result<(i32, String), String> {
        let out = self.outputs.join(n.to_string());
        let marker = format!("__walkthrough_step_{n}_exit ");
        write!(
            self.stdin,
            "{{\n{command}\n}} >'{}' 2>&1 </dev/null; echo \"{marker}$?\"\n",
            out.display()
        )
        .unwrap();
        self.stdin.flush().unwrap();
        let t = Instant::now();
        let read = || std::fs::read_to_string(&out).unwrap_or_default();
        loop {
            let left = limit.saturating_sub(t.elapsed());
            match self.done.recv_timeout(left) {
                Ok(l) => {
                    if let Some(code) = l.strip_prefix(&marker) {
                        return Ok((code.trim().parse().unwrap_or(-1), read()));
                    }
                }
                Err(_) => {
                    let bash = std::fs::read_to_string(&self.errors).unwrap_or_default();
                    return Err(format!("{}\n(bash's stderr: {})", read(), bash.trim()));
                }
            }
        }
    }
}

impl Drop for Shell {
    /// The shell and whatever a step left running.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.wait();
    }
}

/// Every URL in `code` is the test's API or ingress on loopback.
fn loopback_only(code: &str, allowed: &[String]) -> Result<(), String> {
    let mut rest = code;
    while let Some(i) = rest.find("://") {
        let scheme_start = rest[..i]
            .rfind(|c: char| !c.is_ascii_alphanumeric())
            .map_or(0, |j| j + 1);
        let url = &rest[scheme_start..];
        if !allowed.iter().any(|a| url.starts_with(a.as_str())) {
            return Err(url.split_whitespace().next().unwrap_or(url).to_string());
        }
        rest = &rest[i + 3..];
    }
    Ok(())
}

#[test]
fn the_readme_walkthrough_runs_as_written_on_two_cores() {
    let steps = steps(README, SECTION);
    assert!(!steps.is_empty(), "no commands under {SECTION:?}");
    let dir = tempfile::tempdir().unwrap();
    let (work, tmp, home, bin) = (
        dir.path().join("work"),
        dir.path().join("tmp"),
        dir.path().join("home"),
        dir.path().join("bin"),
    );
    for d in [&work, &tmp, &home, &bin] {
        std::fs::create_dir_all(d).unwrap();
    }
    std::os::unix::fs::symlink(EXAMPLES, work.join("examples")).unwrap();
    std::os::unix::fs::symlink(BIN, bin.join("shellwego")).unwrap();
    let (api, ingress) = (free_port(), free_port());
    let subs = substitutions(ingress, &tmp);
    let api_url = format!("http://127.0.0.1:{api}");
    let allowed = [
        format!("{api_url}/"),
        format!("http://127.0.0.1:{ingress}/"),
    ];

    let t0 = Instant::now();
    let up = start_up(&work, dir.path(), api, ingress);
    println!("up --cpus 2: ready in {:.1}s", t0.elapsed().as_secs_f64());
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into())
    );
    let mut shell = Shell::start(
        &work,
        dir.path(),
        &[
            ("PATH", path),
            ("HOME", home.display().to_string()),
            ("LANG", "C.UTF-8".into()),
            ("SHELLWEGO_API_URL", api_url),
        ],
    );

    let total = steps.len();
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        let command = substitute(&step.command, &subs);
        let expected: Vec<String> = step.expected.iter().map(|e| substitute(e, &subs)).collect();
        let name = format!(
            "README walkthrough, step {n} of {total} (README.md:{}): `{}`",
            step.line,
            code_of(&step.command)
        );
        if let Err(url) = loopback_only(code_of(&command), &allowed) {
            panic!("{name}: names {url}, not the test's API or ingress on loopback: add a substitution");
        }
        let t = Instant::now();
        let (code, output) = match shell.run(n, &command, STEP_LIMIT) {
            Ok(r) => r,
            Err(partial) => panic!(
                "{name}\ndid not finish in {}s; its output so far:\n{}\n\nup's log (last lines):\n{}",
                STEP_LIMIT.as_secs(),
                indent(&partial),
                up.log_tail(40)
            ),
        };
        println!(
            "step {n} ({:.1}s, exit {code}): {}",
            t.elapsed().as_secs_f64(),
            code_of(&step.command)
        );
        let shown = || {
            expected
                .iter()
                .map(|e| format!("    {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        if code != 0 {
            panic!(
                "{name}\nexited {code} (the README shows it succeeding); its output:\n{}\n\
                 the README shows:\n{}\n\nup's log (last lines):\n{}",
                indent(&output),
                shown(),
                up.log_tail(40)
            );
        }
        if let Some(missing) = first_missing(&expected, &output) {
            panic!(
                "{name}\nprinted what the README does not show: no line matches {:?} \
                 (after the lines before it).\nthe README shows (in order, `…` for any text):\n{}\n\
                 actual output (stdout and stderr):\n{}",
                expected[missing],
                shown(),
                indent(&output)
            );
        }
    }
    println!(
        "README walkthrough: {total} steps in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn the_walkthrough_block_reads_by_the_convention() {
    let readme = "# x\n### Deploy an app\n\ntext\n```sh\nexport A=$(cat f)   # why\n\
                  run 'a # b' \\\n  --flag\n# out 1\n# …\n#\n\
                  other          # because;\n               # and more\n# out 2\n```\n```sh\nnot this\n```\n";
    let s = steps(readme, "### Deploy an app");
    assert_eq!(
        s,
        vec![
            Step {
                line: 6,
                command: "export A=$(cat f)   # why".into(),
                expected: vec![],
            },
            Step {
                line: 7,
                command: "run 'a # b' \\\n  --flag".into(),
                expected: vec!["out 1".into(), "…".into(), "".into()],
            },
            Step {
                line: 12,
                command: "other          # because;".into(),
                expected: vec!["out 2".into()],
            },
        ]
    );
    assert_eq!(code_of(&s[0].command), "export A=$(cat f)");
    assert_eq!(code_of(&s[1].command), s[1].command);
    assert_eq!(code_of("echo a#b # c"), "echo a#b");
    assert_eq!(code_of("echo \"# no\""), "echo \"# no\"");
}

#[test]
fn expected_lines_match_in_order_with_wildcards() {
    let out = "Uploaded /t/h.tgz (873 bytes) as upl_1.\nID          app_2\n\
               hello: 0/2 healthy (deploying)\nhello: 2/2 healthy (running)\n";
    let e = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        first_missing(
            &e(&[
                "Uploaded /t/h.tgz (… bytes) as upl_….",
                "ID  app_…",
                "…",
                "hello: 2/2 healthy (running)"
            ]),
            out
        ),
        None
    );
    // Out of order, or not there.
    assert_eq!(first_missing(&e(&["ID app_…", "Uploaded …"]), out), Some(1));
    assert_eq!(first_missing(&e(&["hello: 3/2 …"]), out), Some(0));
    assert!(matches("a…b…c", "a-b-c"));
    assert!(matches("in_progress…", "in_progress"));
    assert!(!matches("a…a", "a"));
    assert!(!matches("abc", "abcd"));
    assert_eq!(
        loopback_only(
            "curl http://127.0.0.1:9/ && curl https://example.com/x",
            &["http://127.0.0.1:9/".into()]
        ),
        Err("https://example.com/x".into())
    );
}
