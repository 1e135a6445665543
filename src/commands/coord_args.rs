//! The flags that say where the failover state lives: a witness (`--witness` and
//! `--secret-file`) or etcd (`--etcd`), shared by agent, status, switchover and failover.

use std::path::PathBuf;
use std::time::Duration;

use walferry::ha::auth::Secret;
use walferry::ha::coordinator::CoordinatorConfig;
use walferry::ha::rules::Policy;

use super::Failure;

#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Failover state (a witness, or etcd)")]
pub struct CoordArgs {
    /// The witness's address
    #[arg(long = "witness", value_name = "HOST:PORT")]
    pub witness: Option<String>,

    /// File holding the witness's shared secret (mode 0600)
    #[arg(long = "secret-file", value_name = "FILE")]
    pub secret_file: Option<PathBuf>,

    /// Keep the failover state in etcd (v3 API, plain HTTP) instead of a witness
    #[arg(
        long = "etcd",
        value_name = "http://HOST:PORT",
        conflicts_with = "witness"
    )]
    pub etcd: Option<String>,

    /// With --etcd: the key prefix of this cluster's state
    #[arg(
        long = "etcd-prefix",
        value_name = "PREFIX",
        default_value = "/walferry"
    )]
    pub etcd_prefix: String,

    /// With --etcd: seconds after the primary's lease is gone before a promote (the lease's
    /// TTL); the same on every agent
    #[arg(long = "failover-timeout", value_name = "SECONDS", default_value = "4")]
    pub failover_timeout: f64,

    /// With --etcd: promote only a standby holding every acknowledged commit; the same on
    /// every agent
    #[arg(long = "synchronous")]
    pub synchronous: bool,
}

impl CoordArgs {
    pub fn config(&self, command: &str) -> Result<CoordinatorConfig, Failure> {
        if let Some(endpoint) = &self.etcd {
            let failover_timeout =
                super::seconds_flag("failover-timeout", self.failover_timeout, command)?;
            if failover_timeout < Duration::from_secs(1) {
                return Err(Failure::usage(
                    format!(
                        "invalid --failover-timeout {}: at least 1 s with --etcd (an etcd lease)",
                        self.failover_timeout
                    ),
                    command,
                ));
            }
            walferry::ha::etcd::parse_endpoint(endpoint).map_err(|e| Failure::usage(e, command))?;
            return Ok(CoordinatorConfig::Etcd {
                endpoint: endpoint.clone(),
                prefix: self.etcd_prefix.clone(),
                policy: Policy {
                    failover_timeout,
                    synchronous: self.synchronous,
                    allow_data_loss: false,
                },
            });
        }
        let (Some(addr), Some(secret_file)) = (&self.witness, &self.secret_file) else {
            return Err(Failure::usage(
                "where is the failover state? give --witness HOST:PORT and --secret-file FILE, or --etcd http://HOST:PORT",
                command,
            ));
        };
        let secret = Secret::load(secret_file)
            .map_err(|e| Failure::new(e.to_string()).with_hint(e.hint()))?;
        Ok(CoordinatorConfig::Witness {
            addr: addr.clone(),
            secret,
        })
    }
}
