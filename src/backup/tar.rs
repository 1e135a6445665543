//! A streaming tar reader: splits the archives BASE_BACKUP sends into their members as the
//! bytes arrive, in constant memory (one 512-byte header, plus a GNU long name when one is
//! used), without I/O. Each archive is fed in whatever pieces the network delivers; member
//! data comes out as slices of those pieces, so nothing is copied here.
//!
//! The server writes ustar headers (src/port/tar.c), and BASE_BACKUP leaves out the two
//! zero blocks that end a tar file: an archive ends where the next one (or the manifest)
//! begins, which the caller checks with [`TarStream::finish`]. Accepted besides: names
//! split over the ustar prefix field, GNU `L` long names, base-256 sizes (files of 8 GiB
//! and more), and a trailer of zero blocks. Refused, with an error naming the member:
//! hard links, devices, pax headers, bad header checksums, and any name that would leave
//! the directory it is restored into (absolute, `..`).

use thiserror::Error;

const BLOCK: usize = 512;
/// GNU long names longer than this are refused: no path in a data directory comes close
/// (PostgreSQL's MAXPGPATH is 1024), and it bounds the memory a hostile stream can take.
const MAX_LONG_NAME: u64 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TarError {
    #[error("tar header at offset {offset} has a bad checksum (the backup stream is damaged)")]
    Checksum { offset: u64 },
    #[error("tar header at offset {offset} has an invalid {field} field")]
    BadField { offset: u64, field: &'static str },
    #[error("tar member \"{name}\" has type '{kind}', which a data directory backup never holds")]
    UnsupportedType { name: String, kind: char },
    #[error("tar member name {name:?} is not a safe relative path")]
    UnsafeName { name: String },
    #[error("tar member name at offset {offset} is not UTF-8")]
    NotUtf8 { offset: u64 },
    #[error("GNU long name of {len} bytes at offset {offset} is too long")]
    LongNameTooLong { offset: u64, len: u64 },
    #[error("data after the end-of-archive blocks at offset {offset}")]
    DataAfterEnd { offset: u64 },
    #[error("the archive ends inside a member ({what}) at offset {offset}")]
    Truncated { offset: u64, what: &'static str },
}

/// What a member is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File { size: u64 },
    Directory,
    Symlink { target: String },
}

/// A member's header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    /// Relative, `/`-separated, without a trailing `/`, never empty, never `..`.
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits (`0o7777` at most).
    pub mode: u32,
    pub mtime: u64,
}

/// One step of the stream: every member is an `Entry`, then its data (files only, in
/// pieces), then `End`.
#[derive(Debug, PartialEq, Eq)]
pub enum TarEvent<'a> {
    Entry(TarEntry),
    Data(&'a [u8]),
    End,
}

#[derive(Debug)]
enum State {
    /// Collecting a header; `have` bytes of it are in `header`.
    Header { have: usize },
    /// A file's data.
    Data { remaining: u64, pad: u64 },
    /// The name of a GNU `L` member, the member whose name it is follows.
    LongName { remaining: u64, pad: u64 },
    /// The member's data is over: say so, then skip `pad`.
    EndOfMember { pad: u64 },
    /// Skipping bytes (padding to the block size).
    Skip { remaining: u64 },
    /// A zero block was seen: only zeros may follow.
    Trailer,
}

/// See the module documentation.
#[derive(Debug)]
pub struct TarStream {
    state: State,
    header: [u8; BLOCK],
    long_name: Option<Vec<u8>>,
    /// Bytes consumed so far, for error messages.
    offset: u64,
}

impl Default for TarStream {
    fn default() -> Self {
        Self::new()
    }
}

impl TarStream {
    pub fn new() -> Self {
        TarStream {
            state: State::Header { have: 0 },
            header: [0; BLOCK],
            long_name: None,
            offset: 0,
        }
    }

    /// The next event from `input`, advancing it past what was used; `Ok(None)` when all of
    /// `input` is used and more is needed. After an error the stream is unusable.
    pub fn next<'a>(&mut self, input: &mut &'a [u8]) -> Result<Option<TarEvent<'a>>, TarError> {
        loop {
            match self.state {
                State::Header { have } => {
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let n = (BLOCK - have).min(input.len());
                    self.header[have..have + n].copy_from_slice(&input[..n]);
                    self.advance(input, n);
                    if have + n < BLOCK {
                        self.state = State::Header { have: have + n };
                        continue;
                    }
                    if let Some(entry) = self.parse_header()? {
                        return Ok(Some(TarEvent::Entry(entry)));
                    }
                }
                State::Data { remaining, pad } => {
                    if remaining == 0 {
                        self.state = State::EndOfMember { pad };
                        continue;
                    }
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let n = remaining.min(input.len() as u64) as usize;
                    let data = &input[..n];
                    self.advance(input, n);
                    self.state = State::Data {
                        remaining: remaining - n as u64,
                        pad,
                    };
                    return Ok(Some(TarEvent::Data(data)));
                }
                State::LongName { remaining, pad } => {
                    if remaining == 0 {
                        self.state = State::Skip { remaining: pad };
                        continue;
                    }
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let n = remaining.min(input.len() as u64) as usize;
                    self.long_name
                        .get_or_insert_with(Vec::new)
                        .extend_from_slice(&input[..n]);
                    self.advance(input, n);
                    self.state = State::LongName {
                        remaining: remaining - n as u64,
                        pad,
                    };
                }
                State::EndOfMember { pad } => {
                    self.state = State::Skip { remaining: pad };
                    return Ok(Some(TarEvent::End));
                }
                State::Skip { remaining } => {
                    if remaining == 0 {
                        self.state = State::Header { have: 0 };
                        continue;
                    }
                    if input.is_empty() {
                        return Ok(None);
                    }
                    let n = remaining.min(input.len() as u64) as usize;
                    self.advance(input, n);
                    self.state = State::Skip {
                        remaining: remaining - n as u64,
                    };
                }
                State::Trailer => {
                    if let Some(at) = input.iter().position(|&b| b != 0) {
                        return Err(TarError::DataAfterEnd {
                            offset: self.offset + at as u64,
                        });
                    }
                    let n = input.len();
                    self.advance(input, n);
                    return Ok(None);
                }
            }
        }
    }

    /// The archive ended (the server moved on to the next one): that must be between two
    /// members.
    pub fn finish(&self) -> Result<(), TarError> {
        let what = match self.state {
            State::Header { have: 0 } | State::Trailer if self.long_name.is_none() => return Ok(()),
            State::Header { .. } | State::Trailer => "header",
            State::Data { .. } | State::EndOfMember { .. } => "file data",
            State::LongName { .. } => "long name",
            State::Skip { .. } => "padding",
        };
        Err(TarError::Truncated {
            offset: self.offset,
            what,
        })
    }

    fn advance(&mut self, input: &mut &[u8], n: usize) {
        *input = &input[n..];
        self.offset += n as u64;
    }

    /// Decode the complete header in `self.header`; `None` for a header that is not a
    /// member of its own (a GNU long name, a zero block).
    fn parse_header(&mut self) -> Result<Option<TarEntry>, TarError> {
        // A copy: the name is read from it while `self` changes.
        let h = self.header;
        let offset = self.offset - BLOCK as u64;
        self.state = State::Header { have: 0 };
        if h.iter().all(|&b| b == 0) {
            self.state = State::Trailer;
            return Ok(None);
        }
        let stored = octal(&h[148..156]).ok_or(TarError::BadField {
            offset,
            field: "checksum",
        })?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    b as u64
                }
            })
            .sum();
        if sum != stored {
            return Err(TarError::Checksum { offset });
        }
        let bad = |field| TarError::BadField { offset, field };
        let size = number(&h[124..136]).ok_or(bad("size"))?;
        let pad = padding(size);
        let typeflag = h[156];
        if typeflag == b'L' {
            if size > MAX_LONG_NAME {
                return Err(TarError::LongNameTooLong { offset, len: size });
            }
            self.long_name = Some(Vec::with_capacity(size as usize));
            self.state = State::LongName {
                remaining: size,
                pad,
            };
            return Ok(None);
        }
        let path = self.member_name(offset)?;
        let mode = (octal(&h[100..108]).ok_or(bad("mode"))? & 0o7777) as u32;
        // Some writers leave mtime empty; it is informational only.
        let mtime = number(&h[136..148]).unwrap_or(0);
        let kind = match typeflag {
            b'0' | b'\0' | b'7' => EntryKind::File { size },
            b'5' => EntryKind::Directory,
            b'2' => EntryKind::Symlink {
                target: String::from_utf8(cstr(&h[157..257]).to_vec())
                    .map_err(|_| TarError::NotUtf8 { offset })?,
            },
            other => {
                return Err(TarError::UnsupportedType {
                    name: path,
                    kind: other as char,
                })
            }
        };
        self.state = match kind {
            EntryKind::File { .. } => State::Data {
                remaining: size,
                pad,
            },
            // Data of a directory or link member means nothing: skip it.
            _ => State::EndOfMember {
                pad: size.saturating_add(pad),
            },
        };
        Ok(Some(TarEntry {
            path,
            kind,
            mode,
            mtime,
        }))
    }

    /// The member's name: a pending GNU long name, else the ustar prefix and name fields.
    fn member_name(&mut self, offset: u64) -> Result<String, TarError> {
        let h = &self.header;
        let raw = match self.long_name.take() {
            Some(long) => cstr(&long).to_vec(),
            None => {
                let name = cstr(&h[0..100]);
                let prefix = if &h[257..262] == b"ustar" {
                    cstr(&h[345..500])
                } else {
                    &[]
                };
                if prefix.is_empty() {
                    name.to_vec()
                } else {
                    [prefix, b"/", name].concat()
                }
            }
        };
        let name = String::from_utf8(raw).map_err(|_| TarError::NotUtf8 { offset })?;
        clean_relative(&name).ok_or(TarError::UnsafeName { name })
    }
}

/// `name` as a relative path without `.` components and trailing `/`, or `None` when it is
/// empty, absolute or climbs out with `..`.
pub fn clean_relative(name: &str) -> Option<String> {
    if name.starts_with('/') || name.contains('\0') {
        return None;
    }
    let parts: Vec<&str> = name
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.is_empty() || parts.contains(&"..") {
        return None;
    }
    Some(parts.join("/"))
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

/// The bytes of a NUL-terminated field.
fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    &field[..end]
}

/// An octal field: optional leading spaces, digits, then NUL or spaces.
fn octal(field: &[u8]) -> Option<u64> {
    let text = cstr(field);
    let digits = text.trim_ascii();
    if digits.is_empty() {
        return Some(0);
    }
    digits.iter().try_fold(0u64, |acc, &b| match b {
        b'0'..=b'7' => acc.checked_mul(8)?.checked_add((b - b'0') as u64),
        _ => None,
    })
}

/// A numeric field in octal or, when its top bit is set, base-256 (as tar.c
/// print_tar_number writes values that do not fit in octal).
fn number(field: &[u8]) -> Option<u64> {
    if field[0] & 0x80 == 0 {
        return octal(field);
    }
    if field[0] & 0x40 != 0 {
        return None; // negative
    }
    let mut value = (field[0] & 0x3f) as u64;
    for &b in &field[1..] {
        value = value.checked_mul(256)?.checked_add(b as u64)?;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ustar header as PostgreSQL's tar.c lays it out.
    fn header(name: &str, typeflag: u8, size: u64, link: &str, prefix: &str) -> Vec<u8> {
        let mut h = vec![0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        h[100..108].copy_from_slice(b"0000600\0");
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        if size < 8 << 30 {
            h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
        } else {
            h[124] = 0x80;
            h[128..136].copy_from_slice(&size.to_be_bytes());
        }
        h[136..148].copy_from_slice(b"14000000000\0");
        h[156] = typeflag;
        h[157..157 + link.len()].copy_from_slice(link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    b as u64
                }
            })
            .sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        h
    }

    fn file(name: &str, data: &[u8]) -> Vec<u8> {
        let mut out = header(name, b'0', data.len() as u64, "", "");
        out.extend_from_slice(data);
        out.resize(out.len() + padding(data.len() as u64) as usize, 0);
        out
    }

    /// Everything the stream yields for `bytes` fed in pieces of `piece` bytes: entries and
    /// each file's data joined.
    fn parse_in_pieces(bytes: &[u8], piece: usize) -> Result<Vec<(TarEntry, Vec<u8>)>, TarError> {
        let mut tar = TarStream::new();
        let mut out: Vec<(TarEntry, Vec<u8>)> = Vec::new();
        for chunk in bytes.chunks(piece.max(1)) {
            let mut input = chunk;
            while let Some(ev) = tar.next(&mut input)? {
                match ev {
                    TarEvent::Entry(e) => out.push((e, Vec::new())),
                    TarEvent::Data(d) => out.last_mut().unwrap().1.extend_from_slice(d),
                    TarEvent::End => {}
                }
            }
            assert!(input.is_empty());
        }
        tar.finish()?;
        Ok(out)
    }

    fn sample() -> Vec<u8> {
        let mut t = header("base/", b'5', 0, "", "");
        t.extend(file("base/1/1259", &vec![7u8; 8192 + 100]));
        t.extend(file("PG_VERSION", b"15\n"));
        t.extend(file("empty", b""));
        t.extend(header("pg_tblspc/16389", b'2', 0, "/srv/ts", ""));
        t.extend(header("name", b'0', 0, "", "a/long/prefix"));
        let long = format!("{}/f", "d".repeat(200));
        let mut l = header("././@LongLink", b'L', long.len() as u64 + 1, "", "");
        l.extend_from_slice(long.as_bytes());
        l.push(0);
        l.resize(l.len() + padding(long.len() as u64 + 1) as usize, 0);
        t.extend(l);
        t.extend(file("ignored-by-long-name", b"x"));
        t
    }

    #[test]
    fn splits_members_whatever_the_piece_size() {
        let bytes = sample();
        let whole = parse_in_pieces(&bytes, bytes.len()).unwrap();
        let names: Vec<&str> = whole.iter().map(|(e, _)| e.path.as_str()).collect();
        let long = format!("{}/f", "d".repeat(200));
        assert_eq!(
            names,
            [
                "base",
                "base/1/1259",
                "PG_VERSION",
                "empty",
                "pg_tblspc/16389",
                "a/long/prefix/name",
                long.as_str()
            ]
        );
        assert_eq!(whole[0].0.kind, EntryKind::Directory);
        assert_eq!(whole[1].1, vec![7u8; 8292]);
        assert_eq!(whole[1].0.mode, 0o600);
        assert_eq!(whole[2].1, b"15\n");
        assert_eq!(
            whole[4].0.kind,
            EntryKind::Symlink {
                target: "/srv/ts".into()
            }
        );
        assert_eq!(whole[6].1, b"x");
        for piece in [1, 7, 511, 512, 513, 4096] {
            assert_eq!(
                parse_in_pieces(&bytes, piece).unwrap(),
                whole,
                "piece {piece}"
            );
        }
    }

    #[test]
    fn a_trailer_of_zero_blocks_is_accepted_and_nothing_may_follow_it() {
        let mut bytes = file("a", b"1");
        bytes.extend([0u8; 1024]);
        assert_eq!(parse_in_pieces(&bytes, 100).unwrap().len(), 1);
        bytes.push(1);
        assert!(matches!(
            parse_in_pieces(&bytes, 100),
            Err(TarError::DataAfterEnd { offset: 2048 })
        ));
    }

    #[test]
    fn refuses_what_a_backup_never_holds() {
        let cut = file("a", b"12345");
        assert!(matches!(
            parse_in_pieces(&cut[..BLOCK + 2], 64),
            Err(TarError::Truncated {
                what: "file data",
                ..
            })
        ));
        assert!(matches!(
            parse_in_pieces(&cut[..100], 64),
            Err(TarError::Truncated { what: "header", .. })
        ));
        let mut bad = file("a", b"1");
        bad[0] = b'b';
        assert_eq!(
            parse_in_pieces(&bad, 512),
            Err(TarError::Checksum { offset: 0 })
        );
        for name in ["../etc/passwd", "/etc/passwd", "a/../../b", "."] {
            assert!(
                matches!(
                    parse_in_pieces(&file(name, b""), 512),
                    Err(TarError::UnsafeName { .. })
                ),
                "{name}"
            );
        }
        assert!(matches!(
            parse_in_pieces(&header("hard", b'1', 0, "a", ""), 512),
            Err(TarError::UnsupportedType { kind: '1', .. })
        ));
        assert!(matches!(
            parse_in_pieces(&header("@L", b'L', 1 << 20, "", ""), 512),
            Err(TarError::LongNameTooLong { .. })
        ));
    }

    #[test]
    fn sizes_beyond_octal_are_read_in_base_256() {
        let h = header("big", b'0', 9 << 30, "", "");
        let mut tar = TarStream::new();
        let mut input = &h[..];
        match tar.next(&mut input).unwrap() {
            Some(TarEvent::Entry(e)) => assert_eq!(e.kind, EntryKind::File { size: 9 << 30 }),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn clean_relative_paths() {
        assert_eq!(clean_relative("./base/1/").as_deref(), Some("base/1"));
        assert_eq!(clean_relative("a//b").as_deref(), Some("a/b"));
        assert_eq!(clean_relative(""), None);
    }

    /// Pseudo-random input (and random damage to a valid archive) never panics, never loops,
    /// and whatever comes out respects the size the header announced.
    #[test]
    fn random_input_is_an_error_or_a_consistent_split() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let valid = sample();
        for round in 0..2000 {
            let bytes: Vec<u8> = if round % 2 == 0 {
                let len = (rand() % 3000) as usize;
                (0..len).map(|_| rand() as u8).collect()
            } else {
                let mut v = valid.clone();
                for _ in 0..(rand() % 4 + 1) {
                    let i = (rand() as usize) % v.len();
                    v[i] = rand() as u8;
                }
                v.truncate((rand() as usize) % (v.len() + 1));
                v
            };
            let piece = (rand() % 700) as usize + 1;
            if let Ok(members) = parse_in_pieces(&bytes, piece) {
                for (e, data) in members {
                    match e.kind {
                        EntryKind::File { size } => assert_eq!(size, data.len() as u64),
                        _ => assert!(data.is_empty()),
                    }
                    assert!(clean_relative(&e.path).as_deref() == Some(e.path.as_str()));
                }
            }
        }
    }
}
