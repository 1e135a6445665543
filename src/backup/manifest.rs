//! The parts of PostgreSQL's backup manifest walferry relies on: each file's path, size and
//! CRC-32C (BASE_BACKUP is asked for `MANIFEST_CHECKSUMS 'CRC32C'`). The manifest itself is
//! kept verbatim beside the backup for `pg_verifybackup`; this reading serves two checks:
//! the backup checks every file it stored against it, and a delta restore keeps a file
//! already in place only when its size and checksum match it.

use std::collections::HashMap;

use serde::Deserialize;

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
