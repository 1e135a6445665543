//! Restoring from a repository. [`layout`] puts a backup's data directory in place; the
//! recovery settings (restore_command, targets, signal files) are added by the `restore`
//! command on top of it.

pub mod layout;
