//! Asking for a password on the terminal, as libpq's `simple_prompt`: the prompt goes to
//! and the answer comes from `/dev/tty` (not stdin/stdout, which may be redirected), with
//! echo turned off while the user types and restored afterwards, even on error.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

/// Ask for a password on the controlling terminal. Used for `-W`, and when the server asks
/// for a password that nothing else gave.
pub fn prompt_password(prompt: &str) -> io::Result<String> {
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot open /dev/tty to ask for a password: {e}; give the password in PGPASSWORD or ~/.pgpass instead"
                ),
            )
        })?;
    prompt_on(&tty, prompt)
}

/// Restores the saved terminal attributes when dropped.
struct EchoGuard {
    fd: RawFd,
    saved: libc::termios,
}

impl Drop for EchoGuard {
    fn drop(&mut self) {
        // SAFETY: `fd` is open for the guard's lifetime (the guard borrows nothing, but it
        // is dropped inside `prompt_on`, before the `File` it was made from), and `saved` is
        // a termios filled in by a successful tcgetattr.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSAFLUSH, &self.saved);
        }
    }
}

fn echo_off(fd: RawFd) -> io::Result<EchoGuard> {
    // SAFETY: an all-zero termios is a valid value of this plain C struct; tcgetattr
    // overwrites it.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is an open descriptor and `saved` a valid, writable termios.
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut quiet = saved;
    quiet.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK);
    // Keep ECHONL so the user sees the line end when pressing Enter.
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: `fd` is open and `quiet` is a valid termios derived from the current one.
    if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(EchoGuard { fd, saved })
}

/// The prompt on any terminal: turn echo off first (so nothing typed early is echoed),
/// write the prompt, read one line. The line end is not part of the result.
pub(crate) fn prompt_on(tty: &File, prompt: &str) -> io::Result<String> {
    let guard = echo_off(tty.as_raw_fd())?;
    let result = (|| {
        let mut w = tty;
        w.write_all(prompt.as_bytes())?;
        w.flush()?;
        read_line(tty)
    })();
    drop(guard);
    result
}

/// Read up to a newline, byte by byte, so nothing after the line is consumed.
fn read_line(tty: &File) -> io::Result<String> {
    let mut line = Vec::new();
    let mut r = tty;
    let mut byte = [0u8; 1];
    loop {
        match r.read(&mut byte) {
            Ok(0) if line.is_empty() => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "no password was typed (end of input)",
                ))
            }
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the password is not valid UTF-8",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    use std::time::{Duration, Instant};

    /// A pseudo-terminal pair: (master, slave).
    fn pty() -> (File, File) {
        // SAFETY: plain libc calls on descriptors we own; ptsname_r writes a NUL-terminated
        // name into the buffer we pass with its length; each fd is wrapped in exactly one File.
        unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(master >= 0, "posix_openpt: {}", io::Error::last_os_error());
            assert_eq!(libc::grantpt(master), 0);
            assert_eq!(libc::unlockpt(master), 0);
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(master, name.as_mut_ptr(), name.len()), 0);
            let name = CStr::from_ptr(name.as_ptr()).to_str().unwrap().to_string();
            let master = File::from_raw_fd(master);
            let slave = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(name)
                .unwrap();
            (master, slave)
        }
    }

    fn echo_is_on(tty: &File) -> bool {
        // SAFETY: zeroed termios is valid; the fd is open.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::tcgetattr(tty.as_raw_fd(), &mut t) }, 0);
        t.c_lflag & libc::ECHO != 0
    }

    /// Read what the terminal sent to the master side until `want` shows up or 5 s pass.
    fn read_until(master: &File, want: &str) -> String {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !String::from_utf8_lossy(&seen).contains(want) && Instant::now() < deadline {
            let mut pfd = libc::pollfd {
                fd: master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, 100) } > 0 {
                let mut buf = [0u8; 256];
                let n = (&*master).read(&mut buf).unwrap_or(0);
                seen.extend_from_slice(&buf[..n]);
            }
        }
        String::from_utf8_lossy(&seen).into_owned()
    }

    #[test]
    fn reads_a_line_without_echo_and_restores_echo() {
        let (master, slave) = pty();
        assert!(echo_is_on(&slave));
        let reader = std::thread::spawn(move || {
            let r = prompt_on(&slave, "Password: ");
            (r, slave)
        });
        // The prompt is written after echo is off, so typing now is not echoed.
        let shown = read_until(&master, "Password: ");
        assert_eq!(shown, "Password: ");
        (&master).write_all(b"s3cret\n").unwrap();
        let (r, slave) = reader.join().unwrap();
        assert_eq!(r.unwrap(), "s3cret");
        let after = read_until(&master, "\n");
        assert!(!after.contains("s3cret"), "echoed: {after:?}");
        // Only the line end is shown (ECHONL), as the terminal's \r\n.
        assert_eq!(after, "\r\n");
        assert!(echo_is_on(&slave));
    }

    #[test]
    fn restores_echo_on_error() {
        let (master, slave) = pty();
        let reader = std::thread::spawn(move || {
            let r = prompt_on(&slave, "Password: ");
            (r, slave)
        });
        read_until(&master, "Password: ");
        // End of input with nothing typed (Ctrl-D) is an error.
        (&master).write_all(&[4]).unwrap();
        let (r, slave) = reader.join().unwrap();
        assert_eq!(r.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
        assert!(echo_is_on(&slave));
    }

    #[test]
    fn not_a_terminal_is_an_error() {
        let f = tempfile::tempfile().unwrap();
        assert!(prompt_on(&f, "Password: ").is_err());
    }
}
