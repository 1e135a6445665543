//! Where the failover state lives, behind one interface: the witness (`walferry witness`, the
//! default) or etcd (v3, for fleets that run one already). The agent and the operator's
//! commands send the same requests and get the same answers from either; the decisions are
//! the same code ([`super::witness::Witness`]).

use std::time::{Duration, Instant};

use super::auth::Secret;
use super::client::WitnessClient;
use super::etcd::EtcdCoordinator;
use super::rules::Policy;
use super::wire::{Answer, Request};
use super::Epoch;

/// How to reach the failover state.
#[derive(Clone, Debug)]
pub enum CoordinatorConfig {
    Witness {
        addr: String,
        secret: Secret,
    },
    /// `policy` must be the same for every agent of the cluster (the witness holds its own).
    Etcd {
        endpoint: String,
        prefix: String,
        policy: Policy,
    },
}

/// Why a request got no answer, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoordError {
    pub message: String,
    pub hint: Option<String>,
}

impl std::fmt::Display for CoordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.hint {
            Some(h) => write!(f, "{} ({h})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl CoordError {
    fn new(message: String, hint: Option<&str>) -> Self {
        CoordError {
            message,
            hint: hint.map(str::to_string),
        }
    }
}

/// One connection to the failover state: a request in, the epoch and the answer out.
pub trait Coordination {
    fn call(
        &mut self,
        request: Request,
        budget: Duration,
    ) -> impl std::future::Future<Output = Result<(Epoch, Answer), CoordError>>;
}

pub enum Coordinator {
    Witness {
        addr: String,
        secret: Secret,
        client: Option<Box<WitnessClient>>,
    },
    Etcd(EtcdCoordinator),
}

impl Coordinator {
    pub fn new(cfg: &CoordinatorConfig) -> Result<Coordinator, String> {
        Ok(match cfg {
            CoordinatorConfig::Witness { addr, secret } => Coordinator::Witness {
                addr: addr.clone(),
                secret: secret.clone(),
                client: None,
            },
            CoordinatorConfig::Etcd {
                endpoint,
                prefix,
                policy,
            } => Coordinator::Etcd(EtcdCoordinator::new(
                endpoint,
                prefix,
                policy.clone(),
                Duration::from_secs(5),
            )?),
        })
    }
}

impl std::fmt::Display for CoordinatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CoordinatorConfig::Witness { addr, .. } => write!(f, "witness {addr}"),
            CoordinatorConfig::Etcd {
                endpoint, prefix, ..
            } => write!(f, "etcd {endpoint} (prefix {prefix})"),
        }
    }
}

impl Coordination for Coordinator {
    async fn call(
        &mut self,
        request: Request,
        budget: Duration,
    ) -> Result<(Epoch, Answer), CoordError> {
        match self {
            Coordinator::Witness {
                addr,
                secret,
                client,
            } => {
                let started = Instant::now();
                if client.is_none() {
                    let c = WitnessClient::connect(addr, secret.clone(), budget)
                        .await
                        .map_err(|e| CoordError::new(e.to_string(), e.hint()))?;
                    *client = Some(Box::new(c));
                }
                let left = budget
                    .saturating_sub(started.elapsed())
                    .max(Duration::from_millis(50));
                let c = client.as_mut().expect("just connected");
                match tokio::time::timeout(left, c.call(request)).await {
                    Ok(Ok(answer)) => Ok(answer),
                    Ok(Err(e)) => {
                        *client = None;
                        Err(CoordError::new(e.to_string(), e.hint()))
                    }
                    Err(_) => {
                        *client = None;
                        Err(CoordError::new(
                            format!("the witness at {addr} did not answer within {left:?}"),
                            Some("is `walferry witness` running there, and reachable?"),
                        ))
                    }
                }
            }
            Coordinator::Etcd(etcd) => {
                etcd.set_timeout(budget);
                etcd.call(request).await.map_err(|e| {
                    CoordError::new(e.to_string(), Some("is etcd running there, and reachable?"))
                })
            }
        }
    }
}
