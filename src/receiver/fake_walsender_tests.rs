//! `receive()` against a scripted walsender on 127.0.0.1:0 that serves synthetic WAL: the
//! byte-level tier, for what a real server never does — send WAL that fails validation.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

use std::sync::Arc;

use super::{
    receive, receive_publishing, LiveTail, Outcome, Position, Published, ReceiveError,
    ReceiveOptions, Upstream,
};
use crate::archive::ArchiveError;
use crate::conninfo::{ConnParams, Host, PasswordPrompt, SslMode};
use crate::protocol::backend::{encode_result_set, Authentication, CopyResponse};
use crate::protocol::frame::MAX_MESSAGE_LEN;
use crate::protocol::replication::encode_xlog_data;
use crate::protocol::{BackendMessage, FrontendMessage, StandbyMessage, StartupPacket};
use crate::wal::synth::WalBuilder;
use crate::wal::{Lsn, TimeLineId};

const SEG: u64 = 1 << 20;
const SYSID: u64 = 7_300_000_000_000_000_007;
const SEG1: &str = "000000010000000000000001";

/// Segment 1 and some of segment 2, with a record crossing the boundary.
fn wal() -> (Vec<u8>, Lsn) {
    wal_into_segment_2(200_000)
}

/// Segment 1 and at least `more` bytes of segment 2; and the LSN of the record crossing
/// the boundary.
fn wal_into_segment_2(more: u64) -> (Vec<u8>, Lsn) {
    let mut b = WalBuilder::new(Lsn(SEG), TimeLineId(1), SEG, SYSID);
    let mut crossing = Lsn(0);
    while b.end().0 < 2 * SEG + more {
        let lsn = b.filler(3000);
        if lsn.0 < 2 * SEG && b.end().0 > 2 * SEG {
            crossing = lsn;
        }
    }
    (b.into_bytes(), crossing)
}

/// How [`Walsender::serve_cut`] reports that its bytes are written: the connection's
/// (server, client) addresses.
type Sent = oneshot::Sender<(SocketAddr, SocketAddr)>;

/// The send and receive queues of the loopback TCP socket `local` connected to `peer`, as
/// /proc/net/tcp lists them: bytes sent but not yet acknowledged by the peer, and bytes
/// received but not yet read by the process. `None` when the socket is not listed.
fn tcp_queues(local: SocketAddr, peer: SocketAddr) -> Option<(u64, u64)> {
    // An IPv4 address is written as the hex of its in-memory (network order) word, the
    // port in host order.
    let hex = |a: SocketAddr| match a {
        SocketAddr::V4(a) => format!(
            "{:08X}:{:04X}",
            u32::from_ne_bytes(a.ip().octets()),
            a.port()
        ),
        SocketAddr::V6(_) => unreachable!("the fake walsender listens on 127.0.0.1"),
    };
    let (local, peer) = (hex(local), hex(peer));
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&local.as_str()) || f.get(2) != Some(&peer.as_str()) {
            return None;
        }
        let (tx, rx) = f.get(4)?.split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

struct Walsender {
    sock: TcpStream,
    buf: BytesMut,
}

impl Walsender {
    async fn recv(&mut self) -> Option<FrontendMessage> {
        loop {
            if let Some(m) = FrontendMessage::parse(&mut self.buf, MAX_MESSAGE_LEN).unwrap() {
                return Some(m);
            }
            if self.sock.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    }

    async fn send(&mut self, msgs: &[BackendMessage]) {
        let mut out = BytesMut::new();
        for m in msgs {
            m.encode(&mut out).unwrap();
        }
        self.sock.write_all(&out).await.unwrap();
    }

    async fn rows(&mut self, columns: &[(&str, u32)], row: Vec<Option<&[u8]>>, tag: &str) {
        let mut out = BytesMut::new();
        encode_result_set(columns, &[row], tag, &mut out).unwrap();
        BackendMessage::ReadyForQuery { status: b'I' }
            .encode(&mut out)
            .unwrap();
        self.sock.write_all(&out).await.unwrap();
    }

    /// Serve one connection: startup, IDENTIFY_SYSTEM, SHOW, START_REPLICATION, then `wal`
    /// in 128 KiB messages; returns every flush position the client reported.
    async fn serve(listener: TcpListener, wal: Vec<u8>) -> Vec<Lsn> {
        Self::serve_cut(listener, wal, None).await
    }

    /// As [`Walsender::serve`]; with `cut`, only the first `cut.0` bytes of the stream's
    /// frames go out (the server then stalls, mid-message if `cut` says so), and once they
    /// are written the connection's (server, client) addresses are sent on `cut.1`.
    async fn serve_cut(
        listener: TcpListener,
        wal: Vec<u8>,
        cut: Option<(usize, Sent)>,
    ) -> Vec<Lsn> {
        Self::serve_with(listener, wal, cut, 128 * 1024).await
    }

    /// As [`Walsender::serve_cut`], sending `message` bytes of WAL per XLogData message.
    async fn serve_with(
        listener: TcpListener,
        wal: Vec<u8>,
        cut: Option<(usize, Sent)>,
        message: usize,
    ) -> Vec<Lsn> {
        let (sock, _) = listener.accept().await.unwrap();
        let mut s = Walsender {
            sock,
            buf: BytesMut::new(),
        };
        loop {
            if StartupPacket::parse(&mut s.buf).unwrap().is_some() {
                break;
            }
            s.sock.read_buf(&mut s.buf).await.unwrap();
        }
        s.send(&[
            BackendMessage::Authentication(Authentication::Ok),
            BackendMessage::ReadyForQuery { status: b'I' },
        ])
        .await;
        let sysid = SYSID.to_string();
        loop {
            let Some(FrontendMessage::Query(q)) = s.recv().await else {
                panic!("client went away before START_REPLICATION");
            };
            if q.starts_with("IDENTIFY_SYSTEM") {
                let cols = [
                    ("systemid", 25),
                    ("timeline", 23),
                    ("xlogpos", 25),
                    ("dbname", 25),
                ];
                let row = vec![
                    Some(sysid.as_bytes()),
                    Some(&b"1"[..]),
                    Some(&b"0/100000"[..]),
                    None,
                ];
                s.rows(&cols, row, "IDENTIFY_SYSTEM").await;
            } else if q.starts_with("SHOW") {
                s.rows(&[("wal_segment_size", 25)], vec![Some(&b"1MB"[..])], "SHOW")
                    .await;
            } else if q.starts_with("START_REPLICATION") {
                assert!(q.contains("0/100000"), "{q}");
                break;
            } else {
                panic!("unexpected query {q}");
            }
        }
        s.send(&[BackendMessage::CopyBothResponse(CopyResponse {
            format: 0,
            column_formats: vec![],
        })])
        .await;
        let mut payload = BytesMut::new();
        let mut frames = BytesMut::new();
        for (i, chunk) in wal.chunks(message).enumerate() {
            let start = Lsn(SEG + (i * message) as u64);
            payload.clear();
            encode_xlog_data(
                start,
                Lsn(start.0 + chunk.len() as u64),
                0,
                chunk,
                &mut payload,
            );
            BackendMessage::CopyData(payload.clone().freeze())
                .encode(&mut frames)
                .unwrap();
            if cut.is_none() {
                s.sock.write_all(&frames.split()).await.unwrap();
            }
        }
        if let Some((cut, sent)) = cut {
            s.sock.write_all(&frames[..cut]).await.unwrap();
            let ends = (s.sock.local_addr().unwrap(), s.sock.peer_addr().unwrap());
            let _ = sent.send(ends);
        }
        let mut flushes = Vec::new();
        while let Some(m) = s.recv().await {
            if let FrontendMessage::CopyData(body) = m {
                if let Ok(StandbyMessage::StatusUpdate(u)) = StandbyMessage::parse(&body) {
                    flushes.push(u.flush);
                }
            }
        }
        flushes
    }
}

fn options(port: u16, dir: &std::path::Path) -> ReceiveOptions {
    let conn = ConnParams {
        hosts: vec![Host::Tcp("127.0.0.1".into())],
        ports: vec![port],
        user: "rep".into(),
        password: None,
        passfile: None,
        dbname: None,
        application_name: "walferry-test".into(),
        sslmode: SslMode::Disable,
        sslrootcert: None,
        sslcert: None,
        sslkey: None,
        sslpassword: None,
        sslcrl: None,
        sslcrldir: None,
        target_session_attrs: Default::default(),
        channel_binding: Default::default(),
        connect_timeout: Some(Duration::from_secs(5)),
        keepalives: Default::default(),
        prompt: PasswordPrompt::Never,
        session: Default::default(),
    };
    let mut opts = ReceiveOptions::new(conn, dir.to_path_buf());
    opts.synchronous = true;
    opts.no_loop = true;
    opts
}

async fn run(
    wal: Vec<u8>,
    endpos: Option<Lsn>,
    dir: &std::path::Path,
    synchronous: bool,
) -> (Result<Outcome, ReceiveError>, Vec<Lsn>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(Walsender::serve(listener, wal));
    let mut opts = options(port, dir);
    opts.endpos = endpos;
    opts.synchronous = synchronous;
    let (_stop_tx, stop_rx) = watch::channel(false);
    let result = tokio::time::timeout(Duration::from_secs(30), receive(&opts, stop_rx))
        .await
        .expect("receive did not finish");
    let flushes = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server did not finish")
        .unwrap();
    (result, flushes)
}

// Each scenario runs in both modes: `--synchronous` checks and writes on the network task,
// async mode checks there and ships page-aligned batches to the writer thread.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_wal_is_archived_and_acknowledged() {
    valid_wal_is_archived_and_acknowledged_in(true).await;
    valid_wal_is_archived_and_acknowledged_in(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_wal_is_never_acknowledged_nor_given_a_final_name() {
    corrupt_wal_is_never_acknowledged_nor_given_a_final_name_in(true).await;
    corrupt_wal_is_never_acknowledged_nor_given_a_final_name_in(false).await;
}

async fn valid_wal_is_archived_and_acknowledged_in(synchronous: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = wal();
    let end = Lsn(SEG + wal.len() as u64 - 100_000);
    let (result, flushes) = run(wal.clone(), Some(end), dir.path(), synchronous).await;
    assert!(
        matches!(result, Ok(Outcome::EndposReached(l)) if l >= end),
        "synchronous {synchronous}: {result:?}"
    );
    assert_eq!(
        std::fs::read(dir.path().join(SEG1)).unwrap(),
        &wal[..SEG as usize]
    );
    assert!(flushes.iter().any(|f| *f >= end), "{flushes:?}");
}

/// `--synchronous` gathers the messages read in one go into one buffer before writing:
/// small ones, ones that overflow what is gathered, and ones larger than the whole buffer
/// (no PostgreSQL walsender sends those, another server might) all reach the archive intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_mode_archives_messages_of_any_size() {
    let (wal, _) = wal_into_segment_2(SEG + 300_000);
    let end = Lsn(3 * SEG);
    for message in [3001, 700_001, 1_500_000] {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(Walsender::serve_with(listener, wal.clone(), None, message));
        let mut opts = options(port, dir.path());
        opts.endpos = Some(end);
        let (_stop_tx, stop_rx) = watch::channel(false);
        let result = tokio::time::timeout(Duration::from_secs(30), receive(&opts, stop_rx))
            .await
            .expect("receive did not finish");
        assert!(
            matches!(result, Ok(Outcome::EndposReached(l)) if l >= end),
            "{message}-byte messages: {result:?}"
        );
        for (i, name) in [SEG1, "000000010000000000000002"].into_iter().enumerate() {
            let want = &wal[i * SEG as usize..(i + 1) * SEG as usize];
            let got = std::fs::read(dir.path().join(name)).unwrap();
            assert!(got == want, "{message}-byte messages: {name} differs");
        }
        server.abort();
    }
}

async fn corrupt_wal_is_never_acknowledged_nor_given_a_final_name_in(synchronous: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (mut wal, crossing) = wal();
    // One flipped bit in the payload of the record that crosses into segment 2.
    wal[SEG as usize + 40 + 16] ^= 0x04;
    let (result, flushes) = run(wal, None, dir.path(), synchronous).await;
    let err = result.expect_err("corrupt WAL was accepted");
    match &err {
        ReceiveError::Archive(ArchiveError::InvalidWal { source, .. }) => {
            assert_eq!(source.lsn(), crossing, "synchronous {synchronous}")
        }
        other => panic!("expected InvalidWal, got {other}"),
    }
    assert!(err.is_fatal());
    assert!(err.hint().is_some());
    assert!(
        flushes.iter().all(|f| *f <= crossing),
        "acknowledged past the bad record: {flushes:?}"
    );
    assert!(
        !dir.path().join(SEG1).exists(),
        "a segment with bad WAL got its final name"
    );
    assert!(dir.path().join(format!("{SEG1}.partial")).exists());
}

/// Async mode holds a batch back briefly after a full-size (catch-up) message, expecting
/// more; when the walsender then goes quiet the batch must still reach the disk, with no
/// keepalive, status tick or stop to push it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_mode_writes_the_last_catch_up_batch_without_waiting_for_more() {
    let dir = tempfile::tempdir().unwrap();
    // Segment 1 and two full 128 KiB messages of segment 2.
    let len = SEG as usize + 2 * 128 * 1024;
    let (mut wal, _) = wal_into_segment_2(len as u64);
    wal.truncate(len);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(Walsender::serve(listener, wal.clone()));
    let mut opts = options(port, dir.path());
    opts.synchronous = false;
    opts.status_interval = None;
    let (stop_tx, stop_rx) = watch::channel(false);
    let client = tokio::spawn(async move { receive(&opts, stop_rx).await });
    let partial = dir.path().join("000000010000000000000002.partial");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let on_disk = loop {
        let got = std::fs::read(&partial).unwrap_or_default();
        if got.len() >= len - SEG as usize && got[..len - SEG as usize] == wal[SEG as usize..] {
            break true;
        }
        if tokio::time::Instant::now() > deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    stop_tx.send(true).unwrap();
    let result = client.await.unwrap();
    assert!(on_disk, "the last batch stayed in memory");
    assert!(matches!(result, Ok(Outcome::Stopped(_))), "{result:?}");
    server.await.unwrap();
}

/// A walsender that stalls in the middle of a message must not hold up a stop request:
/// async mode reads payloads straight into its batches, and that read gives way to SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_request_is_honoured_while_a_message_is_half_received() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = wal();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Three whole messages, then 50 KiB of the fourth's payload.
    let cut = 3 * (5 + 25 + 128 * 1024) + 5 + 25 + 50_000;
    let (sent_tx, sent_rx) = oneshot::channel();
    let server = tokio::spawn(Walsender::serve_cut(
        listener,
        wal.clone(),
        Some((cut, sent_tx)),
    ));
    let mut opts = options(port, dir.path());
    opts.synchronous = false;
    let (stop_tx, stop_rx) = watch::channel(false);
    let client = tokio::spawn(async move { receive(&opts, stop_rx).await });
    // Let the client take in what was sent, then ask it to stop: wait until the server has
    // written it and none of it is unacknowledged on the server's side or unread on the
    // client's. The client reads at most 4 KiB past a payload (a next header), so it has
    // then taken the last 50 KB as the fourth message's payload and waits for the rest.
    tokio::time::timeout(Duration::from_secs(10), async {
        let (server_end, client_end) = sent_rx.await.expect("server sent its bytes");
        while tcp_queues(server_end, client_end).map(|(tx, _)| tx) != Some(0)
            || tcp_queues(client_end, server_end).map(|(_, rx)| rx) != Some(0)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the client did not read what the server sent");
    stop_tx.send(true).unwrap();
    let result = tokio::time::timeout(Duration::from_secs(5), client)
        .await
        .expect("stop was not honoured while a message was half received")
        .unwrap();
    assert!(matches!(result, Ok(Outcome::Stopped(_))), "{result:?}");
    // What arrived is on disk, in the .partial.
    let got = std::fs::read(dir.path().join(format!("{SEG1}.partial"))).unwrap();
    let have = 3 * 128 * 1024 + 50_000;
    assert_eq!(&got[..have], &wal[..have]);
    server.abort();
}

/// Segment 1 and 200 KB of segment 2 in 3000-byte records; the LSNs of the records.
fn wal_with_records() -> (Vec<u8>, Vec<Lsn>) {
    let mut b = WalBuilder::new(Lsn(SEG), TimeLineId(1), SEG, SYSID);
    let mut lsns = Vec::new();
    while b.end().0 < 2 * SEG + 200_000 {
        lsns.push(b.filler(3000));
    }
    (b.into_bytes(), lsns)
}

/// Regression: WAL that decodes as "end of WAL" in the middle of the stream (a zero record
/// length, or a zeroed page) put the validator in its ended state, after which it took every
/// byte unchecked: the receiver stalled silently with the flush position frozen. It must
/// stop with the same error as any invalid WAL, acknowledging nothing past the last record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zeros_where_wal_should_go_on_stop_the_receiver_as_invalid_wal() {
    let (wal, lsns) = wal_with_records();
    // The first record that starts in segment 2 after its first page.
    let victim = *lsns
        .iter()
        .find(|l| l.0 > 2 * SEG + 8192)
        .expect("records in segment 2");
    let at = (victim.0 - SEG) as usize;
    let mut zero_length = wal.clone();
    zero_length[at..at + 4].fill(0);
    // A zeroed page that a record continues into: the WAL "ends" at that record's start.
    let page = (victim.0 + 4 * 8192) / 8192 * 8192;
    let cut_record = *lsns.iter().rev().find(|l| l.0 < page).unwrap();
    let mut zero_page = wal.clone();
    let p = (page - SEG) as usize;
    zero_page[p..p + 8192].fill(0);

    for (what, bad, stop_lsn) in [
        ("zero record length", zero_length, victim),
        ("zeroed page", zero_page, cut_record),
    ] {
        for synchronous in [true, false] {
            let dir = tempfile::tempdir().unwrap();
            let (result, flushes) = run(bad.clone(), None, dir.path(), synchronous).await;
            let err = result.expect_err("WAL that ends mid-stream was accepted");
            match &err {
                ReceiveError::Archive(ArchiveError::InvalidWal { source, path }) => {
                    assert_eq!(source.lsn(), stop_lsn, "{what}, synchronous {synchronous}");
                    assert!(
                        path.ends_with("000000010000000000000002.partial"),
                        "{what}: {}",
                        path.display()
                    );
                }
                other => panic!("{what}: expected InvalidWal, got {other}"),
            }
            assert!(err.is_fatal(), "{what}");
            assert!(
                flushes.iter().all(|f| *f <= stop_lsn),
                "{what}, synchronous {synchronous}: acknowledged past the end: {flushes:?}"
            );
        }
    }
}

/// Regression: segment 1, full, waits as `.partial` until the record crossing into segment 2
/// is checked, while segment 2's `.partial` already exists. A stop (or crash, or lost
/// connection) in that window left both `.partial`, and resume started at segment 2:
/// segment 1 was never streamed again nor renamed, a hole no restore can cross. Resume must
/// start at segment 1 (the fake walsender asserts START_REPLICATION 0/100000).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_inside_the_record_crossing_a_segment_end_resumes_at_the_older_segment() {
    let (wal, lsns) = wal_with_records();
    let crossing = *lsns.iter().rev().find(|l| l.0 < 2 * SEG).unwrap();
    let after = *lsns.iter().find(|l| l.0 > 2 * SEG).unwrap();
    // Into segment 2 up to the middle of the crossing record's remainder.
    let into_seg2 = ((after.0 - 2 * SEG) / 2) as usize;
    assert!(
        into_seg2 > 40,
        "the crossing record barely reaches segment 2"
    );
    let sent = wal[..SEG as usize + into_seg2].to_vec();
    let seg2_partial = dir_file("000000010000000000000002.partial");
    for synchronous in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(Walsender::serve(listener, sent.clone()));
        let mut opts = options(port, dir.path());
        opts.synchronous = synchronous;
        let (stop_tx, stop_rx) = watch::channel(false);
        let client = tokio::spawn(async move { receive(&opts, stop_rx).await });
        // Wait until the bytes of segment 2 are on disk, then stop.
        let want = &wal[SEG as usize..SEG as usize + into_seg2];
        let arrived = poll(Duration::from_secs(10), || {
            std::fs::read(seg2_partial(dir.path()))
                .is_ok_and(|got| got.len() >= want.len() && &got[..want.len()] == want)
        })
        .await;
        assert!(
            arrived,
            "synchronous {synchronous}: segment 2's bytes never arrived"
        );
        stop_tx.send(true).unwrap();
        let result = client.await.unwrap();
        assert!(
            matches!(result, Ok(Outcome::Stopped(l)) if l <= crossing),
            "synchronous {synchronous}: {result:?}"
        );
        server.abort();
        // The window: segment 1 complete in content but not checked, both `.partial`.
        assert!(dir.path().join(format!("{SEG1}.partial")).exists());
        assert!(!dir.path().join(SEG1).exists());
        assert!(seg2_partial(dir.path()).exists());

        // Resume: streaming restarts at segment 1, which now gets its final name.
        let end = Lsn(SEG + wal.len() as u64 - 50_000);
        let (result, _) = run(wal.clone(), Some(end), dir.path(), synchronous).await;
        assert!(
            matches!(result, Ok(Outcome::EndposReached(_))),
            "synchronous {synchronous}: {result:?}"
        );
        assert_eq!(
            std::fs::read(dir.path().join(SEG1)).unwrap(),
            &wal[..SEG as usize]
        );
        assert!(!dir.path().join(format!("{SEG1}.partial")).exists());
    }
}

fn dir_file(name: &'static str) -> impl Fn(&std::path::Path) -> std::path::PathBuf {
    move |d| d.join(name)
}

/// Poll `cond` every 20 ms until it holds or `timeout` passes; whether it held.
async fn poll(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a receive run to `--endpos` published, and what the fake walsender was told.
struct Observed {
    wal: Vec<u8>,
    end: Lsn,
    seen: Vec<Position>,
    flushes: Vec<Lsn>,
    tail: Arc<LiveTail>,
    upstream: Upstream,
}

/// Receive from a fake walsender to an `--endpos` short of its WAL's end, with a live tail,
/// recording every position published.
async fn observe_positions(synchronous: bool, serve_unflushed: bool) -> Observed {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = wal();
    let end = Lsn(SEG + wal.len() as u64 - 100_000);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(Walsender::serve(listener, wal.clone()));
    let mut opts = options(port, dir.path());
    opts.endpos = Some(end);
    opts.synchronous = synchronous;
    opts.serve_unflushed = serve_unflushed;
    let tail = Arc::new(LiveTail::new(4 << 20));
    opts.live_tail = Some(tail.clone());
    let (_stop_tx, stop_rx) = watch::channel(false);
    let published = Published::new();
    let mut rx = published.position.subscribe();
    let seen = tokio::spawn(async move {
        let mut seen = Vec::new();
        while rx.changed().await.is_ok() {
            seen.push(*rx.borrow_and_update());
        }
        seen
    });
    let result = receive_publishing(&opts, stop_rx, &published).await;
    assert!(
        matches!(result, Ok(Outcome::EndposReached(_))),
        "{result:?}"
    );
    let upstream = published.upstream.borrow().clone().expect("upstream");
    drop(published);
    Observed {
        seen: seen.await.unwrap(),
        flushes: server.await.unwrap(),
        wal,
        end,
        tail,
        upstream,
    }
}

/// The archive's position is published for other tasks (the relay): validated and durable
/// WAL only, in both modes, and never past the last valid record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_durable_validated_position_is_published() {
    for synchronous in [true, false] {
        let Observed {
            wal,
            end,
            seen,
            tail,
            upstream,
            ..
        } = observe_positions(synchronous, false).await;
        assert_eq!((upstream.system_id, upstream.seg_size), (SYSID, SEG));
        assert_eq!(seen.first().map(|p| p.flushed), Some(Lsn(SEG)), "{seen:?}");
        assert!(seen.iter().all(|p| p.timeline == TimeLineId(1)), "{seen:?}");
        assert!(
            seen.windows(2).all(|w| w[0].flushed <= w[1].flushed),
            "{seen:?}"
        );
        let last = seen.last().unwrap().flushed;
        assert!(last >= end, "synchronous {synchronous}: {seen:?}");
        assert!(last.0 <= SEG + wal.len() as u64);
        // Without --serve-unflushed, downstreams are served durable WAL only.
        assert!(seen.iter().all(|p| p.servable == p.flushed), "{seen:?}");

        // The live tail holds the same WAL, checked, from the stream's start.
        let (tli, first, tail_end) = tail.range();
        assert_eq!((tli, first), (TimeLineId(1), Lsn(SEG)));
        assert!(tail_end >= last);
        let mut at = Lsn(SEG);
        while at < last {
            let b = tail.read(tli, at, 1 << 20).expect("held");
            let off = (at.0 - SEG) as usize;
            assert_eq!(&b[..], &wal[off..off + b.len()], "at {at}");
            at = Lsn(at.0 + b.len() as u64);
        }
    }
}

/// `serve_unflushed` (a relay's `--serve-unflushed`): validated WAL becomes servable once
/// written, ahead of or with its fsync, never past the last valid record, never behind what
/// is durable; the flush reported keeps its meaning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_wal_is_servable_with_serve_unflushed_and_the_reported_flush_keeps_its_meaning() {
    let Observed {
        wal,
        end,
        seen,
        flushes,
        tail,
        ..
    } = observe_positions(true, true).await;
    assert!(seen.iter().all(|p| p.servable >= p.flushed), "{seen:?}");
    assert!(
        seen.windows(2).all(|w| w[0].servable <= w[1].servable),
        "{seen:?}"
    );
    let last = *seen.last().unwrap();
    assert!(last.flushed >= end && last.servable.0 <= SEG + wal.len() as u64);
    // The tail holds everything servable.
    assert!(tail.range().2 >= last.servable);
    // The server was told only what was durable: never past the last flush published.
    assert!(flushes.iter().all(|f| *f <= last.flushed), "{flushes:?}");
}

/// `ack_limit` (a relay's `--sync-downstream` quorum) caps what is reported to the server,
/// in both modes; when it moves, the new position is reported at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_wait_for_the_ack_limit() {
    for synchronous in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = wal();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(Walsender::serve(listener, wal.clone()));
        let limit = Lsn(SEG + 300_000);
        let (limit_tx, limit_rx) = watch::channel(limit);
        let mut opts = options(port, dir.path());
        opts.synchronous = synchronous;
        opts.flush_eagerly = true;
        opts.ack_limit = Some(limit_rx);
        let (stop_tx, stop_rx) = watch::channel(false);
        let published = Published::new();
        let mut pos = published.position.subscribe();
        let all_received = Lsn(SEG + (wal.len() as u64 / (128 * 1024)) * 128 * 1024);
        let driver = async {
            tokio::time::timeout(
                Duration::from_secs(20),
                pos.wait_for(|p| p.flushed >= all_received),
            )
            .await
            .expect("WAL flushed")
            .unwrap();
            // Held back at the limit until it moves.
            tokio::time::sleep(Duration::from_millis(200)).await;
            limit_tx.send_replace(Lsn(u64::MAX));
            tokio::time::sleep(Duration::from_millis(300)).await;
            stop_tx.send_replace(true);
        };
        let (result, ()) = tokio::join!(receive_publishing(&opts, stop_rx, &published), driver);
        assert!(matches!(result, Ok(Outcome::Stopped(_))), "{result:?}");
        let flushes = server.await.unwrap();
        let first_over = flushes.iter().position(|f| *f > limit).expect("reported");
        assert_eq!(
            flushes[..first_over].iter().max(),
            Some(&limit),
            "synchronous {synchronous}: {flushes:?}"
        );
        assert!(flushes[first_over] >= all_received, "{flushes:?}");
    }
}
