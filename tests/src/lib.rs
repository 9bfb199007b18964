//! Workspace integration tests for Hearth: several processes on loopback driving the
//! real `hearth` binary. The tests live in `tests/tests/`; this library holds helpers
//! they share.

#![deny(missing_docs)]
