//! End-to-end replication lag probe for `scripts/bench-relay.sh`: how long after a commit
//! is acknowledged on the primary does each standby show it?
//!
//! Every `--interval-ms` the probe sets `lag_probe.v` to the next number on the primary
//! (one autocommit UPDATE; the clock starts when the commit returns, i.e. once the WAL is
//! flushed locally and walsenders may send it), then polls every standby with a prepared
//! `SELECT v` until each shows that number or a later one. Standbys are polled in turn in one
//! loop whose order alternates per sample, so the polling delay (one round trip per standby)
//! is the same for all of them and cancels out of a difference between two standbys; it is
//! part of each absolute figure. Optionally it also samples PostgreSQL's own `replay_lag`
//! for one application_name from `pg_stat_replication` on the primary.
//!
//! Only for benchmarks: connection strings come from the command line, plain text, no TLS.
//!
//! ```text
//! relay_lag_probe --primary CONN --standby NAME=CONN... [--seconds 20] [--interval-ms 50]
//!                 [--stat-app NAME]
//! ```
//!
//! Prints one line per standby (`probe NAME samples=N timeouts=N median_us=.. p99_us=..
//! max_us=..`); for each standby after the first, one `paired NAME ...` line in the same
//! format: per commit, how much later it showed on NAME than on the first standby, over the
//! commits both showed (a stall both paths share, on the primary or in the probe, cancels
//! out; a difference is negative when the first standby was the later one); and, with `--stat-app`, one `replay_lag NAME ...`
//! line.

use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

/// A standby that has not shown a sample after this long counts as a timeout.
const GIVE_UP: Duration = Duration::from_secs(10);

struct Args {
    primary: String,
    standbys: Vec<(String, String)>,
    seconds: u64,
    interval: Duration,
    stat_app: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        primary: String::new(),
        standbys: Vec::new(),
        seconds: 20,
        interval: Duration::from_millis(50),
        stat_app: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--primary" => args.primary = value()?,
            "--standby" => {
                let v = value()?;
                let (name, conn) = v
                    .split_once('=')
                    .ok_or(format!("--standby {v}: expected NAME=CONNINFO"))?;
                args.standbys.push((name.to_string(), conn.to_string()));
            }
            "--seconds" => args.seconds = value()?.parse().map_err(|e| format!("{e}"))?,
            "--interval-ms" => {
                args.interval = Duration::from_millis(value()?.parse().map_err(|e| format!("{e}"))?)
            }
            "--stat-app" => args.stat_app = Some(value()?),
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    if args.primary.is_empty() || args.standbys.is_empty() {
        return Err("need --primary and at least one --standby".into());
    }
    Ok(args)
}

async fn connect(conninfo: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(conninfo, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("relay_lag_probe: connection error: {e}");
        }
    });
    Ok(client)
}

/// Nearest-rank quantile of sorted samples.
fn quantile(sorted: &[i64], q: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(kind: &str, name: &str, mut samples: Vec<i64>, timeouts: usize) -> String {
    samples.sort_unstable();
    format!(
        "{kind} {name} samples={} timeouts={timeouts} median_us={} p99_us={} max_us={}",
        samples.len(),
        quantile(&samples, 0.5),
        quantile(&samples, 0.99),
        samples.last().copied().unwrap_or(0)
    )
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let primary = connect(&args.primary).await?;
    let update = primary
        .prepare("UPDATE lag_probe SET v = $1 WHERE id = 1")
        .await?;
    let stat = primary
        .prepare(
            "SELECT (extract(epoch FROM replay_lag) * 1000000)::float8 \
             FROM pg_stat_replication WHERE application_name = $1",
        )
        .await?;
    let mut n: i64 = primary
        .query_one("SELECT v FROM lag_probe WHERE id = 1", &[])
        .await?
        .get(0);

    let mut standbys = Vec::new();
    for (name, conninfo) in &args.standbys {
        let client = connect(conninfo).await?;
        let select = client
            .prepare("SELECT v FROM lag_probe WHERE id = 1")
            .await?;
        standbys.push((name.clone(), client, select));
    }

    let k = standbys.len();
    let mut lags: Vec<Vec<i64>> = vec![Vec::new(); k];
    let mut paired: Vec<Vec<i64>> = vec![Vec::new(); k];
    let mut timeouts = vec![0usize; k];
    let mut stat_lags = Vec::new();
    let mut stat_missing = 0usize;
    let end = Instant::now() + Duration::from_secs(args.seconds);
    let mut tick = tokio::time::Instant::now();
    let mut sample = 0usize;
    while Instant::now() < end {
        n += 1;
        primary.execute(&update, &[&n]).await?;
        let t0 = Instant::now();
        let mut seen: Vec<Option<Duration>> = vec![None; k];
        while seen.iter().any(Option::is_none) && t0.elapsed() < GIVE_UP {
            for j in 0..k {
                // Alternate the order per sample: neither standby is always polled first.
                let i = if sample % 2 == 0 { j } else { k - 1 - j };
                if seen[i].is_some() {
                    continue;
                }
                let (_, client, select) = &standbys[i];
                let v: i64 = client.query_one(select, &[]).await?.get(0);
                if v >= n {
                    seen[i] = Some(t0.elapsed());
                }
            }
        }
        for (i, s) in seen.iter().enumerate() {
            match s {
                Some(d) => lags[i].push(d.as_micros() as i64),
                None => timeouts[i] += 1,
            }
            if let (Some(d), Some(first)) = (s, seen[0]) {
                paired[i].push(d.as_micros() as i64 - first.as_micros() as i64);
            }
        }
        if let Some(app) = &args.stat_app {
            match primary.query_opt(&stat, &[app]).await? {
                Some(row) => match row.get::<_, Option<f64>>(0) {
                    Some(us) => stat_lags.push(us as i64),
                    None => stat_missing += 1,
                },
                None => stat_missing += 1,
            }
        }
        sample += 1;
        tick += args.interval;
        tokio::time::sleep_until(tick).await;
    }

    for (i, (name, _, _)) in standbys.iter().enumerate() {
        println!(
            "{}",
            summary("probe", name, std::mem::take(&mut lags[i]), timeouts[i])
        );
    }
    for (i, (name, _, _)) in standbys.iter().enumerate().skip(1) {
        let missed = timeouts[i].max(timeouts[0]);
        println!(
            "{}",
            summary("paired", name, std::mem::take(&mut paired[i]), missed)
        );
    }
    if let Some(app) = &args.stat_app {
        println!("{}", summary("replay_lag", app, stat_lags, stat_missing));
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("relay_lag_probe: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(args).await {
        eprintln!("relay_lag_probe: {e}");
        std::process::exit(1);
    }
}
