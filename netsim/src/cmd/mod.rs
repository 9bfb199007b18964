//! Subcommands with more than a few lines of their own.

pub(crate) mod sweep;
