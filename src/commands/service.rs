//! The flags that make a command run well as a service: `--config FILE` (see
//! [`super::config`]) and `--metrics HOST:PORT` (see [`walferry::service`]). A command
//! gets both by flattening [`ServiceArgs`] into its arguments.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

use walferry::service::{Metrics, MetricsServer};

use super::Failure;

#[derive(clap::Args, Debug, Clone, Default)]
#[command(next_help_heading = "Service options")]
pub struct ServiceArgs {
    /// Read flags from this TOML file: keys are long flag names (slot = "walferry",
    /// synchronous = true); flags given on the command line win
    #[arg(long = "config", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Serve Prometheus metrics on http://HOST:PORT/metrics, and /healthz (200 while
    /// streaming, else 503 with the reason)
    #[arg(long = "metrics", value_name = "HOST:PORT")]
    pub metrics: Option<String>,
}

impl ServiceArgs {
    /// Point an invalid command line at the config file too: a value refused after parsing
    /// may have come from there.
    pub fn annotate(&self, failure: Failure) -> Failure {
        match (&self.config, failure.exit_code) {
            (Some(path), 2) => {
                let hint = failure.hint.clone().unwrap_or_default();
                let sep = if hint.is_empty() { "" } else { "; " };
                failure.with_hint(format!(
                    "{hint}{sep}flags not given on the command line come from config file \"{}\"",
                    path.display()
                ))
            }
            _ => failure,
        }
    }

    /// With `--metrics`: the registry, its endpoint bound (a bind failure is an error now,
    /// not later) and answering on the current runtime until `shutdown`.
    pub async fn start_metrics(
        &self,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Option<Arc<Metrics>>, Failure> {
        let Some(text) = &self.metrics else {
            return Ok(None);
        };
        let addr = resolve(text)?;
        let metrics = Metrics::new();
        let server = MetricsServer::bind(addr, Arc::clone(&metrics))
            .await
            .map_err(|e| {
                let failure = Failure::new(e.to_string());
                match e.hint() {
                    Some(hint) => failure.with_hint(hint),
                    None => failure,
                }
            })?;
        if let Ok(bound) = server.local_addr() {
            tracing::info!("serving metrics on http://{bound}/metrics and /healthz");
        }
        tokio::spawn(server.run(shutdown));
        Ok(Some(metrics))
    }
}

/// `HOST:PORT` (a name, an IPv4 address, or `[IPv6]`) to the first address it names.
fn resolve(text: &str) -> Result<SocketAddr, Failure> {
    let usage = |why: String| {
        Failure::new(format!("could not listen on {text} for metrics: {why}"))
            .with_hint("--metrics takes HOST:PORT, e.g. 127.0.0.1:9187 or [::1]:9187")
    };
    let mut addrs = text.to_socket_addrs().map_err(|e| usage(e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| usage("the name has no address".into()))
}
