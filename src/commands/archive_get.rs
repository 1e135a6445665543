//! `walferry archive-get`: PostgreSQL's `restore_command` (see `walferry::archive::get` for
//! what is served when, and `walferry::archive::spool` for prefetching).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use walferry::archive::get::{self, Fetched, GetError, Getter, Served, Wanted};
use walferry::archive::spool::Spool;
use walferry::objstore::Location;
use walferry::repo::WAL_DIR;

use super::Failure;

/// Exit status for everything that must stop recovery rather than end it: PostgreSQL treats
/// a restore_command exit status above 125 as fatal (xlogarchive.c RestoreArchivedFile).
pub const EXIT_FATAL: u8 = 255;

/// Spool directory name, beside `%p` (in pg_wal) unless `--spool` says otherwise.
pub const SPOOL_NAME: &str = "walferry-spool";

pub const AFTER_HELP: &str = "\
Use as PostgreSQL's restore_command:
  restore_command = 'walferry archive-get --repo /srv/repo %f %p'

Writes the file %f of the archive REPO/wal to %p (relative to the data directory, where the
server runs the command), decompressed, through a temporary file renamed into place, so the
server never reads half a file. A segment is checked first (page headers, record headers,
CRC-32C, and the record crossing into the next segment when that file is there); with
global/pg_control in the current directory, WAL of another database system is refused.

A segment the archive holds only as NAME.partial is served, padded with zeros after its
valid WAL, when it is the end of a timeline: its WAL reaches the segment end; or a later
timeline's history says the timeline ended inside it (served up to that switch point); or no
later timeline names it and no complete segment of its timeline follows (the newest WAL).
Any other .partial means WAL is missing from the archive: fatal.

Prefetch: after serving segment S, a background worker (one per spool, detached) fetches and
checks S+1..S+N into the spool, so that the next calls are a rename. Only complete segments
are spooled. The spool defaults to walferry-spool in the directory of %p (pg_wal/, which base
backups and pg_rewind leave alone, and on the same file system as %p).

Exit status:
    0  %p holds the complete file
    1  not in the archive (recovery ends there, or a standby turns to streaming)
  255  fatal: PostgreSQL aborts recovery on any status above 125. A damaged file (named,
       with the LSN), WAL missing from the archive (a .partial where its timeline went on),
       WAL of another database system, an unreadable repository, a full disk writing %p,
       and an invalid command line (whose usual status 2 would read as \"not there\")";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Repository (the archive is its wal/ directory): a directory or s3://BUCKET/PREFIX
    #[arg(long = "repo", value_name = "REPO")]
    pub repo: String,

    /// File name the server asks for (%f): a segment, %08X.history or .backup file
    #[arg(value_name = "FILE")]
    pub file: String,

    /// Where to write it (%p)
    #[arg(value_name = "PATH", required_unless_present = "prefetch_worker")]
    pub dest: Option<PathBuf>,

    /// Segments to prefetch after each one served (0: no prefetching)
    #[arg(long = "prefetch", value_name = "N", default_value_t = 8)]
    pub prefetch: u64,

    /// Spool directory for prefetched segments [default: walferry-spool beside PATH]
    #[arg(long = "spool", value_name = "DIR")]
    pub spool: Option<PathBuf>,

    /// For s3:// repositories: a local copy of the archive (what walferry restore fetched
    /// into its cache) whose complete segments are taken instead of downloaded again
    #[arg(long = "cache", value_name = "DIR")]
    pub cache: Option<PathBuf>,

    /// Run as the background prefetch worker of the spool (started by archive-get itself)
    #[arg(long = "prefetch-worker", hide = true)]
    pub prefetch_worker: bool,

    /// Print help
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
}

fn fatal(message: impl Into<String>) -> Failure {
    Failure {
        exit_code: EXIT_FATAL,
        ..Failure::new(message)
    }
    .with_hint(
        "recovery stops here so that no damaged or missing WAL is replayed and the archive is \
         not taken for exhausted; repair the archive (walferry verify -D REPO/wal shows what is \
         wrong) or the restore_command, then start the server again",
    )
}

fn failure(e: GetError) -> Failure {
    if e.is_not_found() {
        // "Not there" is an answer, not an error: recovery asks for files that may not exist
        // (the next timeline's history) as a matter of course.
        tracing::info!("{e}");
        return Failure::silent(1);
    }
    let disk_full = e.is_disk_full();
    let f = fatal(e.to_string());
    if disk_full {
        return f.with_hint(
            "the disk of the data directory is full: free space, then start the server again",
        );
    }
    f
}

/// Where the archive is read: the repository's wal/ directory, or for a repository in
/// object storage the window of it fetched into the spool's `remote` directory.
enum Source {
    Local,
    /// The store's client and the one runtime all its requests run on.
    Remote(Box<(walferry::objstore::Remote, tokio::runtime::Runtime)>),
}

fn source_of(args: &Args, spool_dir: &Path) -> Result<(Source, PathBuf), Failure> {
    match Location::parse(&args.repo) {
        Err(e) => Err(fatal(e.to_string())),
        Ok(Location::Local(repo)) => Ok((Source::Local, repo.join(WAL_DIR))),
        Ok(Location::S3(url)) => {
            let remote = walferry::objstore::Remote::new(&url.join(WAL_DIR))
                .map_err(|e| fatal(e.to_string()))?;
            let rt = walferry::objstore::runtime()
                .map_err(|e| fatal(format!("could not start a runtime: {e}")))?;
            Ok((
                Source::Remote(Box::new((remote, rt))),
                spool_dir.join("remote"),
            ))
        }
    }
}

/// For an object store: brings what answering for `name` (and prefetching `ahead`)
/// reads into the window directory, complete files from the local copy `cache` when it
/// has them.
fn fetch_window(
    source: &Source,
    dir: &Path,
    name: &str,
    ahead: &[String],
    cache: Option<&Path>,
) -> Result<(), Failure> {
    let Source::Remote(remote_rt) = source else {
        return Ok(());
    };
    let (remote, rt) = remote_rt.as_ref();
    rt.block_on(walferry::objstore::mirror::fetch_window(
        remote, dir, name, ahead, cache,
    ))
    .map(|copied| {
        if !copied.is_empty() {
            tracing::debug!("taken from the local copy: {copied:?}");
        }
    })
    .map_err(|e| {
        let hint = e.hint();
        let f = fatal(format!("cannot read the archive in the object store: {e}"));
        match hint {
            Some(h) => f.with_hint(h),
            None => f,
        }
    })
}

fn default_spool(args: &Args, dest: Option<&Path>) -> PathBuf {
    match (&args.spool, dest) {
        (Some(dir), _) => dir.clone(),
        (None, Some(dest)) => dest
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .join(SPOOL_NAME),
        (None, None) => PathBuf::from(SPOOL_NAME),
    }
}

pub fn run(args: Args) -> Result<(), Failure> {
    let spool_dir = default_spool(&args, args.dest.as_deref());
    let (source, wal_dir) = source_of(&args, &spool_dir)?;
    if args.prefetch_worker {
        run_worker(&args, &source, &wal_dir);
        return Ok(());
    }
    let Some(dest) = args.dest.as_deref() else {
        return Err(fatal("no destination path (%p) given"));
    };
    let wanted = Wanted::parse(&args.file).ok_or_else(|| {
        fatal(format!(
            "\"{}\" is not the name of a WAL segment, timeline history or backup history file",
            args.file
        ))
        .with_hint("the restore_command takes the file name before the path: archive-get --repo REPO %f %p")
    })?;
    let started = Instant::now();
    let cache = args.cache.as_deref();
    let window = |dir: &Path, cache: Option<&Path>| -> Result<(), Failure> {
        if let Source::Remote(..) = &source {
            fetch_window(&source, dir, &args.file, &[], cache)?;
            // The next segment's start completes the record crossing into it; its name
            // needs the segment size, which the segment just fetched tells.
            if let Some(next) = matches!(wanted, Wanted::Segment(_))
                .then(|| seg_size_in_window(dir, &args.file))
                .flatten()
                .and_then(|s| get::next_segment(&args.file, s, 1))
            {
                fetch_window(&source, dir, &args.file, &[next], cache)?;
            }
        }
        Ok(())
    };
    window(&wal_dir, cache)?;
    let new_getter = |dir: &Path| {
        Getter::new(dir, get::pg_control_system_id(Path::new("."))).map_err(|e| {
            fatal(format!(
                "cannot read the archive of repository \"{}\": {e}",
                args.repo
            ))
        })
    };
    let getter = new_getter(&wal_dir)?;
    let spool = match (&wanted, args.prefetch) {
        (Wanted::Segment(_), n) if n > 0 => open_spool(&args, dest, &wal_dir),
        _ => None,
    };

    if let Some(spool) = &spool {
        match spool.take(&args.file, dest) {
            Ok(true) => {
                tracing::info!(
                    "{}: served from the spool in {:.1} ms",
                    args.file,
                    started.elapsed().as_secs_f64() * 1e3
                );
                if let Some(seg_size) =
                    walferry::archive::seg_size_of_file(dest, walferry::wal::Compression::None)
                {
                    prefetch(&args, spool, seg_size);
                }
                return Ok(());
            }
            Ok(false) => {}
            Err(e) => tracing::warn!("could not take {} from the spool: {e}", args.file),
        }
    }
    let fetched = match getter.fetch(&args.file) {
        // What the window holds came from the local copy or an earlier call: before
        // stopping recovery over it, read the store's own objects once more, into a
        // directory of this call's own (the prefetch worker shares the window).
        Err(e) if !e.is_not_found() && matches!(source, Source::Remote(..)) => {
            tracing::warn!(
                "{}: {e}; fetching it again from the object store",
                args.file
            );
            let own = wal_dir.with_file_name(format!("remote.{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&own);
            let again = window(&own, None)
                .and_then(|()| new_getter(&own))
                .and_then(|g| g.fetch(&args.file).map_err(failure));
            let _ = std::fs::remove_dir_all(&own);
            Ok(again?)
        }
        r => r,
    }
    .map_err(failure)?;
    get::deliver(&fetched.bytes, dest).map_err(failure)?;
    report(&args.file, &fetched, started);
    if let (Some(spool), Some(seg_size)) = (&spool, fetched.seg_size) {
        prefetch(&args, spool, seg_size);
    }
    Ok(())
}

fn report(name: &str, fetched: &Fetched, started: Instant) {
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let from = fetched.source.display();
    match fetched.served {
        Served::EndOfTimeline { end } => tracing::warn!(
            "{name}: served the end of its timeline from \"{from}\": its WAL up to {end}, \
             zeros after"
        ),
        Served::WholePartial => {
            tracing::info!("{name}: served from \"{from}\" (holds the whole segment) in {ms:.1} ms")
        }
        Served::Complete | Served::Text => {
            tracing::info!("{name}: served from \"{from}\" in {ms:.1} ms")
        }
    }
}

fn open_spool(args: &Args, dest: &Path, wal_dir: &Path) -> Option<Spool> {
    let dir = default_spool(args, Some(dest));
    // The spool only saves time: any trouble with it falls back to reading the archive.
    match Spool::open(&dir).and_then(|s| s.adopt(wal_dir).map(|()| s)) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(
                "prefetching is off: cannot use spool \"{}\": {e}",
                dir.display()
            );
            None
        }
    }
}

/// Records what was served and starts a worker when the window ahead has gaps.
fn prefetch(args: &Args, spool: &Spool, seg_size: u64) {
    if let Err(e) = spool.want(&args.file, seg_size) {
        tracing::warn!(
            "prefetching is off: cannot write to spool \"{}\": {e}",
            spool.dir().display()
        );
        return;
    }
    if spool
        .missing(&args.file, seg_size, args.prefetch)
        .is_empty()
    {
        return;
    }
    if let Err(e) = spawn_worker(args, spool.dir()) {
        tracing::warn!("could not start the prefetch worker: {e}");
    }
}

/// Starts `walferry archive-get --prefetch-worker` in its own session, not waited for: it
/// outlives this call (and is out of reach of the signals the server sends its children).
fn spawn_worker(args: &Args, spool_dir: &Path) -> std::io::Result<()> {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("archive-get")
        .arg("--repo")
        .arg(&args.repo)
        .arg("--spool")
        .arg(spool_dir)
        .arg("--prefetch")
        .arg(args.prefetch.to_string())
        .args(args.cache.iter().flat_map(|c| [Path::new("--cache"), c]))
        .arg("--prefetch-worker")
        .arg(&args.file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid(2) is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map(drop)
}

fn run_worker(args: &Args, source: &Source, wal_dir: &Path) {
    let Some(dir) = &args.spool else { return };
    let Ok(spool) = Spool::open(dir) else { return };
    // A worker that is finishing may miss the newest wish: wait for it briefly.
    let Ok(Some(lock)) = spool.lock(Duration::from_secs(2)) else {
        return;
    };
    if let (Source::Remote(..), Some((name, seg_size))) = (source, spool.wanted()) {
        let ahead: Vec<String> = (1..=args.prefetch + 1)
            .filter_map(|k| get::next_segment(&name, seg_size, k))
            .collect();
        if let Some((first, rest)) = ahead.split_first() {
            if let Err(e) = fetch_window(source, wal_dir, first, rest, args.cache.as_deref()) {
                tracing::info!("prefetching stopped: {}", e.message);
                return;
            }
        }
    }
    let Ok(getter) = Getter::new(wal_dir, get::pg_control_system_id(Path::new("."))) else {
        return;
    };
    let filled = spool.fill(&getter, args.prefetch, &lock);
    tracing::info!(
        "prefetched {} segment(s){}",
        filled.spooled.len(),
        filled
            .stopped
            .map(|s| format!("; stopped: {s}"))
            .unwrap_or_default()
    );
}

/// The segment size in the header of any stored form of segment `name` in `dir`.
fn seg_size_in_window(dir: &Path, name: &str) -> Option<u64> {
    use walferry::wal::{page::MIN_SEG_SIZE, WalFileName};
    std::fs::read_dir(dir).ok()?.flatten().find_map(|entry| {
        let file = entry.file_name().to_string_lossy().into_owned();
        let w = WalFileName::parse(&file, MIN_SEG_SIZE).filter(|_| file.starts_with(name))?;
        walferry::archive::seg_size_of_file(&entry.path(), w.compression)
    })
}
