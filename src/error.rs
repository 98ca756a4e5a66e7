//! Errors: the crate's [`Error`] for Rust callers, and the [`ScriptError`] message every script
//! failure becomes (logged with `file:line` and traceback, never a panic).

use bevy::prelude::*;

/// Errors returned by the crate's Rust API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Lua VM reported an error.
    #[error(transparent)]
    Lua(#[from] mlua::Error),
    /// A script asset was not valid UTF-8.
    #[error("script {path} is not valid UTF-8: {source}")]
    NotUtf8 {
        /// The asset path.
        path: String,
        /// What was wrong with the bytes.
        source: std::str::Utf8Error,
    },
    /// Reading a script asset failed.
    #[error("could not read script {path}: {source}")]
    Io {
        /// The asset path.
        path: String,
        /// The reader's error.
        source: std::io::Error,
    },
    /// A language-model service could not be set up (a bad configuration, a TLS set-up failure).
    #[error("language-model service: {0}")]
    Llm(String),
    /// A name could not be given to scripts (a function, channel, message or service): it is a
    /// built-in name, or the Lua side refused it.
    #[error("could not give scripts {name:?}: {source}")]
    Registration {
        /// The name scripts were to use.
        name: String,
        /// What the VM reported.
        source: mlua::Error,
    },
    /// The script stopped reading a stream (it closed it, took what it wanted, or its entity was
    /// despawned): the producer should stop.
    #[error("the script stopped reading the stream")]
    StreamClosed,
    /// A stream's buffer is full (only from [`StreamSender::try_send`](crate::StreamSender::try_send)).
    #[error("the stream's buffer is full")]
    StreamFull,
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure a [`ScriptError`] reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ScriptErrorKind {
    /// The script could not be loaded or compiled (missing file, syntax error).
    Load,
    /// A task raised an error.
    Runtime,
    /// A task ran past the instruction budget of one resume.
    Budget,
    /// A promise was rejected and no handler observed the rejection by the end of the next frame.
    /// The entity and script are those of the instance that created the promise (a placeholder
    /// entity if that instance is gone).
    UnhandledRejection,
    /// An instance went past one of its quotas (memory per instance): its tasks were cancelled.
    /// (Past its live-task quota, the call that would make one more task raises instead.)
    Quota,
}

/// A script failure, written once per failed task (the task stops; the rest of the game goes on).
#[derive(Message, Clone, Debug)]
pub struct ScriptError {
    /// The entity whose script failed.
    pub entity: Entity,
    /// The script's asset path, e.g. `scripts/enemy.lua`.
    pub script: String,
    /// The error message, e.g. `scripts/enemy.lua:12: attempt to index a nil value`.
    pub message: String,
    /// The Lua stack traceback at the point of failure (may be empty).
    pub traceback: String,
    /// What kind of failure this is.
    pub kind: ScriptErrorKind,
}

/// One line a script printed with `print`.
#[derive(Message, Clone, Debug)]
pub struct ScriptPrint {
    /// The entity whose script printed.
    pub entity: Entity,
    /// The script's asset path.
    pub script: String,
    /// The line, without its newline.
    pub line: String,
}

/// Splits an mlua error into its message and the traceback mlua appended to it.
pub(crate) fn split_traceback(error: &mlua::Error) -> (String, String) {
    match error {
        mlua::Error::CallbackError { traceback, cause } => {
            let (message, inner) = split_traceback(cause);
            (message, if inner.is_empty() { traceback.clone() } else { inner })
        }
        mlua::Error::RuntimeError(text) | mlua::Error::MemoryError(text) => split_text(text),
        mlua::Error::SyntaxError { message, .. } => split_text(message),
        other => split_text(&other.to_string()),
    }
}

/// The `stack traceback:` part of what `debug.traceback` returned (empty if there is none).
pub(crate) fn traceback_part(text: &str) -> String {
    split_text(&format!("\n{text}")).1
}

/// Splits `message\nstack traceback:\n...` into its two parts.
pub(crate) fn split_text(text: &str) -> (String, String) {
    match text.find("\nstack traceback:") {
        Some(at) => (text[..at].to_string(), text[at + 1..].to_string()),
        None => (text.to_string(), String::new()),
    }
}

/// Lua's own argument error: `bad argument #1 to 'wait' (number expected, got table)`, with
/// `problem` in the parentheses.
pub(crate) fn bad_argument(n: usize, function: &str, problem: impl std::fmt::Display) -> String {
    format!("bad argument #{n} to '{function}' ({problem})")
}

/// [`bad_argument`] for a value of the wrong type: `(string expected, got table)`.
pub(crate) fn wrong_type(n: usize, function: &str, expected: &str, got: &mlua::Value) -> String {
    bad_argument(n, function, format_args!("{expected} expected, got {}", lua_type(got)))
}

/// The name Lua's `type` gives a value (`number` for integers too).
pub(crate) fn lua_type(value: &mlua::Value) -> &'static str {
    match value {
        mlua::Value::Integer(_) | mlua::Value::Number(_) => "number",
        mlua::Value::LightUserData(_) | mlua::Value::UserData(_) => "userdata",
        other => other.type_name(),
    }
}
