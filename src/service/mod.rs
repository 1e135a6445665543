//! Running walferry as a service: what it tells monitoring. [`Metrics`] is the registry the
//! receiver (and the relay's downstream sessions) update as they go, with the health state
//! behind `/healthz`; [`http`] serves both on `--metrics HOST:PORT`.

pub mod http;
mod lag;
pub mod metrics;

pub use http::{serve, MetricsServer, ServeError};
pub use metrics::{DownstreamMetrics, Health, Metrics, ReceiverMetrics};
