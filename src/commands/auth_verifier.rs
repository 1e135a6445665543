//! `walferry auth-verifier USER`: a line for `walferry relay --auth-file`, made from a
//! password the way PostgreSQL makes the SCRAM-SHA-256 verifier it keeps in pg_authid.

use std::io::{BufRead, IsTerminal};

use walferry::auth::make_verifier_random_salt;
use walferry::conninfo;

use super::Failure;

pub const AFTER_HELP: &str = "\
Prints `USER SCRAM-SHA-256$4096:SALT$STOREDKEY:SERVERKEY`, one line for the file that
walferry relay --auth scram --auth-file FILE reads (keep that file mode 0600). On a terminal
the password is asked twice without echo; otherwise it is the first line of standard input.
Only the verifier is printed: the relay can check a password with it but never learns it.

A verifier PostgreSQL already keeps works too:
  SELECT rolname, rolpassword FROM pg_authid WHERE rolpassword LIKE 'SCRAM-SHA-256$%';

Example:
  walferry auth-verifier replicator >> /etc/walferry/relay.users";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The user name downstreams connect as
    #[arg(value_name = "USER")]
    user: String,

    /// Print help
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

pub fn run(args: Args) -> Result<(), Failure> {
    if args.user.is_empty() || args.user.chars().any(char::is_control) {
        return Err(Failure::usage(
            "the user name must be non-empty and printable",
            "auth-verifier",
        ));
    }
    let password = read_password()?;
    if password.is_empty() {
        return Err(Failure::new("empty password: a client could never send it"));
    }
    let verifier = make_verifier_random_salt(&password)
        .map_err(|e| Failure::new(format!("could not make a salt: {e}")))?;
    println!("{} {verifier}", quote_user(&args.user));
    Ok(())
}

fn read_password() -> Result<String, Failure> {
    if std::io::stdin().is_terminal() {
        let ask = |prompt: &str| {
            conninfo::prompt_password(prompt)
                .map_err(|e| Failure::new(format!("could not read the password: {e}")))
        };
        let first = ask("Password: ")?;
        let again = ask("Enter it again: ")?;
        if first != again {
            return Err(Failure::new("passwords didn't match"));
        }
        return Ok(first);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| {
        Failure::new(format!(
            "could not read the password from standard input: {e}"
        ))
    })?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

/// The user as the auth file reads it: bare, or double-quoted when it holds white space, a
/// quote or starts a comment.
fn quote_user(user: &str) -> String {
    if user
        .chars()
        .any(|c| c.is_whitespace() || c == '"' || c == '#')
    {
        format!("\"{}\"", user.replace('"', "\"\""))
    } else {
        user.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_quoted_only_when_the_file_needs_it() {
        assert_eq!(quote_user("replicator"), "replicator");
        assert_eq!(quote_user("my user"), "\"my user\"");
        assert_eq!(quote_user("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_user("#x"), "\"#x\"");
    }
}
