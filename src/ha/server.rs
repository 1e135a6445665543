//! The witness's TCP service: connections frame lines; one thread owns the state and handles
//! every line in arrival order (authenticate, decide, make durable, answer).
//!
//! Serializing every request through one owner is what makes a grant safe: two standbys that
//! ask at once are decided one after the other, the second against the epoch the first one
//! moved. The owner is a plain thread because it fsyncs: a blocking write must not stall the
//! runtime's workers that carry the other connections.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::auth::{ReplayGuard, Secret};
use super::state::StateStore;
use super::wire::{self, Answer, AnswerBody, WireError};
use super::witness::Witness;
use super::Clock;

/// A connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// At most this many connections at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 256;

/// The state, its file, and the authentication: everything one request needs.
pub struct WitnessService {
    witness: Witness,
    store: StateStore,
    guard: ReplayGuard,
    secret: Secret,
    clock: Arc<dyn Clock>,
}

/// The bytes to send back, and whether to close the connection after them.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub close: bool,
}

impl WitnessService {
    pub fn new(witness: Witness, store: StateStore, secret: Secret, clock: Arc<dyn Clock>) -> Self {
        let guard = ReplayGuard::new(clock.now());
        WitnessService {
            witness,
            store,
            guard,
            secret,
            clock,
        }
    }

    pub fn witness(&self) -> &Witness {
        &self.witness
    }

    /// Handle one request line (without its newline). A request that fails authentication
    /// changes nothing, is answered without a MAC, and ends the connection.
    pub fn handle_line(&mut self, line: &[u8]) -> Reply {
        let now = self.clock.now();
        let body = match wire::decode_request(self.secret.key(), line) {
            Ok(body) => body,
            Err(e) => return self.refuse(&e.to_string()),
        };
        if let Err(e) = self.guard.check(now, body.sent_at_ms, &body.nonce) {
            return self.refuse(&e.to_string());
        }
        let outcome = self.witness.decide(now, &body.request);
        let (epoch, answer) = match outcome.next {
            None => (outcome.epoch, outcome.answer),
            Some(next) => match self.store.save(&next) {
                Ok(()) => {
                    self.witness.commit(next);
                    (outcome.epoch, outcome.answer)
                }
                Err(e) => {
                    tracing::error!("witness: {e}; the request was refused");
                    let hint = e.hint().map(str::to_string).or_else(|| {
                        Some("check the witness's data directory (space, permissions)".into())
                    });
                    let answer = Answer::Error {
                        message: format!(
                            "the witness could not save its state, so nothing changed: {e}"
                        ),
                        hint,
                    };
                    (self.witness.state().epoch, answer)
                }
            },
        };
        let answer = AnswerBody {
            in_reply_to: body.nonce,
            epoch,
            answer,
        };
        Reply {
            bytes: wire::encode_answer(self.secret.key(), &answer),
            close: false,
        }
    }

    fn refuse(&self, message: &str) -> Reply {
        tracing::warn!("witness: refused a request: {message}");
        Reply {
            bytes: wire::unauthenticated_error(message),
            close: true,
        }
    }
}

type Job = (Vec<u8>, oneshot::Sender<Reply>);

/// Serve `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    service: WitnessService,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let (jobs, mut inbox) = mpsc::channel::<Job>(MAX_CONNECTIONS);
    std::thread::Builder::new()
        .name("witness-state".into())
        .spawn(move || {
            let mut service = service;
            while let Some((line, reply)) = inbox.blocking_recv() {
                let _ = reply.send(service.handle_line(&line));
            }
        })?;
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return Ok(());
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and the like: wait rather than spin; the listener stays.
                    tracing::warn!("witness: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let jobs = jobs.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, jobs).await {
                tracing::debug!("witness: {peer}: {e}");
            }
            drop(permit);
        });
    }
}

async fn connection(mut stream: TcpStream, jobs: mpsc::Sender<Job>) -> io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let line = match wire::take_line(&mut buf, wire::MAX_REQUEST_LINE) {
            Ok(Some(line)) => line,
            Ok(None) => {
                let n = tokio::time::timeout(IDLE_TIMEOUT, stream.read_buf(&mut buf))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "idle"))??;
                if n == 0 {
                    return Ok(());
                }
                continue;
            }
            Err(e @ WireError::TooLong { .. }) => {
                stream
                    .write_all(&wire::unauthenticated_error(&e.to_string()))
                    .await?;
                return Ok(());
            }
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        };
        let (tx, rx) = oneshot::channel();
        if jobs.send((line.to_vec(), tx)).await.is_err() {
            return Ok(());
        }
        let Ok(reply) = rx.await else {
            return Ok(());
        };
        stream.write_all(&reply.bytes).await?;
        if reply.close {
            return Ok(());
        }
    }
}
