//! Timeline history files: one line per ancestor timeline,
//! `parentTLI<TAB>switchpoint<TAB>reason`, as timeline.c readTimeLineHistory reads them.

use super::{Lsn, TimeLineId};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The ancestor timeline that ended at `switchpoint`.
    pub tli: TimeLineId,
    /// First LSN that belongs to the next timeline.
    pub switchpoint: Lsn,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("line {line}: expected \"timeline<TAB>X/X<TAB>reason\"")]
    Syntax { line: usize },
    #[error("line {line}: timeline ids must increase")]
    NotIncreasing { line: usize },
}

/// Parse a history file's text. Blank lines and `#` comments are skipped, as PostgreSQL does;
/// anything else malformed is an error rather than silently ignored.
pub fn parse_history(text: &str) -> Result<Vec<HistoryEntry>, HistoryError> {
    let mut entries: Vec<HistoryEntry> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut fields = trimmed.splitn(3, ['\t', ' ']);
        let tli = fields
            .next()
            .and_then(|f| f.parse::<u32>().ok())
            .filter(|t| *t > 0)
            .ok_or(HistoryError::Syntax { line })?;
        let switchpoint = fields
            .next()
            .map(str::trim)
            .and_then(|f| f.parse::<Lsn>().ok())
            .ok_or(HistoryError::Syntax { line })?;
        let reason = fields.next().unwrap_or("").trim().to_string();
        if entries.last().is_some_and(|prev| prev.tli.0 >= tli) {
            return Err(HistoryError::NotIncreasing { line });
        }
        entries.push(HistoryEntry {
            tli: TimeLineId(tli),
            switchpoint,
            reason,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_real_history_file() {
        let text =
            "1\t0/3000148\tno recovery target specified\n\n2\t0/5000000\tat restore point \"rp\"\n";
        let entries = parse_history(text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].tli, TimeLineId(1));
        assert_eq!(entries[0].switchpoint, Lsn(0x3000148));
        assert_eq!(entries[0].reason, "no recovery target specified");
        assert_eq!(entries[1].switchpoint, Lsn(0x5000000));
    }

    #[test]
    fn rejects_malformed_lines() {
        assert_eq!(
            parse_history("x\t0/1\tr"),
            Err(HistoryError::Syntax { line: 1 })
        );
        assert_eq!(
            parse_history("1\tnope\tr"),
            Err(HistoryError::Syntax { line: 1 })
        );
        assert_eq!(
            parse_history("2\t0/1\ta\n1\t0/2\tb"),
            Err(HistoryError::NotIncreasing { line: 2 })
        );
        assert_eq!(parse_history("# comment\n").unwrap(), vec![]);
    }
}
