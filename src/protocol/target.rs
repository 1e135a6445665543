//! Whether a server that accepted the connection is the kind `target_session_attrs` asks
//! for, decided as libpq's fe-connect.c `PQconnectPoll` does after authentication
//! (PostgreSQL 14+ rules), without I/O: the caller feeds in what the server reported and
//! runs the `SHOW` this asks for when a report is missing.
//!
//! Servers from 14 on report `in_hot_standby` and `default_transaction_read_only` in
//! ParameterStatus at startup (replication connections too), so normally no query is
//! needed. Older servers get `SHOW transaction_read_only`. Where libpq would run
//! `SELECT pg_is_in_recovery()`, a physical replication connection cannot run SQL; it
//! asks `SHOW transaction_read_only` and `SHOW default_transaction_read_only` instead: in
//! recovery every transaction is read-only, so "read-only but not by default" means hot
//! standby. (A pre-14 primary with `default_transaction_read_only=on` counts as a primary.)

use crate::conninfo::TargetSessionAttrs;

/// What the server said about itself; `None` = not reported (yet).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ServerState {
    /// ParameterStatus `in_hot_standby` (PostgreSQL 14+).
    pub in_hot_standby: Option<bool>,
    /// ParameterStatus `default_transaction_read_only` (14+), or its `SHOW`.
    pub default_read_only: Option<bool>,
    /// `SHOW transaction_read_only`.
    pub read_only: Option<bool>,
}

/// The settings [`ServerState`] is made of, as `SHOW` and ParameterStatus name them.
pub const IN_HOT_STANDBY: &str = "in_hot_standby";
pub const DEFAULT_READ_ONLY: &str = "default_transaction_read_only";
pub const READ_ONLY: &str = "transaction_read_only";

impl ServerState {
    /// From the ParameterStatus values of the startup.
    pub fn reported<'a>(parameter: impl Fn(&str) -> Option<&'a str>) -> ServerState {
        ServerState {
            in_hot_standby: parameter(IN_HOT_STANDBY).map(is_on),
            default_read_only: parameter(DEFAULT_READ_ONLY).map(is_on),
            read_only: None,
        }
    }

    /// Record the answer to a `SHOW` that [`check`] asked for.
    pub fn learn(&mut self, setting: &str, value: &str) {
        let v = Some(is_on(value));
        match setting {
            IN_HOT_STANDBY => self.in_hot_standby = v,
            DEFAULT_READ_ONLY => self.default_read_only = v,
            READ_ONLY => self.read_only = v,
            _ => {}
        }
    }
}

/// As libpq: a boolean setting is on exactly when it reads "on".
fn is_on(value: &str) -> bool {
    value == "on"
}

/// The verdict on one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Accept,
    /// Not the kind wanted: libpq's reason, for the error message.
    Reject(&'static str),
    /// Run `SHOW <setting>`, [`ServerState::learn`] the answer, and check again.
    Show(&'static str),
}

/// Decide on a server. `PreferStandby` is checked as `Standby`: its second pass, which
/// accepts any server, is the caller's (`Any`).
pub fn check(want: TargetSessionAttrs, s: &ServerState) -> Check {
    match want {
        TargetSessionAttrs::Any => Check::Accept,
        TargetSessionAttrs::ReadWrite | TargetSessionAttrs::ReadOnly => {
            let read_only = match (s.default_read_only, s.in_hot_standby, s.read_only) {
                (Some(default), Some(hot), _) => default || hot,
                (_, _, Some(read_only)) => read_only,
                _ => return Check::Show(READ_ONLY),
            };
            match (want, read_only) {
                (TargetSessionAttrs::ReadWrite, true) => Check::Reject("session is read-only"),
                (TargetSessionAttrs::ReadOnly, false) => Check::Reject("session is not read-only"),
                _ => Check::Accept,
            }
        }
        TargetSessionAttrs::Primary
        | TargetSessionAttrs::Standby
        | TargetSessionAttrs::PreferStandby => {
            let hot = match s.in_hot_standby {
                Some(hot) => hot,
                None => match (s.read_only, s.default_read_only) {
                    (None, _) => return Check::Show(READ_ONLY),
                    (Some(_), None) => return Check::Show(DEFAULT_READ_ONLY),
                    (Some(read_only), Some(default)) => read_only && !default,
                },
            };
            match (want, hot) {
                (TargetSessionAttrs::Primary, true) => {
                    Check::Reject("server is in hot standby mode")
                }
                (TargetSessionAttrs::Primary, false) => Check::Accept,
                (_, false) => Check::Reject("server is not in hot standby mode"),
                (_, true) => Check::Accept,
            }
        }
    }
}

/// How the error for "no host qualified" names what was wanted, after libpq's "could not
/// make a writable connection".
pub fn wanted(want: TargetSessionAttrs) -> &'static str {
    match want {
        TargetSessionAttrs::Any => "",
        TargetSessionAttrs::ReadWrite => "writable ",
        TargetSessionAttrs::ReadOnly => "read-only ",
        TargetSessionAttrs::Primary => "primary ",
        TargetSessionAttrs::Standby | TargetSessionAttrs::PreferStandby => "standby ",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TargetSessionAttrs::*;

    fn pg14(hot: bool, default_ro: bool) -> ServerState {
        ServerState {
            in_hot_standby: Some(hot),
            default_read_only: Some(default_ro),
            read_only: None,
        }
    }

    #[test]
    fn reported_parameters_decide_without_queries() {
        let primary = pg14(false, false);
        let fenced = pg14(false, true);
        let standby = pg14(true, false);
        let reject = Check::Reject;
        for (want, on_primary, on_fenced, on_standby) in [
            (Any, Check::Accept, Check::Accept, Check::Accept),
            (
                ReadWrite,
                Check::Accept,
                reject("session is read-only"),
                reject("session is read-only"),
            ),
            (
                ReadOnly,
                reject("session is not read-only"),
                Check::Accept,
                Check::Accept,
            ),
            (
                Primary,
                Check::Accept,
                Check::Accept,
                reject("server is in hot standby mode"),
            ),
            (
                Standby,
                reject("server is not in hot standby mode"),
                reject("server is not in hot standby mode"),
                Check::Accept,
            ),
            (
                PreferStandby,
                reject("server is not in hot standby mode"),
                reject("server is not in hot standby mode"),
                Check::Accept,
            ),
        ] {
            assert_eq!(check(want, &primary), on_primary, "{want} on a primary");
            assert_eq!(
                check(want, &fenced),
                on_fenced,
                "{want} on a read-only primary"
            );
            assert_eq!(check(want, &standby), on_standby, "{want} on a standby");
        }
    }

    #[test]
    fn reported_from_parameter_status() {
        let params = [
            ("in_hot_standby", "on"),
            ("default_transaction_read_only", "off"),
        ];
        let s = ServerState::reported(|n| params.iter().find(|(k, _)| *k == n).map(|(_, v)| *v));
        assert_eq!(s, pg14(true, false));
        let s = ServerState::reported(|_| None);
        assert_eq!(s, ServerState::default());
    }

    #[test]
    fn old_servers_are_asked_with_show() {
        // read-write on a server without the reports: one SHOW decides.
        let mut s = ServerState::default();
        assert_eq!(check(ReadWrite, &s), Check::Show(READ_ONLY));
        s.learn(READ_ONLY, "on");
        assert_eq!(check(ReadWrite, &s), Check::Reject("session is read-only"));
        assert_eq!(check(ReadOnly, &s), Check::Accept);

        // standby: read-only, but not by default = in recovery.
        let mut s = ServerState::default();
        assert_eq!(check(Standby, &s), Check::Show(READ_ONLY));
        s.learn(READ_ONLY, "on");
        assert_eq!(check(Standby, &s), Check::Show(DEFAULT_READ_ONLY));
        s.learn(DEFAULT_READ_ONLY, "off");
        assert_eq!(check(Standby, &s), Check::Accept);
        assert_eq!(
            check(Primary, &s),
            Check::Reject("server is in hot standby mode")
        );
        // Read-only by default: a primary.
        s.learn(DEFAULT_READ_ONLY, "on");
        assert_eq!(check(Primary, &s), Check::Accept);
        // Only one of the two reports (a partial set) is not enough for read-write.
        let s = ServerState {
            in_hot_standby: None,
            default_read_only: Some(false),
            read_only: None,
        };
        assert_eq!(check(ReadWrite, &s), Check::Show(READ_ONLY));
        // Unknown names are ignored; anything but "on" is off.
        let mut s = ServerState::default();
        s.learn("server_version", "on");
        assert_eq!(s, ServerState::default());
        s.learn(IN_HOT_STANDBY, "true");
        assert_eq!(s.in_hot_standby, Some(false));
    }
}
