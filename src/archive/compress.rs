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

/// Accepts pg_receivewal's spellings: `none`, `gzip`, `gzip:5`, `gzip:level=5`, a bare
/// level `0`-`9` (gzip, 0 meaning none), `lz4`, `zstd`, `zstd:19`.
impl FromStr for CompressionSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(level) = s.parse::<u32>() {
            return match level {
                0 => Ok(CompressionSpec::None),
                1..=9 => Ok(CompressionSpec::Gzip(level)),
                _ => Err(format!(
                    "compression level {level} is out of range (0-9 for gzip)"
                )),
            };
        }
        let (method, detail) = match s.split_once(':') {
            Some((m, d)) => (m, Some(d.strip_prefix("level=").unwrap_or(d))),
            None => (s, None),
        };
        let level = |range: std::ops::RangeInclusive<i64>, default: i64| -> Result<i64, String> {
            match detail {
                None => Ok(default),
                Some(d) => {
                    let l: i64 = d
                        .parse()
                        .map_err(|_| format!("invalid compression level {d:?} for {method}"))?;
                    if range.contains(&l) {
                        Ok(l)
                    } else {
                        Err(format!(
                            "compression level {l} is out of range for {method} ({}-{})",
                            range.start(),
                            range.end()
                        ))
                    }
                }
            }
        };
        match method.to_ascii_lowercase().as_str() {
            "none" => Ok(CompressionSpec::None),
            "gzip" => Ok(CompressionSpec::Gzip(level(1..=9, 6)? as u32)),
            "lz4" => {
                level(0..=12, 0)?;
                Ok(CompressionSpec::Lz4)
            }
            "zstd" => Ok(CompressionSpec::Zstd(level(1..=22, 3)? as i32)),
            other => Err(format!(
                "unknown compression method {other:?}; use none, gzip[:LEVEL], lz4 or zstd[:LEVEL]"
            )),
        }
    }
}

/// Reads the uncompressed bytes of a segment file, whatever its compression.
pub enum SegmentReader {
    Plain(BufReader<File>),
    Gzip(Box<flate2::read::MultiGzDecoder<BufReader<File>>>),
    Lz4(Box<lz4_flex::frame::FrameDecoder<BufReader<File>>>),
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
            Compression::Lz4 => {
                SegmentReader::Lz4(Box::new(lz4_flex::frame::FrameDecoder::new(file)))
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pg_receivewal_spellings() {
        let cases = [
            ("none", CompressionSpec::None),
            ("0", CompressionSpec::None),
            ("5", CompressionSpec::Gzip(5)),
            ("gzip", CompressionSpec::Gzip(6)),
            ("gzip:9", CompressionSpec::Gzip(9)),
            ("gzip:level=1", CompressionSpec::Gzip(1)),
            ("lz4", CompressionSpec::Lz4),
            ("zstd", CompressionSpec::Zstd(3)),
            ("zstd:19", CompressionSpec::Zstd(19)),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<CompressionSpec>().unwrap(), want, "{text}");
        }
        for bad in ["gzip:10", "bzip2", "zstd:abc", "12"] {
            assert!(bad.parse::<CompressionSpec>().is_err(), "{bad}");
        }
    }
}
