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

/// The timeline that wrote `lsn`, given the history of timeline `tli` (its ancestors with
/// their switch points, oldest first): the first ancestor whose switch point lies beyond
/// `lsn`, else `tli` itself. As timeline.c tliOfPointInHistory (a switch point belongs to the
/// next timeline). `at_least` skips ancestors below it (a caller that knows the WAL is at
/// least that recent).
pub fn tli_of_point_in_history(
    history: &[HistoryEntry],
    tli: TimeLineId,
    at_least: TimeLineId,
    lsn: Lsn,
) -> TimeLineId {
    history
        .iter()
        .filter(|e| e.tli >= at_least)
        .find(|e| lsn < e.switchpoint)
        .map(|e| e.tli)
        .unwrap_or(tli)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_of_a_point_follows_the_switch_points() {
        let history = parse_history("1\t0/3000148\tx\n2\t0/5000000\ty\n").unwrap();
        let tli = |at_least, lsn| {
            tli_of_point_in_history(&history, TimeLineId(3), TimeLineId(at_least), Lsn(lsn))
        };
        assert_eq!(tli(1, 0x2000000), TimeLineId(1));
        assert_eq!(tli(1, 0x3000147), TimeLineId(1));
        assert_eq!(tli(1, 0x3000148), TimeLineId(2));
        assert_eq!(tli(1, 0x4000000), TimeLineId(2));
        assert_eq!(tli(2, 0x3000000), TimeLineId(2));
        assert_eq!(tli(1, 0x5000000), TimeLineId(3));
        assert_eq!(
            tli_of_point_in_history(&[], TimeLineId(1), TimeLineId(1), Lsn(5)),
            TimeLineId(1)
        );
    }

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
