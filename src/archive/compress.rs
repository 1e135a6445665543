//! Segment compression, in the formats pg_receivewal reads and writes: gzip members
//! (`.gz`), LZ4 frames (`.lz4`); plus zstd frames (`.zst`), which PostgreSQL 15's
//! pg_receivewal cannot write and ignores.

use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;
use std::str::FromStr;

use crate::wal::Compression;

/// A compression method with its level, as `-Z/--compress` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum CompressionSpec {
    #[default]
    None,
    Gzip(u32),
    Lz4,
    Zstd(i32),
}

impl CompressionSpec {
    pub fn kind(self) -> Compression {
        match self {
            CompressionSpec::None => Compression::None,
            CompressionSpec::Gzip(_) => Compression::Gzip,
            CompressionSpec::Lz4 => Compression::Lz4,
            CompressionSpec::Zstd(_) => Compression::Zstd,
        }
    }
}

impl fmt::Display for CompressionSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CompressionSpec::None => f.write_str("none"),
            CompressionSpec::Gzip(l) => write!(f, "gzip:{l}"),
            CompressionSpec::Lz4 => f.write_str("lz4"),
            CompressionSpec::Zstd(l) => write!(f, "zstd:{l}"),
        }
    }
}

/// Parses `-Z/--compress` exactly as PostgreSQL 15's pg_receivewal does (its `-Z` handling,
/// then src/common/compression.c), refusing what it refuses in its words: a bare integer is
/// a gzip level (0 meaning none), else `METHOD[:DETAIL]` with DETAIL a bare level or a
/// comma-separated list of `level=N` / `workers=N`. walferry departs from it twice: zstd is
/// written (pg_receivewal 15 refuses it after checking the specification), with a worker
/// count of 0 only; and an lz4 level is checked but written in LZ4's fast mode.
impl FromStr for CompressionSpec {
    type Err = CompressSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (method, detail) = split_method_detail(s);
        let algorithm = algorithm_by_name(method)
            .ok_or_else(|| CompressSpecError::UnknownAlgorithm(method.to_string()))?;
        let spec = parse_specification(algorithm, detail)
            .and_then(|spec| validate(&spec).map(|()| spec))
            .map_err(CompressSpecError::Invalid)?;
        Ok(match algorithm {
            Compression::None => CompressionSpec::None,
            // -1 is Z_DEFAULT_COMPRESSION, which zlib takes as level 6.
            Compression::Gzip => CompressionSpec::Gzip(u32::try_from(spec.level).unwrap_or(6)),
            Compression::Lz4 => CompressionSpec::Lz4,
            Compression::Zstd => match spec.workers {
                Some(workers) if workers != 0 => {
                    return Err(CompressSpecError::ZstdWorkers(workers))
                }
                _ => CompressionSpec::Zstd(spec.level),
            },
        })
    }
}

/// Why a `-Z/--compress` value is refused. The texts are pg_receivewal 15's, except for
/// [`CompressSpecError::ZstdWorkers`], which pg_receivewal never reaches.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompressSpecError {
    #[error("unrecognized compression algorithm: \"{0}\"")]
    UnknownAlgorithm(String),
    /// The detail is compression.c's message.
    #[error("invalid compression specification: {0}")]
    Invalid(String),
    #[error(
        "invalid compression specification: walferry compresses zstd on one thread, so \
         compression option \"workers\" must be 0, not {0}"
    )]
    ZstdWorkers(i32),
}

/// What a specification says, as compression.c's pg_compress_specification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PgSpec {
    algorithm: Compression,
    level: i32,
    /// `workers=N`, when given (PG_COMPRESSION_OPTION_WORKERS).
    workers: Option<i32>,
}

/// As pg_receivewal 15's parse_compress_options: a whole-string integer (C `strtol`, so
/// leading blanks and a sign are allowed, and "" counts as 0) means gzip with that level,
/// or none for 0; otherwise the method runs up to the first colon and the detail after it.
fn split_method_detail(option: &str) -> (&str, Option<&str>) {
    let bare = match strtol(option) {
        Some((value, "")) => Some(value),
        Some(_) => None,
        None => option.is_empty().then_some(0),
    };
    match bare {
        Some(0) => ("none", None),
        Some(_) => ("gzip", Some(option)),
        None => match option.split_once(':') {
            Some((method, detail)) => (method, Some(detail)),
            None => (option, None),
        },
    }
}

/// As compression.c parse_compress_algorithm: exact, case-sensitive names.
fn algorithm_by_name(name: &str) -> Option<Compression> {
    [
        Compression::None,
        Compression::Gzip,
        Compression::Lz4,
        Compression::Zstd,
    ]
    .into_iter()
    .find(|c| c.name() == name)
}

/// As compression.c parse_compress_specification: the algorithm's default level, then the
/// detail, a bare integer level or `keyword[=value]` items separated by commas. The first
/// problem stops it; levels and counts are C `int`s (a longer number wraps as in C).
fn parse_specification(algorithm: Compression, detail: Option<&str>) -> Result<PgSpec, String> {
    let mut spec = PgSpec {
        algorithm,
        level: default_level(algorithm),
        workers: None,
    };
    let Some(detail) = detail else {
        return Ok(spec);
    };
    if let Some((level, "")) = strtol(detail) {
        spec.level = level as i32;
        return Ok(spec);
    }
    let mut rest = detail;
    loop {
        let keyword_end = rest.find([',', '=']).unwrap_or(rest.len());
        let keyword = &rest[..keyword_end];
        // A value runs from the '=' to the next comma; it may hold further '='s.
        let (value, after) = match rest[keyword_end..].strip_prefix('=') {
            Some(v) => {
                let value_end = v.find(',').unwrap_or(v.len());
                (Some(&v[..value_end]), &v[value_end..])
            }
            None => (None, &rest[keyword_end..]),
        };
        if keyword.is_empty() {
            return Err("found empty string where a compression option was expected".into());
        }
        match keyword {
            "level" => spec.level = integer_value(keyword, value)?,
            "workers" => spec.workers = Some(integer_value(keyword, value)?),
            _ => return Err(format!("unrecognized compression option: \"{keyword}\"")),
        }
        match after.strip_prefix(',') {
            Some(next) => rest = next,
            None => return Ok(spec),
        }
    }
}

/// As compression.c expect_integer_value.
fn integer_value(keyword: &str, value: Option<&str>) -> Result<i32, String> {
    let value =
        value.ok_or_else(|| format!("compression option \"{keyword}\" requires a value"))?;
    match strtol(value) {
        Some((v, "")) => Ok(v as i32),
        _ => Err(format!(
            "value for compression option \"{keyword}\" must be an integer"
        )),
    }
}

/// The level an algorithm gets without one: zlib's Z_DEFAULT_COMPRESSION, LZ4's fast mode,
/// ZSTD_CLEVEL_DEFAULT.
fn default_level(algorithm: Compression) -> i32 {
    match algorithm {
        Compression::None | Compression::Lz4 => 0,
        Compression::Gzip => -1,
        Compression::Zstd => zstd::DEFAULT_COMPRESSION_LEVEL,
    }
}

/// As compression.c validate_compress_specification (PostgreSQL 15: no "long" option).
/// The zstd range is the linked library's, as PostgreSQL asks ZSTD_minCLevel/maxCLevel.
fn validate(spec: &PgSpec) -> Result<(), String> {
    let name = spec.algorithm.name();
    let (min, max) = match spec.algorithm {
        Compression::Gzip => (1, 9),
        Compression::Lz4 => (1, 12),
        Compression::Zstd => {
            let range = zstd::compression_level_range();
            (*range.start(), *range.end())
        }
        Compression::None => {
            if spec.level != 0 {
                return Err(format!(
                    "compression algorithm \"{name}\" does not accept a compression level"
                ));
            }
            (1, 1)
        }
    };
    let default = default_level(spec.algorithm);
    if !(min..=max).contains(&spec.level) && spec.level != default {
        return Err(format!(
            "compression algorithm \"{name}\" expects a compression level between {min} and {max} (default at {default})"
        ));
    }
    if spec.workers.is_some() && spec.algorithm != Compression::Zstd {
        return Err(format!(
            "compression algorithm \"{name}\" does not accept a worker count"
        ));
    }
    Ok(())
}

/// C `strtol(s, &end, 10)`: skips leading white space, takes an optional sign and the
/// digits after it, saturating at the `long` range. Returns the value and the unparsed
/// rest, or `None` when there are no digits (C leaves `end == s`).
fn strtol(s: &str) -> Option<(i64, &str)> {
    let unsigned = s.trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    let (negative, digits) = match unsigned.as_bytes().first() {
        Some(b'-') => (true, &unsigned[1..]),
        Some(b'+') => (false, &unsigned[1..]),
        _ => (false, unsigned),
    };
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let magnitude = digits[..end].bytes().fold(0i128, |acc, d| {
        (acc * 10 + i128::from(d - b'0')).min(1 << 64)
    });
    let value = if negative { -magnitude } else { magnitude };
    let value = value.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
    Some((value, &digits[end..]))
}

/// How many bytes a segment file holds once decompressed, counted by decompressing it to
/// the end (in bounded memory). A file cut short inside a block or frame is an error.
///
/// A frame header's content size (which LZ4 and zstd frames may carry; neither walferry's
/// writers nor pg_receivewal's set it) is not taken as the answer: it is written before the
/// data, so it cannot tell a complete file from a truncated one.
pub fn uncompressed_len(path: &Path, compression: Compression) -> io::Result<u64> {
    match compression {
        Compression::None => Ok(std::fs::metadata(path)?.len()),
        _ => io::copy(
            &mut SegmentReader::open(path, compression)?,
            &mut io::sink(),
        ),
    }
}

/// Reads the uncompressed bytes of a segment file, whatever its compression.
pub enum SegmentReader {
    Plain(BufReader<File>),
    Gzip(Box<flate2::read::MultiGzDecoder<BufReader<File>>>),
    Lz4(Box<Lz4Reader<BufReader<File>>>),
    Zstd(Box<zstd::stream::read::Decoder<'static, BufReader<File>>>),
}

impl SegmentReader {
    pub fn open(path: &Path, compression: Compression) -> io::Result<Self> {
        let file = BufReader::with_capacity(256 * 1024, File::open(path)?);
        Ok(match compression {
            Compression::None => SegmentReader::Plain(file),
            Compression::Gzip => {
                SegmentReader::Gzip(Box::new(flate2::read::MultiGzDecoder::new(file)))
            }
            Compression::Lz4 => SegmentReader::Lz4(Box::new(Lz4Reader::new(file)?)),
            Compression::Zstd => {
                SegmentReader::Zstd(Box::new(zstd::stream::read::Decoder::with_buffer(file)?))
            }
        })
    }

    /// The whole uncompressed contents.
    pub fn read_all(path: &Path, compression: Compression) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(16 << 20);
        SegmentReader::open(path, compression)?.read_to_end(&mut out)?;
        Ok(out)
    }
}

/// The uncompressed bytes of `raw` (a stored file read from anywhere: a local file, an
/// object streamed from a store), buffered as [`SegmentReader`] buffers a file.
pub fn decompressing<'a>(
    raw: Box<dyn Read + Send + 'a>,
    compression: Compression,
) -> io::Result<Box<dyn Read + Send + 'a>> {
    let raw = BufReader::with_capacity(256 * 1024, raw);
    Ok(match compression {
        Compression::None => Box::new(raw),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Compression::Lz4 => Box::new(Lz4Reader::new(raw)?),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw)?),
    })
}

impl Read for SegmentReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            SegmentReader::Plain(r) => r.read(buf),
            SegmentReader::Gzip(r) => r.read(buf),
            SegmentReader::Lz4(r) => r.read(buf),
            SegmentReader::Zstd(r) => r.read(buf),
        }
    }
}

/// Reads LZ4 frames (one after another, as `lz4 -d` does) with the reference C library's
/// frame decoder. lz4_flex, which writes walferry's frames, decodes overlapping matches a
/// byte at a time: a WAL segment's zero-filled tail or a relation's blank-padded columns
/// decompressed at a fraction of the C library's speed (archive checks and restores spent
/// most of their time there). As with lz4_flex, the input may end between blocks (a growing
/// `.partial` segment does); ending inside a frame header or a block is an error, never an
/// early end.
pub struct Lz4Reader<R> {
    inner: R,
    ctx: lz4_sys::LZ4FDecompressionContext,
    src: Box<[u8]>,
    pos: usize,
    len: usize,
    /// The decoder's last hint of the input it expects next: 0 when a frame is whole
    /// (and before the first).
    hint: usize,
}

/// The size of an LZ4 block header, which the frame decoder asks for between blocks.
const LZ4_BLOCK_HEADER: usize = 4;

impl<R: Read> Lz4Reader<R> {
    pub fn new(inner: R) -> io::Result<Self> {
        let mut ctx = lz4_sys::LZ4FDecompressionContext(std::ptr::null_mut());
        // SAFETY: creates a context into `ctx`, which Drop frees; no other memory is passed.
        let code =
            unsafe { lz4_sys::LZ4F_createDecompressionContext(&mut ctx, lz4_sys::LZ4F_VERSION) };
        lz4_check(code)?;
        Ok(Lz4Reader {
            inner,
            ctx,
            src: vec![0; 64 << 10].into_boxed_slice(),
            pos: 0,
            len: 0,
            hint: 0,
        })
    }
}

fn lz4_check(code: usize) -> io::Result<usize> {
    // SAFETY: LZ4F_isError and LZ4F_getErrorName only look at the code; the name is a
    // static C string.
    unsafe {
        if lz4_sys::LZ4F_isError(code) != 0 {
            let name = std::ffi::CStr::from_ptr(lz4_sys::LZ4F_getErrorName(code));
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("lz4: {}", name.to_string_lossy()),
            ));
        }
    }
    Ok(code)
}

impl<R: Read> Read for Lz4Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let mut eof = false;
            if self.pos == self.len {
                self.len = self.inner.read(&mut self.src)?;
                self.pos = 0;
                eof = self.len == 0;
            }
            let mut dst_size = buf.len();
            let mut src_size = self.len - self.pos;
            // SAFETY: the decoder writes at most `dst_size` bytes into `buf` and reads at most
            // `src_size` bytes of `src` from `pos`, both within their slices; `ctx` is ours.
            let hint = lz4_check(unsafe {
                lz4_sys::LZ4F_decompress(
                    self.ctx,
                    buf.as_mut_ptr(),
                    &mut dst_size,
                    self.src[self.pos..].as_ptr(),
                    &mut src_size,
                    std::ptr::null(),
                )
            })?;
            self.pos += src_size;
            // Called with no input at the end, it hands out what it still holds.
            if dst_size > 0 {
                self.hint = hint;
                return Ok(dst_size);
            }
            if !eof {
                self.hint = hint;
                continue;
            }
            // The end: clean between frames (0), after a frame's header or between its
            // blocks (a block header is what the decoder waits for), as lz4_flex took it —
            // a growing .partial segment ends so. Inside a header or a block it is cut short.
            return if self.hint == 0 || self.hint == LZ4_BLOCK_HEADER {
                Ok(0)
            } else {
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "lz4: the file ends inside a frame",
                ))
            };
        }
    }
}

impl<R> Drop for Lz4Reader<R> {
    fn drop(&mut self) {
        // SAFETY: the context was created in `new` and is freed once, here.
        unsafe {
            lz4_sys::LZ4F_freeDecompressionContext(self.ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn parse(text: &str) -> Result<CompressionSpec, String> {
        text.parse::<CompressionSpec>().map_err(|e| e.to_string())
    }

    #[test]
    fn parses_pg_receivewal_spellings() {
        let cases = [
            ("none", CompressionSpec::None),
            ("none:0", CompressionSpec::None),
            ("none:level=0", CompressionSpec::None),
            ("0", CompressionSpec::None),
            ("00", CompressionSpec::None),
            ("", CompressionSpec::None),
            ("5", CompressionSpec::Gzip(5)),
            (" 5", CompressionSpec::Gzip(5)),
            ("+5", CompressionSpec::Gzip(5)),
            ("-1", CompressionSpec::Gzip(6)),
            ("gzip", CompressionSpec::Gzip(6)),
            ("gzip:9", CompressionSpec::Gzip(9)),
            ("gzip:-1", CompressionSpec::Gzip(6)),
            ("gzip: 5", CompressionSpec::Gzip(5)),
            ("gzip:level=1", CompressionSpec::Gzip(1)),
            ("gzip:level= 5", CompressionSpec::Gzip(5)),
            ("gzip:level=5,level=6", CompressionSpec::Gzip(6)),
            // C int truncation: 2^32 + 5 is level 5.
            ("4294967301", CompressionSpec::Gzip(5)),
            ("lz4", CompressionSpec::Lz4),
            ("lz4:0", CompressionSpec::Lz4),
            ("lz4:12", CompressionSpec::Lz4),
            ("lz4:level=3", CompressionSpec::Lz4),
            ("zstd", CompressionSpec::Zstd(3)),
            ("zstd:19", CompressionSpec::Zstd(19)),
            ("zstd:0", CompressionSpec::Zstd(0)),
            ("zstd:-131072", CompressionSpec::Zstd(-131072)),
            ("zstd:level=22,workers=0", CompressionSpec::Zstd(22)),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Ok(want), "{text:?}");
        }
    }

    #[test]
    fn refuses_what_pg_receivewal_refuses_in_its_words() {
        let spec = |detail: &str| format!("invalid compression specification: {detail}");
        let gzip_range =
            spec("compression algorithm \"gzip\" expects a compression level between 1 and 9 (default at -1)");
        let lz4_range =
            spec("compression algorithm \"lz4\" expects a compression level between 1 and 12 (default at 0)");
        let empty = spec("found empty string where a compression option was expected");
        let cases = [
            ("none:1", spec("compression algorithm \"none\" does not accept a compression level")),
            ("none:", empty.clone()),
            ("none:workers=1", spec("compression algorithm \"none\" does not accept a worker count")),
            ("10", gzip_range.clone()),
            ("-2", gzip_range.clone()),
            ("99999999999", gzip_range.clone()),
            ("gzip:0", gzip_range.clone()),
            ("gzip:10", gzip_range.clone()),
            ("gzip:", empty.clone()),
            ("gzip:level=5,", empty.clone()),
            ("gzip:,level=5", empty.clone()),
            ("gzip:level", spec("compression option \"level\" requires a value")),
            ("gzip:level=", spec("value for compression option \"level\" must be an integer")),
            ("gzip:level=5x", spec("value for compression option \"level\" must be an integer")),
            ("gzip:level=5=6", spec("value for compression option \"level\" must be an integer")),
            ("gzip:workers=2", spec("compression algorithm \"gzip\" does not accept a worker count")),
            ("gzip:workers=x", spec("value for compression option \"workers\" must be an integer")),
            ("gzip:5x", spec("unrecognized compression option: \"5x\"")),
            ("gzip:5:6", spec("unrecognized compression option: \"5:6\"")),
            ("gzip:long", spec("unrecognized compression option: \"long\"")),
            ("lz4::", spec("unrecognized compression option: \":\"")),
            ("lz4:13", lz4_range.clone()),
            ("lz4:-1", lz4_range),
            ("lz4:workers=1", spec("compression algorithm \"lz4\" does not accept a worker count")),
            ("zstd:23", spec("compression algorithm \"zstd\" expects a compression level between -131072 and 22 (default at 3)")),
            ("zstd:-131073", spec("compression algorithm \"zstd\" expects a compression level between -131072 and 22 (default at 3)")),
            ("zstd:long", spec("unrecognized compression option: \"long\"")),
            ("GZIP", "unrecognized compression algorithm: \"GZIP\"".into()),
            (" gzip", "unrecognized compression algorithm: \" gzip\"".into()),
            ("5 ", "unrecognized compression algorithm: \"5 \"".into()),
            (":5", "unrecognized compression algorithm: \"\"".into()),
            ("bzip2", "unrecognized compression algorithm: \"bzip2\"".into()),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text), Err(want), "{text:?}");
        }
    }

    #[test]
    fn zstd_workers_other_than_zero_are_refused() {
        assert_eq!(
            "zstd:workers=2".parse::<CompressionSpec>(),
            Err(CompressSpecError::ZstdWorkers(2))
        );
        assert_eq!(parse("zstd:workers=0"), Ok(CompressionSpec::Zstd(3)));
    }

    #[test]
    fn strtol_follows_c() {
        assert_eq!(strtol(" \t-12ab"), Some((-12, "ab")));
        assert_eq!(strtol("+7"), Some((7, "")));
        assert_eq!(strtol("99999999999999999999"), Some((i64::MAX, "")));
        assert_eq!(strtol("-99999999999999999999"), Some((i64::MIN, "")));
        for none in ["", " ", "-", "+ 1", "x1"] {
            assert_eq!(strtol(none), None, "{none:?}");
        }
    }

    /// A segment-like payload: compressible, but not trivially.
    fn payload(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i * 7 % 251) as u8 ^ (i >> 12) as u8)
            .collect()
    }

    fn compressed(compression: Compression, data: &[u8], content_size: bool) -> Vec<u8> {
        match compression {
            Compression::Lz4 => {
                let mut info = lz4_flex::frame::FrameInfo::new();
                if content_size {
                    info = info.content_size(Some(data.len() as u64));
                }
                let mut e = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
                if content_size {
                    e.set_pledged_src_size(Some(data.len() as u64)).unwrap();
                }
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::None => data.to_vec(),
        }
    }

    fn len_of(dir: &Path, compression: Compression, bytes: &[u8]) -> io::Result<u64> {
        let path = dir.join(format!("000000010000000000000001{}", compression.suffix()));
        std::fs::write(&path, bytes).unwrap();
        uncompressed_len(&path, compression)
    }

    /// Frames one after another, linked and independent blocks, blocks stored
    /// uncompressed, an empty frame, and frames cut short (an error, never an early end).
    #[test]
    fn lz4_frames_decode_with_the_c_library() {
        let data = payload(3 << 20);
        let zeros = vec![0u8; 1 << 20];
        let noise: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let mut all = Vec::new();
        let mut stream = Vec::new();
        for (part, mode) in [
            (&data[..], lz4_flex::frame::BlockMode::Linked),
            (&zeros[..], lz4_flex::frame::BlockMode::Independent),
            (&[][..], lz4_flex::frame::BlockMode::Independent),
            (&noise[..], lz4_flex::frame::BlockMode::Linked),
        ] {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_mode(mode)
                .content_checksum(true);
            let mut e = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
            e.write_all(part).unwrap();
            let frame = e.finish().unwrap();
            let mut out = Vec::new();
            Lz4Reader::new(&frame[..])
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, part);
            stream.extend_from_slice(&frame);
            all.extend_from_slice(part);
        }
        let mut out = Vec::new();
        Lz4Reader::new(&stream[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, all);
        for keep in [1, 5, 100, stream.len() / 2, stream.len() - 1] {
            let mut out = Vec::new();
            let got = Lz4Reader::new(&stream[..keep])
                .unwrap()
                .read_to_end(&mut out);
            assert!(got.is_err(), "{keep} of {} bytes", stream.len());
        }
        let mut damaged = stream.clone();
        damaged[4] ^= 0x40; // the frame descriptor's version bits
        let mut out = Vec::new();
        assert!(Lz4Reader::new(&damaged[..])
            .unwrap()
            .read_to_end(&mut out)
            .is_err());
        let mut out = Vec::new();
        assert_eq!(
            Lz4Reader::new(&[][..])
                .unwrap()
                .read_to_end(&mut out)
                .unwrap(),
            0
        );
    }

    #[test]
    fn uncompressed_len_counts_what_decompresses() {
        const LEN: usize = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let data = payload(LEN);
        for compression in [Compression::Lz4, Compression::Zstd, Compression::Gzip] {
            for content_size in [false, true] {
                let whole = compressed(compression, &data, content_size);
                let what = format!("{compression:?}, content size {content_size}");
                assert_eq!(
                    len_of(dir.path(), compression, &whole).unwrap(),
                    LEN as u64,
                    "{what}"
                );

                let short = compressed(compression, &data[..LEN - 1], content_size);
                assert_eq!(
                    len_of(dir.path(), compression, &short).unwrap(),
                    LEN as u64 - 1,
                    "{what}"
                );

                // Cut inside the data: whether the decoder reports the cut or just stops
                // early, the count must not come out as the full length, even when the
                // header announced it.
                for keep in [whole.len() / 2, whole.len() - 9, 20] {
                    let got = len_of(dir.path(), compression, &whole[..keep]);
                    assert!(
                        !matches!(got, Ok(n) if n == LEN as u64),
                        "{what}, {keep} of {} bytes: {got:?}",
                        whole.len()
                    );
                }
            }
        }
    }

    /// Regression: the scan took any non-empty .lz4/.zst file for a complete segment, so a
    /// cut-short one moved the streaming start past WAL that was never archived.
    #[test]
    fn scan_ignores_lz4_and_zstd_segments_that_are_not_a_whole_segment() {
        const SEG: u64 = 16 << 20;
        let dir = tempfile::tempdir().unwrap();
        let data = payload(SEG as usize);
        let put = |name: &str, bytes: &[u8]| std::fs::write(dir.path().join(name), bytes).unwrap();
        put(
            "000000010000000000000001.lz4",
            &compressed(Compression::Lz4, &data, false),
        );
        put(
            "000000010000000000000002.zst",
            &compressed(Compression::Zstd, &data, false),
        );
        let short = &data[..SEG as usize - 1];
        put(
            "000000010000000000000003.lz4",
            &compressed(Compression::Lz4, short, false),
        );
        let whole = compressed(Compression::Zstd, &data, true);
        put("000000010000000000000003.zst", &whole[..whole.len() / 2]);

        let scan = crate::archive::ArchiveScan::read(dir.path(), SEG).unwrap();
        let names: Vec<&str> = scan.segments.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "000000010000000000000001.lz4",
                "000000010000000000000002.zst"
            ]
        );
        assert_eq!(
            scan.streaming_start(SEG),
            Some((crate::wal::Lsn(3 * SEG), crate::wal::TimeLineId(1)))
        );
    }
}
