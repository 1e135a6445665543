//! A randomized run of mixed faults on a two-node synchronous cluster with a witness and an
//! agent per node, each link through a proxy the test black-holes, under a continuous write
//! load (`target_session_attrs=read-write`): kill -9 of the primary's server, the primary
//! isolated, frozen (SIGSTOP), a 2 s blip, the standby isolated. After every trial: exactly
//! one node takes writes, the other is its healthy standby, and every commit a client saw
//! acknowledged is on the primary. The seed is printed (WALFERRY_SEED=N repeats a run;
//! WALFERRY_TRIALS=N changes the count, 20 by default).

mod common;
mod ha_support;

use std::time::{Duration, Instant};

use common::{PgCluster, HOST};
use ha_support::{
    epoch_of, missing, node, primary_of, server_pids, writer_pair, Lab, Proxy, Writer,
};

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillPrimary,
    IsolatePrimary,
    FreezePrimary,
    BlipPrimary,
    IsolateStandby,
}

const FAULTS: [Fault; 5] = [
    Fault::KillPrimary,
    Fault::IsolatePrimary,
    Fault::FreezePrimary,
    Fault::BlipPrimary,
    Fault::IsolateStandby,
];

struct Node<'a> {
    name: &'static str,
    cluster: &'a PgCluster,
    pg: Proxy,
    witness: Proxy,
}

impl Node<'_> {
    fn isolate(&self) {
        self.pg.block();
        self.witness.block();
    }

    fn heal(&self) {
        self.pg.unblock();
        self.witness.unblock();
    }

    fn signal_all(&self, sig: i32) {
        for p in server_pids(self.cluster) {
            // SAFETY: kill(2) on the pids of the test's own server.
            unsafe { libc::kill(p, sig) };
        }
    }
}

fn writable(c: &PgCluster) -> bool {
    c.try_psql("SELECT NOT pg_is_in_recovery()").as_deref() == Ok("t")
}

#[test]
fn random_faults_never_make_two_writers_nor_lose_an_acknowledged_commit() {
    let mut rng = common::Rng::from_env_or_time("WALFERRY_SEED");
    let seed = rng.seed();
    let trials: usize = std::env::var("WALFERRY_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    eprintln!("random faults: {trials} trials (WALFERRY_SEED={seed} repeats this run)");

    let (a, b) = writer_pair();
    let mut lab = Lab::new_synchronous(4.0);
    let witness_port = lab.witness_port();
    let nodes = [
        Node {
            name: "a",
            cluster: &a,
            pg: Proxy::start(a.port()),
            witness: Proxy::start(witness_port),
        },
        Node {
            name: "b",
            cluster: &b,
            pg: Proxy::start(b.port()),
            witness: Proxy::start(witness_port),
        },
    ];
    // Every primary waits for its standby's flush before acknowledging a commit (RPO 0).
    let sync = ["--synchronous-standby-names", "a, b"];
    for n in &nodes {
        lab.agent_via(n.name, n.cluster, n.pg.port, &n.witness.addr(), &sync);
    }
    a.psql("ALTER SYSTEM SET synchronous_standby_names = 'a, b'");
    a.psql("SELECT pg_reload_conf()");
    let writer = Writer::start(
        1,
        format!(
            "host={HOST},{HOST} port={},{} user=postgres dbname=postgres \
             target_session_attrs=read-write connect_timeout=2",
            a.port(),
            b.port()
        ),
    );

    // Settled: the witness's primary is healthy and writable, the other node its healthy
    // standby at the same epoch, and not writable; `min_epoch` rules out the state from
    // before a fault that must fail over.
    let steady = |lab: &mut Lab, what: &str, min_epoch: u64| -> &'static str {
        let mut primary = "";
        lab.wait_status(what, Duration::from_secs(120), |s| {
            let Some(p) = primary_of(s) else { return false };
            let other = if p == "a" { "b" } else { "a" };
            let (pc, oc) = if p == "a" { (&a, &b) } else { (&b, &a) };
            let ok = s["promotion_pending"].is_null()
                && epoch_of(s) >= min_epoch
                && node(s, p).is_some_and(|n| n["role"] == "primary" && n["health"] == "ok")
                && node(s, other).is_some_and(|n| {
                    n["role"] == "standby" && n["health"] == "ok" && n["epoch"] == s["epoch"]
                })
                && writable(pc)
                && !writable(oc);
            if ok {
                primary = if p == "a" { "a" } else { "b" };
            }
            ok
        });
        primary
    };

    let mut primary = steady(&mut lab, "the cluster to settle", 1);
    let mut log = Vec::new();
    for trial in 1..=trials {
        let fault = FAULTS[rng.range(0, FAULTS.len() as u64) as usize];
        let (p, s) = if primary == "a" {
            (&nodes[0], &nodes[1])
        } else {
            (&nodes[1], &nodes[0])
        };
        let before = writer.count();
        common::wait_until("commits before the fault", Duration::from_secs(60), || {
            writer.count() >= before + 5
        });
        let epoch_before = epoch_of(&lab.status().expect("status"));
        let started = Instant::now();
        match fault {
            Fault::KillPrimary => p.signal_all(libc::SIGKILL),
            Fault::IsolatePrimary => {
                p.isolate();
                std::thread::sleep(Duration::from_secs(7));
                p.heal();
            }
            Fault::FreezePrimary => {
                p.signal_all(libc::SIGSTOP);
                std::thread::sleep(Duration::from_secs(7));
                p.signal_all(libc::SIGCONT);
            }
            Fault::BlipPrimary => {
                p.isolate();
                std::thread::sleep(Duration::from_secs(2));
                p.heal();
            }
            Fault::IsolateStandby => {
                s.isolate();
                std::thread::sleep(Duration::from_secs(5));
                s.heal();
            }
        }
        // A killed, isolated or frozen primary must be replaced.
        let must_fail_over = matches!(
            fault,
            Fault::KillPrimary | Fault::IsolatePrimary | Fault::FreezePrimary
        );
        let min_epoch = epoch_before + u64::from(must_fail_over);
        let now_primary = steady(
            &mut lab,
            &format!("trial {trial} ({fault:?}) to settle"),
            min_epoch,
        );
        let status = lab.status().expect("status");
        let (np, ns) = if now_primary == "a" {
            (&a, &b)
        } else {
            (&b, &a)
        };
        assert!(
            writable(np) && !writable(ns),
            "trial {trial} ({fault:?}, seed {seed}): not exactly one writer"
        );
        let acked = writer.acked.lock().unwrap().clone();
        let lost = missing(np, 1, &acked);
        assert!(
            lost.is_empty(),
            "trial {trial} ({fault:?}, seed {seed}): acknowledged commits lost: {lost:?}\n{}",
            lab.logs()
        );
        if matches!(fault, Fault::BlipPrimary | Fault::IsolateStandby) {
            assert_eq!(
                (now_primary, epoch_of(&status)),
                (primary, epoch_before),
                "trial {trial} ({fault:?}, seed {seed}): this fault must not fail over"
            );
        }
        log.push(format!(
            "trial {trial:>2}: {fault:<15?} primary {primary} -> {now_primary} (epoch {epoch_before} -> {}), settled after {:.1} s, {} commits acknowledged so far",
            epoch_of(&status),
            started.elapsed().as_secs_f64(),
            acked.len()
        ));
        eprintln!("{}", log.last().unwrap());
        primary = now_primary;
    }
    let acked = writer.finish();
    let (np, ns) = if primary == "a" { (&a, &b) } else { (&b, &a) };
    np.psql("INSERT INTO t VALUES (2, 1)");
    ns.wait_for_replay(np.current_wal_lsn());
    assert_eq!(missing(ns, 1, &acked), Vec::<i64>::new(), "seed {seed}");
    eprintln!(
        "seed {seed}: {} trials, {} commits acknowledged, none lost",
        trials,
        acked.len()
    );
}
