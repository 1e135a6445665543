//! Timeline history files: any bytes must parse or fail cleanly, and what parses must
//! render back to text that parses to the same entries.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walferry::wal::parse_history;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(entries) = parse_history(&text) {
        let rendered: String = entries
            .iter()
            .map(|e| format!("{}\t{}\t{}\n", e.tli, e.switchpoint, e.reason))
            .collect();
        let again = parse_history(&rendered).expect("rendered history parses");
        assert_eq!(entries.len(), again.len());
        for (a, b) in entries.iter().zip(&again) {
            assert_eq!((a.tli, a.switchpoint), (b.tli, b.switchpoint));
        }
    }
});
