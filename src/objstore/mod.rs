//! Repositories in S3-compatible object storage.
//!
//! A repository URL (`s3://bucket/prefix`, see [`url`]) names the same layout as a local
//! repository directory (`wal/`, `backups/<id>/...`), one object per file, so either can be
//! copied to the other. This module is the client ([`Remote`]: list, get, put-once,
//! delete, over the `object_store` crate's S3 client with SigV4 signing, the payload's
//! SHA-256 signed so the server checks what it stores) and the parts built on it: the WAL
//! uploader of `receive`/`relay` ([`upload`]) and the local copies the reading commands
//! work on ([`mirror`]).
//!
//! Objects are never overwritten with different contents: a complete segment, a history
//! file or a backup file is put only after a look shows the name is free, and a name that
//! is taken is success when the object holds the same bytes, an error naming it when not.
//! Only a `.partial` (the newest WAL, which grows) is replaced.

pub mod journal;
pub mod mirror;
pub mod settings;
pub mod stream;
pub mod upload;
mod url;

pub use settings::{Settings, SettingsError};
pub use url::{Location, S3Url, UrlError};

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

/// Objects larger than this are uploaded in parts of this size.
pub const PART_SIZE: usize = 16 << 20;
/// Parts of one object in flight at once.
const PART_CONCURRENCY: usize = 4;

/// What kind of trouble an object-store call ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NotFound,
    /// The keys were refused (wrong key id or secret, or no permission).
    Denied,
    NoBucket,
    /// Nothing answered at the endpoint, or the connection broke.
    Unreachable,
    Other,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("could not {op} \"{location}\": {message}")]
    Store {
        op: &'static str,
        location: String,
        kind: Kind,
        message: String,
    },
    #[error(
        "\"{location}\" already exists in the object store with different contents; refusing \
         to overwrite it"
    )]
    Conflict { location: String },
    #[error("could not {op} \"{}\": {source}", path.display())]
    Local {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl RemoteError {
    pub fn kind(&self) -> Option<Kind> {
        match self {
            RemoteError::Store { kind, .. } => Some(*kind),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.kind() == Some(Kind::NotFound)
    }

    pub fn local(op: &'static str, path: &Path, source: io::Error) -> Self {
        RemoteError::Local {
            op,
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self.kind()? {
            Kind::Denied => Some(
                "the object store refused the access keys: check AWS_ACCESS_KEY_ID and \
                 AWS_SECRET_ACCESS_KEY (or the credentials file), and that they may list, read \
                 and write the bucket"
                    .into(),
            ),
            Kind::NoBucket => Some(
                "create the bucket first (walferry never creates buckets), or correct the URL"
                    .into(),
            ),
            Kind::Unreachable => Some(
                "check endpoint= in the URL (or AWS_ENDPOINT_URL) and that the object store is \
                 up; segments wait in the spool meanwhile"
                    .into(),
            ),
            _ => None,
        }
    }
}

fn classify(e: &object_store::Error) -> Kind {
    let text = format!("{e:?} {e}");
    match e {
        object_store::Error::NotFound { .. } if text.contains("NoSuchBucket") => Kind::NoBucket,
        object_store::Error::NotFound { .. } => Kind::NotFound,
        object_store::Error::Unauthenticated { .. }
        | object_store::Error::PermissionDenied { .. } => Kind::Denied,
        _ if text.contains("NoSuchBucket") => Kind::NoBucket,
        _ if [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
            "Forbidden",
            "403",
        ]
        .iter()
        .any(|s| text.contains(s)) =>
        {
            Kind::Denied
        }
        _ if [
            "error sending request",
            "Connection refused",
            "connection error",
            "timed out",
            "dns error",
            "connection closed",
        ]
        .iter()
        .any(|s| text.contains(s)) =>
        {
            Kind::Unreachable
        }
        _ => Kind::Other,
    }
}

/// One object under a listed prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// Its key relative to the listed prefix (`000000010000000000000003`, `base/1/1259`).
    pub name: String,
    pub size: u64,
    /// When the store says it was written (an incomplete backup's age is its newest).
    pub modified: std::time::SystemTime,
}

/// What a put-once did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Stored,
    /// The object was already there with the same contents.
    AlreadyThere,
}

/// A client for one repository URL; cheap to clone.
#[derive(Debug, Clone)]
pub struct Remote {
    store: Arc<AmazonS3>,
    url: S3Url,
    settings: Arc<Settings>,
}

impl Remote {
    /// A client for `url` with the keys and settings resolved as [`settings`] says. Makes
    /// no request: [`Remote::check`] does.
    pub fn new(url: &S3Url) -> Result<Remote, RemoteError> {
        let s = settings::resolve(url, &settings::ProcessEnv)?;
        Remote::with_settings(url, &s)
    }

    pub fn with_settings(url: &S3Url, s: &Settings) -> Result<Remote, RemoteError> {
        // reqwest is built without a crypto provider of its own: rustls's process-wide one
        // (ring, as everywhere in walferry) serves https endpoints.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&s.bucket)
            .with_region(&s.region)
            .with_access_key_id(&s.access_key_id)
            .with_secret_access_key(&s.secret_access_key)
            .with_virtual_hosted_style_request(!s.path_style)
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
                ..Default::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120)),
            );
        if let Some(t) = &s.session_token {
            b = b.with_token(t);
        }
        if let Some(e) = &s.endpoint {
            b = b.with_endpoint(e).with_allow_http(e.starts_with("http://"));
        }
        let store = b.build().map_err(|e| RemoteError::Store {
            op: "set up a client for",
            location: url.to_string(),
            kind: Kind::Other,
            message: e.to_string(),
        })?;
        Ok(Remote {
            store: Arc::new(store),
            url: url.clone(),
            settings: Arc::new(s.clone()),
        })
    }

    /// The same repository through a client of its own. A client's pooled connections
    /// belong to the runtime that opened them: a thread with its own runtime (the
    /// uploader) needs its own client.
    pub fn fresh(&self) -> Result<Remote, RemoteError> {
        Remote::with_settings(&self.url, &self.settings)
    }

    pub fn url(&self) -> &S3Url {
        &self.url
    }

    /// The URL with the endpoint, region and addressing resolved (from the environment or
    /// the AWS config file too), for another process that may not share this one's
    /// environment: PostgreSQL running `restore_command`. Still no secret in it.
    pub fn portable_url(&self) -> S3Url {
        let mut url = self.url.clone();
        url.endpoint = self.settings.endpoint.clone();
        url.region = Some(self.settings.region.clone());
        url.path_style = Some(self.settings.path_style);
        url
    }

    /// The same bucket, `sub` deeper (e.g. `wal`).
    pub fn join(&self, sub: &str) -> Remote {
        Remote {
            store: self.store.clone(),
            url: self.url.join(sub),
            settings: self.settings.clone(),
        }
    }

    fn key(&self, rel: &str) -> ObjPath {
        let rel = rel.trim_matches('/');
        match (self.url.prefix.is_empty(), rel.is_empty()) {
            (true, _) => ObjPath::from(rel),
            (false, true) => ObjPath::from(self.url.prefix.as_str()),
            (false, false) => ObjPath::from(format!("{}/{rel}", self.url.prefix)),
        }
    }

    /// `s3://bucket/prefix/rel`, for messages.
    pub fn describe(&self, rel: &str) -> String {
        format!("{}/{}", self.url, rel.trim_matches('/'))
    }

    fn err(&self, op: &'static str, rel: &str, e: object_store::Error) -> RemoteError {
        RemoteError::Store {
            op,
            location: self.describe(rel),
            kind: classify(&e),
            message: short_message(&e),
        }
    }

    /// One cheap request that proves the endpoint answers, the bucket exists and the keys
    /// may list it; errors carry a [`Kind`] and a hint.
    pub async fn check(&self) -> Result<(), RemoteError> {
        let prefix = self.key("");
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| RemoteError::Store {
                op: "list",
                location: self.url.to_string(),
                kind: classify(&e),
                message: short_message(&e),
            })?;
        drop(listing);
        Ok(())
    }

    /// Every object under `sub` (recursively), names relative to it, sorted.
    pub async fn list(&self, sub: &str) -> Result<Vec<Object>, RemoteError> {
        let prefix = self.key(sub);
        let base = prefix.as_ref().len();
        let mut stream = self.store.list(Some(&prefix));
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| self.err("list", sub, e))?;
            let name = meta.location.as_ref()[base..].trim_start_matches('/');
            out.push(Object {
                name: name.to_string(),
                size: meta.size,
                modified: meta.last_modified.into(),
            });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The objects directly under `sub` whose names start with `start` (one request for the
    /// few files of one segment: `NAME`, `NAME.gz`, `NAME.partial`, ...).
    pub async fn list_starting(&self, sub: &str, start: &str) -> Result<Vec<Object>, RemoteError> {
        let all = self.list_from(sub, start, usize::MAX).await?;
        Ok(all
            .into_iter()
            .take_while(|o| o.name.starts_with(start))
            .collect())
    }

    /// Objects under `sub` whose names sort at or after `from`, in order, at most `limit`
    /// (S3 lists in key order, so this reads only as many pages as it needs).
    pub async fn list_from(
        &self,
        sub: &str,
        from: &str,
        limit: usize,
    ) -> Result<Vec<Object>, RemoteError> {
        let prefix = self.key(sub);
        let base = prefix.as_ref().len();
        // The offset is exclusive: start just before `from`.
        let offset = self.key(&format!("{}/{}", sub.trim_matches('/'), before(from)));
        let mut stream = self.store.list_with_offset(Some(&prefix), &offset);
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = meta.map_err(|e| self.err("list", sub, e))?;
            let name = meta.location.as_ref()[base..]
                .trim_start_matches('/')
                .to_string();
            if name.as_str() < from {
                continue;
            }
            out.push(Object {
                name,
                size: meta.size,
                modified: meta.last_modified.into(),
            });
            if out.len() >= limit {
                break;
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The size of `rel`, or `None` when there is no such object.
    pub async fn head(&self, rel: &str) -> Result<Option<u64>, RemoteError> {
        match self.store.head(&self.key(rel)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err("look up", rel, e)),
        }
    }

    /// The whole object `rel`.
    pub async fn get(&self, rel: &str) -> Result<Bytes, RemoteError> {
        let result = self
            .store
            .get(&self.key(rel))
            .await
            .map_err(|e| self.err("read", rel, e))?;
        result.bytes().await.map_err(|e| self.err("read", rel, e))
    }

    /// Streams object `rel` into `dest`: written under a temporary name beside it,
    /// fsynced, renamed. Returns the size.
    pub async fn download(&self, rel: &str, dest: &Path) -> Result<u64, RemoteError> {
        let tmp = crate::archive::get::temp_beside(dest);
        let result = async {
            let mut file = File::create(&tmp).map_err(|e| RemoteError::local("create", &tmp, e))?;
            let got = self
                .store
                .get(&self.key(rel))
                .await
                .map_err(|e| self.err("read", rel, e))?;
            let mut stream = got.into_stream();
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| self.err("read", rel, e))?;
                file.write_all(&chunk)
                    .map_err(|e| RemoteError::local("write", &tmp, e))?;
                n += chunk.len() as u64;
            }
            file.sync_all()
                .map_err(|e| RemoteError::local("fsync", &tmp, e))?;
            std::fs::rename(&tmp, dest).map_err(|e| RemoteError::local("rename", &tmp, e))?;
            Ok(n)
        }
        .await;
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Stores `bytes` as `rel` unless an object is there: the same bytes there is
    /// [`Put::AlreadyThere`], different ones [`RemoteError::Conflict`].
    pub async fn put_new(&self, rel: &str, bytes: Bytes) -> Result<Put, RemoteError> {
        if let Some(size) = self.head(rel).await? {
            return self.same_as(rel, size, &bytes).await;
        }
        self.store
            .put(&self.key(rel), PutPayload::from_bytes(bytes.clone()))
            .await
            .map_err(|e| self.err("write", rel, e))?;
        self.confirm(rel, bytes.len() as u64).await?;
        Ok(Put::Stored)
    }

    /// Stores `bytes` as `rel`, replacing what is there (for a `.partial` only).
    pub async fn put_replace(&self, rel: &str, bytes: Bytes) -> Result<(), RemoteError> {
        let len = bytes.len() as u64;
        self.store
            .put(&self.key(rel), PutPayload::from_bytes(bytes))
            .await
            .map_err(|e| self.err("write", rel, e))?;
        self.confirm(rel, len).await
    }

    /// [`Remote::put_new`] for a local file, read in parts of [`PART_SIZE`] (a multipart
    /// upload above that size, [`PART_CONCURRENCY`] parts in flight), so memory stays
    /// bounded whatever the file's size. The upload is written down in this process's
    /// [`journal`] before its first part and aborted if anything fails, so that neither an
    /// error nor the death of the process leaves its parts in the bucket.
    pub async fn put_file_new(&self, rel: &str, path: &Path) -> Result<Put, RemoteError> {
        let len = std::fs::metadata(path)
            .map_err(|e| RemoteError::local("stat", path, e))?
            .len();
        if len <= PART_SIZE as u64 {
            let bytes = std::fs::read(path).map_err(|e| RemoteError::local("read", path, e))?;
            return self.put_new(rel, Bytes::from(bytes)).await;
        }
        if let Some(size) = self.head(rel).await? {
            let bytes = std::fs::read(path).map_err(|e| RemoteError::local("read", path, e))?;
            return self.same_as(rel, size, &bytes).await;
        }
        let key = self.key(rel);
        let id = self
            .store
            .create_multipart(&key)
            .await
            .map_err(|e| self.err("start an upload of", rel, e))?;
        if let Err(e) = journal::record(self, key.as_ref(), &id) {
            let _ = self.store.abort_multipart(&key, &id).await;
            return Err(e);
        }
        let result = match self.put_parts(rel, &key, &id, path).await {
            Ok(parts) => self
                .store
                .complete_multipart(&key, &id, parts)
                .await
                .map(drop)
                .map_err(|e| self.err("complete the upload of", rel, e)),
            Err(e) => Err(e),
        };
        if result.is_err() && self.store.abort_multipart(&key, &id).await.is_err() {
            // Left in the journal: the next uploading command after this one aborts it.
            return result.map(|()| Put::Stored);
        }
        journal::forget(self, &id);
        result?;
        self.confirm(rel, len).await?;
        Ok(Put::Stored)
    }

    /// The parts of multipart upload `id` of `key`, read from `path`; the part ids in order.
    async fn put_parts(
        &self,
        rel: &str,
        key: &ObjPath,
        id: &str,
        path: &Path,
    ) -> Result<Vec<PartId>, RemoteError> {
        use futures_util::stream::FuturesUnordered;
        let id = id.to_string();
        let mut file = File::open(path).map_err(|e| RemoteError::local("open", path, e))?;
        let mut inflight = FuturesUnordered::new();
        let mut parts: Vec<(usize, PartId)> = Vec::new();
        let mut idx = 0;
        loop {
            if inflight.len() >= PART_CONCURRENCY {
                if let Some(r) = inflight.next().await {
                    parts.push(r?);
                }
                continue;
            }
            let mut buf = vec![0u8; PART_SIZE];
            let n =
                read_full(&mut file, &mut buf).map_err(|e| RemoteError::local("read", path, e))?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            let (store, key, id, i) = (self.store.clone(), key.clone(), id.clone(), idx);
            inflight.push(async move {
                store
                    .put_part(&key, &id, i, PutPayload::from(buf))
                    .await
                    .map(|part| (i, part))
                    .map_err(|e| self.err("upload", rel, e))
            });
            idx += 1;
        }
        while let Some(r) = inflight.next().await {
            parts.push(r?);
        }
        parts.sort_by_key(|(i, _)| *i);
        Ok(parts.into_iter().map(|(_, p)| p).collect())
    }

    /// Aborts multipart upload `id` of `key` (a full key in the bucket, as the [`journal`]
    /// holds it); an upload the store does not know (completed or aborted already) is
    /// success.
    pub(crate) async fn abort_upload(&self, key: &str, id: &str) -> Result<(), RemoteError> {
        let location = ObjPath::from(key);
        match self.store.abort_multipart(&location, &id.to_string()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(RemoteError::Store {
                op: "abort the multipart upload of",
                location: format!("s3://{}/{key}", self.settings.bucket),
                kind: classify(&e),
                message: short_message(&e),
            }),
        }
    }

    async fn same_as(&self, rel: &str, size: u64, bytes: &[u8]) -> Result<Put, RemoteError> {
        if size == bytes.len() as u64 && self.get(rel).await?.as_ref() == bytes {
            return Ok(Put::AlreadyThere);
        }
        Err(RemoteError::Conflict {
            location: self.describe(rel),
        })
    }

    /// After a put: the object is there with the size written. (The payload's SHA-256 is
    /// part of the signed request, which the server checks before it stores anything.)
    async fn confirm(&self, rel: &str, len: u64) -> Result<(), RemoteError> {
        match self.head(rel).await? {
            Some(size) if size == len => Ok(()),
            found => Err(RemoteError::Store {
                op: "confirm the upload of",
                location: self.describe(rel),
                kind: Kind::Other,
                message: match found {
                    Some(size) => format!("the object store holds {size} bytes, {len} were sent"),
                    None => "the object is not there after the upload".into(),
                },
            }),
        }
    }

    pub async fn delete(&self, rel: &str) -> Result<(), RemoteError> {
        match self.store.delete(&self.key(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err("delete", rel, e)),
        }
    }
}

/// The string just before `s` in key order, for an exclusive list offset.
fn before(s: &str) -> String {
    let mut bytes = s.as_bytes().to_vec();
    match bytes.pop() {
        Some(last) if last > 0 => {
            bytes.push(last - 1);
            bytes.push(0x7e);
            String::from_utf8(bytes).unwrap_or_default()
        }
        _ => String::new(),
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// object_store's messages nest the request, the response body and the retry count; the
/// first line and the S3 error code are what a person needs.
fn short_message(e: &object_store::Error) -> String {
    let full = e.to_string();
    let mut text: String = full
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(400)
        .collect();
    for code in [
        "NoSuchBucket",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
    ] {
        if full.contains(code) && !text.contains(code) {
            text.push_str(&format!(" ({code})"));
        }
    }
    text
}

/// A runtime for the commands that are not async themselves (archive-get, restore, verify).
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_offsets_sort_just_before_the_name() {
        let name = "000000010000000000000003";
        let b = before(name);
        assert!(b.as_str() < name);
        assert!(b.as_str() > "000000010000000000000002.partial");
        assert_eq!(before(""), "");
    }
}
