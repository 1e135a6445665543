//! The streaming tar reader on arbitrary bytes, fed in pieces whose sizes the input picks:
//! never a panic or a loop, every member's data exactly the size its header announced,
//! every name a clean relative path, and the same members whatever the piece sizes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use walferry::backup::tar::{clean_relative, EntryKind, TarEvent, TarStream};

fn split(bytes: &[u8], piece: usize) -> Option<Vec<(String, EntryKind, usize)>> {
    let mut tar = TarStream::new();
    let mut out: Vec<(String, EntryKind, usize)> = Vec::new();
    for chunk in bytes.chunks(piece) {
        let mut input = chunk;
        while let Some(ev) = tar.next(&mut input).ok()? {
            match ev {
                TarEvent::Entry(e) => out.push((e.path, e.kind, 0)),
                TarEvent::Data(d) => out.last_mut().expect("data after an entry").2 += d.len(),
                TarEvent::End => {}
            }
        }
        assert!(input.is_empty(), "all input used when more is asked for");
    }
    tar.finish().ok()?;
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&p, bytes)) = data.split_first() else {
        return;
    };
    let whole = split(bytes, bytes.len().max(1));
    if let Some(members) = &whole {
        for (path, kind, len) in members {
            assert_eq!(clean_relative(path).as_deref(), Some(path.as_str()));
            match kind {
                EntryKind::File { size } => assert_eq!(*size, *len as u64),
                _ => assert_eq!(*len, 0),
            }
        }
    }
    assert_eq!(split(bytes, p as usize + 1), whole, "piece size changes nothing");
});
