//! PostgreSQL's backup manifest: reading the parts walferry relies on (each file's path,
//! size and CRC-32C; BASE_BACKUP is asked for `MANIFEST_CHECKSUMS 'CRC32C'`), and writing
//! one for a backup that read the data directory itself (`backup --pgdata`), in the format
//! `pg_verifybackup` reads. The manifest is kept verbatim beside the backup; the reading
//! serves two checks: the backup checks every file it stored against it, and a delta
//! restore keeps a file already in place only when its size and checksum match it.

use std::collections::HashMap;

use serde::Deserialize;

use crate::wal::{Lsn, TimeLineId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the backup manifest is not valid JSON: {0}")]
    Json(String),
    #[error("the backup manifest has version {0}; walferry reads version 1 and 2")]
    Version(u64),
    #[error("the backup manifest entry {0:?} has an invalid path")]
    BadPath(String),
    #[error("the backup manifest entry \"{path}\" has an invalid checksum {checksum:?}")]
    BadChecksum { path: String, checksum: String },
}

/// One file of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    pub size: u64,
    /// `None` when the manifest carries no CRC-32C for it (another checksum algorithm).
    pub crc32c: Option<u32>,
}

/// The files of a manifest, by path relative to the data directory (tablespace files
/// under `pg_tblspc/<oid>/`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub files: HashMap<String, ManifestFile>,
}

#[derive(Deserialize)]
struct RawManifest {
    #[serde(rename = "PostgreSQL-Backup-Manifest-Version")]
    version: u64,
    #[serde(rename = "Files")]
    files: Vec<RawFile>,
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(rename = "Path")]
    path: Option<String>,
    /// Hex of the path's bytes, for names that are not UTF-8.
    #[serde(rename = "Encoded-Path")]
    encoded_path: Option<String>,
    #[serde(rename = "Size")]
    size: u64,
    #[serde(rename = "Checksum-Algorithm")]
    algorithm: Option<String>,
    #[serde(rename = "Checksum")]
    checksum: Option<String>,
}

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let raw: RawManifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        if !(1..=2).contains(&raw.version) {
            return Err(ManifestError::Version(raw.version));
        }
        let mut files = HashMap::with_capacity(raw.files.len());
        for f in raw.files {
            let path = match (f.path, f.encoded_path) {
                (Some(p), _) => p,
                (None, Some(hex)) => {
                    // walferry stores paths as UTF-8; a name that is not cannot be one of ours.
                    let bytes =
                        decode_hex(&hex).ok_or_else(|| ManifestError::BadPath(hex.clone()))?;
                    String::from_utf8(bytes).map_err(|_| ManifestError::BadPath(hex))?
                }
                (None, None) => return Err(ManifestError::BadPath(String::new())),
            };
            let crc32c = match (f.algorithm.as_deref(), f.checksum) {
                (Some("CRC32C"), Some(hex)) => {
                    Some(
                        parse_crc32c(&hex).ok_or_else(|| ManifestError::BadChecksum {
                            path: path.clone(),
                            checksum: hex,
                        })?,
                    )
                }
                _ => None,
            };
            files.insert(
                path,
                ManifestFile {
                    size: f.size,
                    crc32c,
                },
            );
        }
        Ok(Manifest { files })
    }
}

/// PostgreSQL writes a CRC-32C checksum as the hex of the value's bytes in memory order
/// (checksum_helper.c pg_checksum_final copies the `pg_crc32c`): little-endian here.
pub fn parse_crc32c(hex: &str) -> Option<u32> {
    let bytes: [u8; 4] = decode_hex(hex)?.try_into().ok()?;
    Some(u32::from_le_bytes(bytes))
}

/// The manifest spelling of a CRC-32C value (see [`parse_crc32c`]).
pub fn format_crc32c(crc: u32) -> String {
    crc.to_le_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A file for [`write_manifest`]: its path relative to the data directory (tablespace
/// files under `pg_tblspc/<oid>/`), as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    pub path: String,
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    pub crc32c: u32,
}

/// A backup manifest of version 1 as backup_manifest.c writes one: a file per line, then
/// the WAL range, then `Manifest-Checksum`, the SHA-256 of every byte before that line
/// (pg_verifybackup recomputes it over the text up to the newline ending the line before
/// it, so the layout of the last two lines is fixed; the rest is ordinary JSON).
pub fn write_manifest(
    files: &[WrittenFile],
    timeline: TimeLineId,
    start_lsn: Lsn,
    end_lsn: Lsn,
) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    use std::fmt::Write;

    let mut text = String::from("{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [");
    for (i, f) in files.iter().enumerate() {
        text.push_str(if i == 0 { "\n" } else { ",\n" });
        text.push_str("{ \"Path\": ");
        json_string(&f.path, &mut text);
        let (y, mo, d, h, mi, s) = crate::inspect::time::utc_parts(f.mtime);
        let _ = write!(
            text,
            ", \"Size\": {}, \"Last-Modified\": \"{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} GMT\", \
             \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"{}\" }}",
            f.size,
            format_crc32c(f.crc32c)
        );
    }
    let _ = write!(
        text,
        "\n],\n\"WAL-Ranges\": [\n{{ \"Timeline\": {}, \"Start-LSN\": \"{start_lsn}\", \
         \"End-LSN\": \"{end_lsn}\" }}\n],\n",
        timeline.0
    );
    let digest = Sha256::digest(text.as_bytes());
    text.push_str("\"Manifest-Checksum\": \"");
    for b in digest.iter() {
        let _ = write!(text, "{b:02x}");
    }
    text.push_str("\"}\n");
    text.into_bytes()
}

/// `s` as a JSON string, escaped as PostgreSQL's escape_json does: the two-character
/// escapes, `\u00XX` for other control characters, everything else as it is.
fn json_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_paths_sizes_and_crc32c() {
        let text = br#"{ "PostgreSQL-Backup-Manifest-Version": 1,
"Files": [
{ "Path": "backup_label", "Size": 225, "Last-Modified": "2026-11-27 19:53:00 GMT", "Checksum-Algorithm": "CRC32C", "Checksum": "f6a1c1d8" },
{ "Encoded-Path": "6261736500", "Size": 0, "Last-Modified": "2026-11-27 19:53:00 GMT" },
{ "Path": "pg_tblspc/16389/PG_15_202209061/5/16390", "Size": 8192, "Last-Modified": "2026-11-27 19:53:00 GMT", "Checksum-Algorithm": "SHA256", "Checksum": "00" }
],
"WAL-Ranges": [
{ "Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100" }
],
"Manifest-Checksum": "00"}
"#;
        let m = Manifest::parse(text).unwrap();
        assert_eq!(
            m.files["backup_label"],
            ManifestFile {
                size: 225,
                crc32c: Some(0xd8c1_a1f6)
            }
        );
        assert_eq!(m.files["base\0"].crc32c, None);
        assert_eq!(
            m.files["pg_tblspc/16389/PG_15_202209061/5/16390"].crc32c,
            None
        );
        assert_eq!(format_crc32c(0xd8c1_a1f6), "f6a1c1d8");
    }

    #[test]
    fn written_manifests_read_back_and_carry_their_checksum() {
        let files = vec![
            WrittenFile {
                path: "backup_label".into(),
                size: 225,
                mtime: 1_795_809_180,
                crc32c: 0xd8c1_a1f6,
            },
            WrittenFile {
                path: "pg_tblspc/16389/PG_15_202209061/5/a \"q\"\\b\n\u{1}".into(),
                size: 0,
                mtime: 0,
                crc32c: 0,
            },
        ];
        let bytes = write_manifest(&files, TimeLineId(2), Lsn(0x0200_0028), Lsn(0x1_0000_0100));
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(
            "{ \"PostgreSQL-Backup-Manifest-Version\": 1,\n\"Files\": [\n{ \"Path\": \"backup_label\", \
             \"Size\": 225, \"Last-Modified\": \"2026-11-27 19:53:00 GMT\", \
             \"Checksum-Algorithm\": \"CRC32C\", \"Checksum\": \"f6a1c1d8\" },\n"
        ));
        assert!(text.contains(r#""Path": "pg_tblspc/16389/PG_15_202209061/5/a \"q\"\\b\n\u0001""#));
        assert!(text.contains(
            "\n],\n\"WAL-Ranges\": [\n{ \"Timeline\": 2, \"Start-LSN\": \"0/2000028\", \
             \"End-LSN\": \"1/100\" }\n],\n\"Manifest-Checksum\": \""
        ));
        // As pg_verifybackup checks it: SHA-256 of everything up to and including the
        // newline before the last line.
        let body_end = text[..text.len() - 1].rfind('\n').unwrap() + 1;
        let last = &text[body_end..];
        use sha2::{Digest, Sha256};
        let want: String = Sha256::digest(&bytes[..body_end])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(last, format!("\"Manifest-Checksum\": \"{want}\"}}\n"));

        let m = Manifest::parse(&bytes).unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(
            m.files["backup_label"],
            ManifestFile {
                size: 225,
                crc32c: Some(0xd8c1_a1f6)
            }
        );
        assert_eq!(
            m.files["pg_tblspc/16389/PG_15_202209061/5/a \"q\"\\b\n\u{1}"],
            ManifestFile {
                size: 0,
                crc32c: Some(0)
            }
        );
    }

    #[test]
    fn refuses_damage() {
        assert!(matches!(Manifest::parse(b"{"), Err(ManifestError::Json(_))));
        assert_eq!(
            Manifest::parse(br#"{"PostgreSQL-Backup-Manifest-Version": 9, "Files": []}"#),
            Err(ManifestError::Version(9))
        );
        let bad = br#"{"PostgreSQL-Backup-Manifest-Version": 1, "Files": [
            {"Path": "a", "Size": 1, "Checksum-Algorithm": "CRC32C", "Checksum": "zz"}]}"#;
        assert!(matches!(
            Manifest::parse(bad),
            Err(ManifestError::BadChecksum { .. })
        ));
    }
}
