//! Interactive exec sessions (`GET /v1/apps/{id}/exec/ws`) and how the
//! control plane and a node's agent relay them.
//!
//! The client's WebSocket: binary messages are the command's standard
//! input; text messages are JSON controls — `{"type": "resize", "cols":
//! 120, "rows": 40}`, `{"type": "stdin", "data": "ls\n"}`, `{"type":
//! "eof"}`. The server sends binary messages of output (stdout and stderr
//! together; a terminal's output with `tty=true`), and at the end a text
//! message `{"type": "exit", "exit_code": 0}` (or `{"type": "error",
//! "message": …}`) before it closes.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// The query string of `GET /v1/apps/{id}/exec/ws`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExecWsParams {
    /// The program (and arguments, split on spaces; give `command` several
    /// times for arguments with spaces). Default: `/bin/sh`.
    pub command: Option<String>,
    /// The instance (inst_…); default: a healthy one.
    pub instance_id: Option<String>,
    /// Give the command a terminal (a PTY): a shell prompts, line editing.
    pub tty: Option<bool>,
    /// The terminal's size (default 80 × 24).
    pub cols: Option<u16>,
    pub rows: Option<u16>,
}

/// A session as the agent gets it (in an `exec_session` task).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecSession {
    #[schema(example = "exs_2v8s9d2k1m")]
    pub id: String,
    pub command: Vec<String>,
    pub tty: bool,
    pub cols: u16,
    pub rows: u16,
}

/// One relayed message of a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecFrame {
    /// Increasing per direction, from 1.
    pub seq: i64,
    /// Bytes, base64.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub data: String,
    /// Input: the terminal's new size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize: Option<(u16, u16)>,
    /// Input: the end of the input. Output: the command ended.
    #[serde(default)]
    pub end: bool,
    /// Output, with `end`: the command's exit code (none: killed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Output, with `end`: why the command could not run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `GET /v1/agent/exec/{session_id}/input?after=N`: the input frames after
/// N (held until there are some, or a few seconds); `closed` when the
/// client has gone (the agent ends the command).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecInput {
    pub frames: Vec<ExecFrame>,
    pub closed: bool,
}

/// `POST /v1/agent/exec/{session_id}/output`: output frames, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ExecOutput {
    pub frames: Vec<ExecFrame>,
}

impl crate::Validate for ExecOutput {
    fn validate(&self) -> Result<(), shellwego_core::Error> {
        if self.frames.len() > 10_000 {
            return Err(shellwego_core::Error::field(
                "frames",
                "too_many",
                "at most 10 000 frames per call",
            ));
        }
        Ok(())
    }
}
