//! Errors as the user sees them: one line that says what went wrong and what to do,
//! and the exit code of `../shared/CLI.md`.

use std::fmt;
use std::path::Path;

use hearth_protocol::capability::ChainError;
use hearth_protocol::encoding::DecodeError;
use hearth_protocol::key::KeyFileError;

/// Exit codes shared by every command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Anything else that went wrong.
    Error = 1,
    /// Bad arguments.
    Usage = 2,
    /// Refused by policy: missing, expired, revoked or insufficient capability.
    Refused = 3,
    /// A named thing (file, store, device) does not exist.
    NotFound = 4,
    /// Unavailable: node not running, no holder of the data online, peer unreachable.
    Unavailable = 5,
}

/// A failure to report to the user.
#[derive(Debug)]
pub(crate) struct CliError {
    pub(crate) exit: Exit,
    pub(crate) message: String,
    pub(crate) hint: Option<String>,
}

impl CliError {
    pub(crate) fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            exit,
            message: message.into(),
            hint: None,
        }
    }

    pub(crate) fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// A key file problem, with advice that depends on what was expected.
    pub(crate) fn key_file(err: KeyFileError, path: &Path, advice: &str) -> Self {
        let exit = match err {
            KeyFileError::NotFound { .. } => Exit::NotFound,
            KeyFileError::WrongRole { .. } => Exit::Usage,
            _ => Exit::Error,
        };
        let message = match &err {
            KeyFileError::Io { source, .. } => format!("{err}: {source}"),
            KeyFileError::Malformed { .. } | KeyFileError::WrongRole { .. } => {
                format!("{}: {err}", path.display())
            }
            _ => err.to_string(),
        };
        CliError::new(exit, message).hint(advice)
    }

    /// A capability chain refused by the verifier.
    pub(crate) fn refused(err: ChainError) -> Self {
        CliError::new(Exit::Refused, err.to_string())
    }

    /// A file that could not be decoded as a capability.
    pub(crate) fn bad_capability_file(path: &Path, err: DecodeError) -> Self {
        CliError::new(
            Exit::Error,
            format!("{} is not a valid capability file: {err}", path.display()),
        )
        .hint("pass the file that `hearth app approve` or `hearth cap delegate` wrote")
    }

    /// Reading an input file failed.
    pub(crate) fn read(path: &Path, err: std::io::Error, what: &str) -> Self {
        if err.kind() == std::io::ErrorKind::NotFound {
            CliError::new(
                Exit::NotFound,
                format!("{what} {} does not exist", path.display()),
            )
        } else {
            CliError::new(
                Exit::Error,
                format!("cannot read {what} {}: {err}", path.display()),
            )
        }
    }

    /// Writing an output file failed.
    pub(crate) fn write(path: &Path, err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::AlreadyExists {
            CliError::new(Exit::Error, format!("{} already exists", path.display()))
                .hint("choose another --out path or remove the old file first")
        } else {
            CliError::new(
                Exit::Error,
                format!("cannot write {}: {err}", path.display()),
            )
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = self.message.trim_end_matches('.');
        match &self.hint {
            Some(hint) => write!(f, "{message}; {hint}."),
            None => write!(f, "{message}."),
        }
    }
}

impl std::error::Error for CliError {}

pub(crate) type Result<T, E = CliError> = std::result::Result<T, E>;
