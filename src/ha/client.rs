//! The witness's client, for `walferry status` and the agent: one connection, requests
//! answered in order, every answer's MAC and nonce checked before it is believed.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::auth::{new_nonce, Secret};
use super::wire::{self, Answer, Request, RequestBody, WireError};
use super::{wall_clock_now, Epoch};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("could not connect to the witness at {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("the witness at {addr} did not answer within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("connection to the witness at {addr} failed: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("the witness at {addr} closed the connection")]
    Closed { addr: String },
    #[error("answer from the witness at {addr}: {source}")]
    Wire { addr: String, source: WireError },
    #[error("the witness at {addr} answered another request (nonce mismatch): ignored")]
    NotOurAnswer { addr: String },
}

impl ClientError {
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ClientError::Connect { .. } | ClientError::Timeout { .. } => {
                Some("is `walferry witness` running there, and reachable?")
            }
            ClientError::Wire {
                source: WireError::BadMac | WireError::PeerRefused(_),
                ..
            } => Some(
                "the witness and this node must use the same secret file, and their clocks \
                 must agree within 30 s",
            ),
            _ => None,
        }
    }
}

pub struct WitnessClient {
    addr: String,
    stream: TcpStream,
    secret: Secret,
    buf: BytesMut,
    timeout: Duration,
}

impl WitnessClient {
    /// Connect to `addr` (`HOST:PORT`); every later step is bounded by `timeout` too.
    pub async fn connect(
        addr: &str,
        secret: Secret,
        timeout: Duration,
    ) -> Result<WitnessClient, ClientError> {
        let connect = |source| ClientError::Connect {
            addr: addr.to_string(),
            source,
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout {
                addr: addr.to_string(),
                timeout,
            })?
            .map_err(connect)?;
        let _ = stream.set_nodelay(true);
        Ok(WitnessClient {
            addr: addr.to_string(),
            stream,
            secret,
            buf: BytesMut::with_capacity(4096),
            timeout,
        })
    }

    /// Send `request`; the witness's epoch and its answer.
    pub async fn call(&mut self, request: Request) -> Result<(Epoch, Answer), ClientError> {
        let body = RequestBody {
            sent_at_ms: wall_clock_now(),
            nonce: new_nonce(),
            request,
        };
        let line = wire::encode_request(self.secret.key(), &body);
        let timeout = self.timeout;
        let answer = tokio::time::timeout(timeout, self.exchange(&line))
            .await
            .map_err(|_| ClientError::Timeout {
                addr: self.addr.clone(),
                timeout,
            })??;
        let answer = wire::decode_answer(self.secret.key(), &answer).map_err(|source| {
            ClientError::Wire {
                addr: self.addr.clone(),
                source,
            }
        })?;
        if answer.in_reply_to != body.nonce {
            return Err(ClientError::NotOurAnswer {
                addr: self.addr.clone(),
            });
        }
        Ok((answer.epoch, answer.answer))
    }

    async fn exchange(&mut self, line: &[u8]) -> Result<BytesMut, ClientError> {
        let io = |source| ClientError::Io {
            addr: self.addr.clone(),
            source,
        };
        self.stream.write_all(line).await.map_err(io)?;
        loop {
            match wire::take_line(&mut self.buf, wire::MAX_ANSWER_LINE) {
                Ok(Some(line)) => return Ok(line),
                Ok(None) => {}
                Err(source) => {
                    return Err(ClientError::Wire {
                        addr: self.addr.clone(),
                        source,
                    })
                }
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|source| ClientError::Io {
                    addr: self.addr.clone(),
                    source,
                })?;
            if n == 0 {
                return Err(ClientError::Closed {
                    addr: self.addr.clone(),
                });
            }
        }
    }
}
