//! The failover state on etcd (v3 API, through its JSON gateway) instead of the witness: the
//! same state machine ([`super::witness::Witness`]) run by whichever agent calls, on the
//! state kept in one etcd key and changed only by a compare-and-swap on its revision, so that
//! two agents deciding at once cannot both win. The primary's liveness is an etcd **lease**
//! instead of the witness's clock: the epoch's primary keeps `PREFIX/alive/NODE` alive on a
//! lease of the failover timeout; when its agent stops renewing it (dead, cut off), etcd
//! drops the key, and only then may a standby be granted a promote.
//!
//! Plain HTTP only (loopback or a trusted network): etcd's TLS and authentication are not
//! spoken yet.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::rules::Policy;
use super::state::{ClusterState, Health, Role};
use super::wire::{Answer, Directive, Request};
use super::witness::Witness;
use super::{wall_clock_now, Epoch, UnixMillis};

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd at {addr}: {detail}")]
    Io { addr: String, detail: String },
    #[error("etcd at {addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("etcd at {addr} answered {status}: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("etcd at {addr}: unexpected answer: {detail}")]
    Protocol { addr: String, detail: String },
    #[error("the failover state in etcd ({key}) is damaged: {detail}")]
    Corrupt { key: String, detail: String },
    #[error("etcd at {addr}: the state kept changing under us (too many concurrent updates)")]
    Contended { addr: String },
}

/// `http://HOST:PORT` -> `HOST:PORT`.
pub fn parse_endpoint(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("invalid etcd endpoint {url:?}: expected http://HOST:PORT (TLS is not supported)")
    })?;
    let hostport = rest.trim_end_matches('/');
    if hostport.is_empty() || hostport.contains('/') || !hostport.contains(':') {
        return Err(format!(
            "invalid etcd endpoint {url:?}: expected http://HOST:PORT"
        ));
    }
    Ok(hostport.to_string())
}

pub struct EtcdCoordinator {
    addr: String,
    prefix: String,
    policy: Policy,
    timeout: Duration,
    /// The lease behind this node's `alive` key while it is the primary.
    lease: Option<i64>,
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

impl EtcdCoordinator {
    pub fn new(
        endpoint: &str,
        prefix: &str,
        policy: Policy,
        timeout: Duration,
    ) -> Result<Self, String> {
        Ok(EtcdCoordinator {
            addr: parse_endpoint(endpoint)?,
            prefix: prefix.trim_end_matches('/').to_string(),
            policy,
            timeout,
            lease: None,
        })
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn state_key(&self) -> String {
        format!("{}/state", self.prefix)
    }

    fn alive_key(&self, node: &str) -> String {
        format!("{}/alive/{node}", self.prefix)
    }

    /// One request, answered as the witness would.
    pub async fn call(&mut self, request: Request) -> Result<(Epoch, Answer), EtcdError> {
        let deadline = self.timeout;
        let addr = self.addr.clone();
        tokio::time::timeout(deadline, self.call_inner(request))
            .await
            .map_err(|_| EtcdError::Timeout {
                addr,
                timeout: deadline,
            })?
    }

    async fn call_inner(&mut self, request: Request) -> Result<(Epoch, Answer), EtcdError> {
        for _ in 0..16 {
            let (mut state, revision) = self.load().await?;
            let now = wall_clock_now();
            // The lease speaks for the primary's liveness: heard now while its key lives,
            // never once etcd has dropped it.
            // (A promote just granted keeps the time of its grant: the new primary has a
            // failover timeout to promote and take its lease.)
            if let (Some(primary), None) = (state.primary.clone(), &state.promotion) {
                state.primary_heard = if self.exists(&self.alive_key(&primary)).await? {
                    now
                } else {
                    UnixMillis(0)
                };
            }
            let witness = Witness::new(state, self.policy.clone(), UnixMillis(0));
            let outcome = witness.decide(now, &request);
            if let Some(next) = &outcome.next {
                if !self.swap(revision, next).await? {
                    continue;
                }
            }
            self.keep_lease(&request, &outcome.answer).await?;
            return Ok((outcome.epoch, outcome.answer));
        }
        Err(EtcdError::Contended {
            addr: self.addr.clone(),
        })
    }

    /// The epoch's primary, reporting itself healthy: keep its `alive` key on a lease of the
    /// failover timeout. Anyone else holding a lease gives it up.
    async fn keep_lease(&mut self, request: &Request, answer: &Answer) -> Result<(), EtcdError> {
        let Request::Report(report) = request else {
            return Ok(());
        };
        let is_primary = matches!(
            answer,
            Answer::Reported { primary: Some(p), directive: Directive::Continue, .. }
                if *p == report.node
        ) && report.role == Role::Primary
            && report.health == Health::Ok;
        if !is_primary {
            if let Some(id) = self.lease.take() {
                let _ = self
                    .post("/v3/lease/revoke", json!({ "ID": id.to_string() }))
                    .await;
            }
            return Ok(());
        }
        if let Some(id) = self.lease {
            let v = self
                .post("/v3/lease/keepalive", json!({ "ID": id.to_string() }))
                .await?;
            let ttl = v["result"]["TTL"]
                .as_str()
                .and_then(|t| t.parse::<i64>().ok())
                .unwrap_or(0);
            if ttl > 0 {
                return Ok(());
            }
            // Expired (we were cut off): the key is gone; a new lease, if still primary.
            self.lease = None;
        }
        let ttl = self.policy.failover_timeout.as_secs().max(1);
        let v = self
            .post("/v3/lease/grant", json!({ "TTL": ttl.to_string() }))
            .await?;
        let id = v["ID"]
            .as_str()
            .and_then(|t| t.parse::<i64>().ok())
            .ok_or_else(|| EtcdError::Protocol {
                addr: self.addr.clone(),
                detail: format!("lease grant without an ID: {v}"),
            })?;
        self.post(
            "/v3/kv/put",
            json!({
                "key": b64(self.alive_key(&report.node).as_bytes()),
                "value": b64(b"alive"),
                "lease": id.to_string(),
            }),
        )
        .await?;
        self.lease = Some(id);
        Ok(())
    }

    async fn load(&self) -> Result<(ClusterState, i64), EtcdError> {
        let key = self.state_key();
        let v = self
            .post("/v3/kv/range", json!({ "key": b64(key.as_bytes()) }))
            .await?;
        let Some(kv) = v["kvs"].as_array().and_then(|a| a.first()) else {
            return Ok((ClusterState::default(), 0));
        };
        let corrupt = |detail: String| EtcdError::Corrupt {
            key: key.clone(),
            detail,
        };
        let revision = kv["mod_revision"]
            .as_str()
            .and_then(|r| r.parse::<i64>().ok())
            .ok_or_else(|| corrupt("no mod_revision".into()))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(kv["value"].as_str().unwrap_or_default())
            .map_err(|e| corrupt(e.to_string()))?;
        let state: ClusterState =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
        Ok((state, revision))
    }

    async fn exists(&self, key: &str) -> Result<bool, EtcdError> {
        let v = self
            .post(
                "/v3/kv/range",
                json!({ "key": b64(key.as_bytes()), "count_only": true }),
            )
            .await?;
        Ok(v["count"]
            .as_str()
            .and_then(|c| c.parse::<u64>().ok())
            .unwrap_or(0)
            > 0)
    }

    /// Write `next` if the state is still at `revision` (0: absent). False: someone else
    /// changed it first.
    async fn swap(&self, revision: i64, next: &ClusterState) -> Result<bool, EtcdError> {
        let key = b64(self.state_key().as_bytes());
        let value = serde_json::to_vec(next).unwrap_or_default();
        let compare = if revision == 0 {
            json!({ "key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0" })
        } else {
            json!({ "key": key, "target": "MOD", "result": "EQUAL", "mod_revision": revision.to_string() })
        };
        let v = self
            .post(
                "/v3/kv/txn",
                json!({
                    "compare": [compare],
                    "success": [{ "request_put": { "key": key, "value": b64(&value) } }],
                }),
            )
            .await?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    /// POST `body` to the gateway; the JSON answer.
    async fn post(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let io = |detail: String| EtcdError::Io {
            addr: self.addr.clone(),
            detail,
        };
        let body = body.to_string();
        let mut stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| io(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| io(e.to_string()))?;
        let mut raw = Vec::new();
        stream
            .take(16 * 1024 * 1024)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| io(e.to_string()))?;
        let (status, payload) = parse_response(&raw).map_err(|detail| EtcdError::Protocol {
            addr: self.addr.clone(),
            detail,
        })?;
        let text = String::from_utf8_lossy(&payload).into_owned();
        if status != 200 {
            return Err(EtcdError::Status {
                addr: self.addr.clone(),
                status,
                body: text,
            });
        }
        serde_json::from_str(&text).map_err(|e| EtcdError::Protocol {
            addr: self.addr.clone(),
            detail: format!("{e}: {text}"),
        })
    }
}

/// Status and body of an HTTP/1.1 response read to the end (Content-Length or chunked).
fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("no status line")?;
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut rest = body;
        loop {
            let line_end = rest
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("truncated chunk size")?;
            let size_text = String::from_utf8_lossy(&rest[..line_end]);
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| format!("bad chunk size {size_text:?}"))?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                return Ok((status, out));
            }
            if rest.len() < size + 2 {
                return Err("truncated chunk".into());
            }
            out.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    }
    Ok((status, body.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_with_a_length_or_in_chunks_are_read() {
        let plain = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain).unwrap(), (200, b"{}".to_vec()));
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked).unwrap(),
            (200, b"{\"a\":1}".to_vec())
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn endpoints_are_plain_http_host_and_port() {
        assert_eq!(
            parse_endpoint("http://127.0.0.1:2379").unwrap(),
            "127.0.0.1:2379"
        );
        assert!(parse_endpoint("https://e:2379").is_err());
        assert!(parse_endpoint("http://e").is_err());
    }
}
