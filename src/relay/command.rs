//! The replication commands a downstream sends in simple Query messages, parsed without I/O.
//!
//! The grammar is the subset of PostgreSQL 15's replication grammar (repl_gram.y) that a
//! physical standby, `pg_receivewal`, `pg_basebackup`'s WAL stream and `walferry receive`
//! use: keywords are case-insensitive, names may be double-quoted, a trailing semicolon is
//! allowed, and `CREATE_REPLICATION_SLOT` takes options both the old way (`RESERVE_WAL`)
//! and the PostgreSQL 15 way (`(RESERVE_WAL true)`). What is valid grammar but not served by
//! a relay (logical replication, `BASE_BACKUP`) parses as [`Command::Unsupported`] so the
//! session can answer `feature_not_supported` and carry on.

use crate::wal::{Lsn, TimeLineId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// An empty query string (libpq sends one to test a connection).
    Empty,
    IdentifySystem,
    TimelineHistory(TimeLineId),
    Show(String),
    ReadReplicationSlot(String),
    CreateSlot {
        name: String,
        temporary: bool,
        reserve_wal: bool,
    },
    DropSlot {
        name: String,
        wait: bool,
    },
    StartReplication {
        slot: Option<String>,
        start: Lsn,
        /// `None`: the server's current timeline.
        timeline: Option<TimeLineId>,
    },
    /// Valid in PostgreSQL, not offered by a relay: the command's name, for the error.
    Unsupported(String),
}

/// Why a query is not a command; the text for a `syntax_error` ErrorResponse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CommandError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A keyword or bare identifier, as written.
    Word(String),
    /// A double-quoted identifier, unescaped.
    Quoted(String),
    /// A single-quoted string, unescaped.
    Str(String),
    Open,
    Close,
    Comma,
}

fn tokenize(query: &str) -> Result<Vec<Token>, CommandError> {
    let mut tokens = Vec::new();
    let mut chars = query.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            ';' => {
                if chars.any(|(_, c)| !c.is_whitespace()) {
                    return Err(CommandError("syntax error: text after \";\"".into()));
                }
                break;
            }
            '(' => tokens.push(Token::Open),
            ')' => tokens.push(Token::Close),
            ',' => tokens.push(Token::Comma),
            '"' | '\'' => {
                let mut text = String::new();
                loop {
                    match chars.next() {
                        Some((_, q)) if q == c => {
                            if chars.peek().is_some_and(|&(_, n)| n == c) {
                                chars.next();
                                text.push(c);
                            } else {
                                break;
                            }
                        }
                        Some((_, other)) => text.push(other),
                        None => {
                            return Err(CommandError(format!(
                                "unterminated quoted {} at position {}",
                                if c == '"' { "identifier" } else { "string" },
                                i + 1
                            )))
                        }
                    }
                }
                if c == '"' && text.is_empty() {
                    return Err(CommandError("zero-length delimited identifier".into()));
                }
                tokens.push(if c == '"' {
                    Token::Quoted(text)
                } else {
                    Token::Str(text)
                });
            }
            _ => {
                let mut word = String::from(c);
                while let Some(&(_, n)) = chars.peek() {
                    if n.is_whitespace() || matches!(n, ';' | '(' | ')' | ',' | '"' | '\'') {
                        break;
                    }
                    word.push(n);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

/// Parse one query string.
pub fn parse(query: &str) -> Result<Command, CommandError> {
    let tokens = tokenize(query)?;
    let mut p = Parser { tokens, at: 0 };
    let Some(first) = p.next() else {
        return Ok(Command::Empty);
    };
    let Token::Word(first) = first else {
        return Err(p.syntax_error());
    };
    let cmd = match first.to_ascii_uppercase().as_str() {
        "IDENTIFY_SYSTEM" => Command::IdentifySystem,
        "TIMELINE_HISTORY" => Command::TimelineHistory(p.timeline()?),
        "SHOW" => Command::Show(p.name()?),
        "READ_REPLICATION_SLOT" => Command::ReadReplicationSlot(p.name()?),
        "CREATE_REPLICATION_SLOT" => return p.create_slot(),
        "DROP_REPLICATION_SLOT" => {
            let name = p.name()?;
            let wait = p.keyword("WAIT");
            Command::DropSlot { name, wait }
        }
        "START_REPLICATION" => return p.start_replication(),
        "BASE_BACKUP" | "UPLOAD_MANIFEST" | "ALTER_REPLICATION_SLOT" => {
            return Ok(Command::Unsupported(first.to_ascii_uppercase()))
        }
        _ => {
            return Err(CommandError(format!(
                "syntax error at or near \"{first}\": not a replication command this relay knows"
            )))
        }
    };
    p.end()?;
    Ok(cmd)
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn next(&mut self) -> Option<Token> {
        // Past the end too, so that an error after the last token says "end of input".
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn syntax_error(&self) -> CommandError {
        match self.tokens.get(self.at.saturating_sub(1)) {
            Some(t) => CommandError(format!("syntax error at or near {}", describe(t))),
            None => CommandError("syntax error at end of input".into()),
        }
    }

    fn end(&mut self) -> Result<(), CommandError> {
        match self.next() {
            None => Ok(()),
            Some(_) => Err(self.syntax_error()),
        }
    }

    /// Consume `kw` (case-insensitive) if it comes next.
    fn keyword(&mut self, kw: &str) -> bool {
        match self.peek() {
            Some(Token::Word(w)) if w.eq_ignore_ascii_case(kw) => {
                self.at += 1;
                true
            }
            _ => false,
        }
    }

    /// An identifier: bare ones fold to lower case, as in SQL.
    fn name(&mut self) -> Result<String, CommandError> {
        match self.next() {
            Some(Token::Word(w)) if is_identifier(&w) => Ok(w.to_ascii_lowercase()),
            Some(Token::Quoted(q)) => Ok(q),
            _ => Err(self.syntax_error()),
        }
    }

    fn timeline(&mut self) -> Result<TimeLineId, CommandError> {
        match self.next() {
            Some(Token::Word(w)) => match w.parse::<u32>() {
                Ok(n) if n > 0 => Ok(TimeLineId(n)),
                _ => Err(CommandError(format!("invalid timeline {w}"))),
            },
            _ => Err(self.syntax_error()),
        }
    }

    fn create_slot(&mut self) -> Result<Command, CommandError> {
        let name = self.name()?;
        let temporary = self.keyword("TEMPORARY");
        if self.keyword("LOGICAL") {
            return Ok(Command::Unsupported(
                "CREATE_REPLICATION_SLOT ... LOGICAL".into(),
            ));
        }
        if !self.keyword("PHYSICAL") {
            return Err(self.syntax_error());
        }
        let mut reserve_wal = false;
        if self.peek() == Some(&Token::Open) {
            self.at += 1;
            loop {
                let option = self.name()?;
                let value = match self.peek() {
                    Some(Token::Word(_)) | Some(Token::Str(_)) => match self.next() {
                        Some(Token::Word(v)) | Some(Token::Str(v)) => Some(v),
                        _ => unreachable!("peeked"),
                    },
                    _ => None,
                };
                match option.as_str() {
                    "reserve_wal" => reserve_wal = parse_bool(&option, value.as_deref())?,
                    _ => {
                        return Err(CommandError(format!(
                            "unrecognized option \"{option}\" for a physical replication slot"
                        )))
                    }
                }
                match self.next() {
                    Some(Token::Comma) => continue,
                    Some(Token::Close) => break,
                    _ => return Err(self.syntax_error()),
                }
            }
        } else {
            loop {
                if self.keyword("RESERVE_WAL") {
                    reserve_wal = true;
                } else {
                    break;
                }
            }
        }
        self.end()?;
        Ok(Command::CreateSlot {
            name,
            temporary,
            reserve_wal,
        })
    }

    fn start_replication(&mut self) -> Result<Command, CommandError> {
        let slot = if self.keyword("SLOT") {
            Some(self.name()?)
        } else {
            None
        };
        if self.keyword("LOGICAL") {
            return Ok(Command::Unsupported("START_REPLICATION ... LOGICAL".into()));
        }
        self.keyword("PHYSICAL");
        let start = match self.next() {
            Some(Token::Word(w)) => w
                .parse::<Lsn>()
                .map_err(|_| CommandError(format!("invalid start position \"{w}\"")))?,
            _ => return Err(self.syntax_error()),
        };
        let timeline = if self.keyword("TIMELINE") {
            Some(self.timeline()?)
        } else {
            None
        };
        self.end()?;
        Ok(Command::StartReplication {
            slot,
            start,
            timeline,
        })
    }
}

fn is_identifier(w: &str) -> bool {
    let mut chars = w.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}

fn parse_bool(option: &str, value: Option<&str>) -> Result<bool, CommandError> {
    match value.map(|v| v.to_ascii_lowercase()).as_deref() {
        None | Some("true" | "on" | "1" | "yes") => Ok(true),
        Some("false" | "off" | "0" | "no") => Ok(false),
        Some(v) => Err(CommandError(format!(
            "{option} requires a Boolean value, not \"{v}\""
        ))),
    }
}

fn describe(t: &Token) -> String {
    match t {
        Token::Word(w) => format!("\"{w}\""),
        Token::Quoted(q) => format!("\"\"{q}\"\""),
        Token::Str(s) => format!("\"'{s}'\""),
        Token::Open => "\"(\"".into(),
        Token::Close => "\")\"".into(),
        Token::Comma => "\",\"".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_standbys_and_pg_receivewal_send() {
        assert_eq!(parse("IDENTIFY_SYSTEM").unwrap(), Command::IdentifySystem);
        assert_eq!(parse("identify_system;").unwrap(), Command::IdentifySystem);
        assert_eq!(parse("").unwrap(), Command::Empty);
        assert_eq!(parse("  ; ").unwrap(), Command::Empty);
        assert_eq!(
            parse("TIMELINE_HISTORY 3").unwrap(),
            Command::TimelineHistory(TimeLineId(3))
        );
        assert_eq!(
            parse("SHOW wal_segment_size").unwrap(),
            Command::Show("wal_segment_size".into())
        );
        assert_eq!(
            parse("START_REPLICATION 0/3000000 TIMELINE 1").unwrap(),
            Command::StartReplication {
                slot: None,
                start: Lsn(0x300_0000),
                timeline: Some(TimeLineId(1))
            }
        );
        assert_eq!(
            parse("START_REPLICATION SLOT \"My Slot\" PHYSICAL 1/A0 TIMELINE 12").unwrap(),
            Command::StartReplication {
                slot: Some("My Slot".into()),
                start: Lsn(0x1_0000_00A0),
                timeline: Some(TimeLineId(12))
            }
        );
        assert_eq!(
            parse("START_REPLICATION SLOT s1 0/0").unwrap(),
            Command::StartReplication {
                slot: Some("s1".into()),
                start: Lsn(0),
                timeline: None
            }
        );
        assert_eq!(
            parse("READ_REPLICATION_SLOT \"walferry\"").unwrap(),
            Command::ReadReplicationSlot("walferry".into())
        );
    }

    #[test]
    fn slot_commands_in_both_option_syntaxes() {
        let made = |temporary, reserve_wal| Command::CreateSlot {
            name: "s".into(),
            temporary,
            reserve_wal,
        };
        assert_eq!(
            parse("CREATE_REPLICATION_SLOT s PHYSICAL").unwrap(),
            made(false, false)
        );
        assert_eq!(
            parse("CREATE_REPLICATION_SLOT \"s\" TEMPORARY PHYSICAL RESERVE_WAL").unwrap(),
            made(true, true)
        );
        assert_eq!(
            parse("CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL)").unwrap(),
            made(false, true)
        );
        assert_eq!(
            parse("CREATE_REPLICATION_SLOT s PHYSICAL (RESERVE_WAL false)").unwrap(),
            made(false, false)
        );
        assert_eq!(
            parse("DROP_REPLICATION_SLOT s WAIT").unwrap(),
            Command::DropSlot {
                name: "s".into(),
                wait: true
            }
        );
        assert!(matches!(
            parse("CREATE_REPLICATION_SLOT s LOGICAL pgoutput").unwrap(),
            Command::Unsupported(_)
        ));
        assert!(parse("CREATE_REPLICATION_SLOT s PHYSICAL (TWO_PHASE)").is_err());
    }

    #[test]
    fn bad_queries_say_where() {
        let e = parse("SELECT 1").unwrap_err();
        assert!(e.0.contains("\"SELECT\""), "{e}");
        assert!(parse("START_REPLICATION nonsense").is_err());
        assert!(parse("START_REPLICATION 0/0 TIMELINE 0").is_err());
        assert!(parse("TIMELINE_HISTORY")
            .unwrap_err()
            .0
            .contains("end of input"));
        assert!(parse("SHOW \"unterminated").is_err());
        assert!(parse("IDENTIFY_SYSTEM; SELECT 1").is_err());
        assert!(parse("IDENTIFY_SYSTEM extra").is_err());
        assert!(matches!(
            parse("BASE_BACKUP (LABEL 'x')").unwrap(),
            Command::Unsupported(_)
        ));
        assert!(matches!(
            parse("START_REPLICATION SLOT s LOGICAL 0/0").unwrap(),
            Command::Unsupported(_)
        ));
    }

    /// The parser never panics, whatever a client sends (the fuzz target's property, run
    /// here over pseudo-random inputs built from the grammar's pieces).
    #[test]
    fn arbitrary_input_never_panics() {
        let pieces = [
            "START_REPLICATION",
            "SLOT",
            "\"",
            "'",
            "(",
            ")",
            ",",
            ";",
            " ",
            "0/0",
            "TIMELINE",
            "1",
            "x",
            "CREATE_REPLICATION_SLOT",
            "PHYSICAL",
            "RESERVE_WAL",
            "é",
            "\"\"",
            "4294967296",
        ];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            let mut q = String::new();
            for _ in 0..(state % 8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                q.push_str(pieces[(state % pieces.len() as u64) as usize]);
            }
            let _ = parse(&q);
            state = state.wrapping_add(1);
        }
    }
}
