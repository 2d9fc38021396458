//! Questions on the terminal. When stdin is not a terminal the answers are
//! read from it a line at a time, so scripts and tests can pipe
//! `email\npassword\n` in; no prompt is printed then.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{bail, Context};

pub fn stdin_is_terminal() -> bool {
    std::io::stdin().is_terminal()
}

/// One line from stdin without its line ending; `None` at end of input.
/// (`Stdin` buffers internally, so successive calls share one buffer and
/// no line is lost between them.)
pub fn read_line() -> anyhow::Result<Option<String>> {
    let mut line = String::new();
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read stdin")?;
    if n == 0 {
        return Ok(None);
    }
    while line.ends_with('\n') || line.ends_with('\r') {
        line.pop();
    }
    Ok(Some(line))
}

/// Ask for a value that may be shown (an email, an MFA code), trimmed.
pub fn ask(label: &str, what: &str) -> anyhow::Result<String> {
    if stdin_is_terminal() {
        let mut err = std::io::stderr().lock();
        write!(err, "{label}: ")?;
        err.flush()?;
    }
    match read_line()? {
        Some(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
        Some(_) => bail!("no {what} given"),
        None => bail!("no {what} given (stdin is closed)"),
    }
}

/// Ask for a secret: without echo on a terminal, else a line of stdin
/// (only the line ending is removed; spaces are part of a password).
pub fn ask_secret(label: &str, what: &str) -> anyhow::Result<String> {
    let secret = if stdin_is_terminal() {
        rpassword::prompt_password(format!("{label}: "))
            .with_context(|| format!("cannot read the {what}"))?
    } else {
        match read_line()? {
            Some(s) => s,
            None => bail!("no {what} given (stdin is closed)"),
        }
    };
    if secret.is_empty() {
        bail!("no {what} given");
    }
    Ok(secret)
}

/// Ask `question [y/N]` on the terminal; only `y` or `yes` is yes.
pub fn yes_no(question: &str) -> anyhow::Result<bool> {
    {
        let mut err = std::io::stderr().lock();
        write!(err, "{question} [y/N] ")?;
        err.flush()?;
    }
    let answer = read_line()?.unwrap_or_default();
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}
