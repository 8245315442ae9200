//! The system calls swarm mode needs that std does not offer (Linux): a signalfd, poll,
//! pidfd_open, kill, what a node's process does between fork and exec, and opening the
//! node's end of its report pipe. Each `unsafe` block is one call, with its `SAFETY` note.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

/// Where a node finds the write end of its report pipe.
pub(crate) const REPORT_FD: RawFd = 3;

/// Signals delivered through a file descriptor instead of handlers: blocked for the
/// process (the supervisor has one thread) and read when `poll` says so. They stay blocked
/// after it is dropped (the supervisor's process ends then): unblocking would deliver a
/// late signal with its default action, ending the process by that signal instead of its
/// exit code.
pub(crate) struct SignalFd {
    fd: OwnedFd,
}

fn signal_set(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: `sigset_t` is plain data; `sigemptyset` initialises it before `sigaddset`
    // adds to it, both writing only into the set passed.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for signal in signals {
            libc::sigaddset(&mut set, *signal);
        }
        set
    }
}

impl SignalFd {
    /// Blocks `signals` and opens a descriptor that reads them.
    pub(crate) fn new(signals: &[i32]) -> io::Result<SignalFd> {
        let set = signal_set(signals);
        // SAFETY: `set` is an initialised signal set; the old mask is not asked for (null).
        let blocked = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if blocked != 0 {
            return Err(io::Error::from_raw_os_error(blocked));
        }
        // SAFETY: -1 asks for a new descriptor for `set`, an initialised signal set.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `signalfd` returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SignalFd { fd })
    }

    /// The signals received since the last read (none when nothing is pending).
    pub(crate) fn read(&self) -> Vec<i32> {
        let mut signals = Vec::new();
        loop {
            // SAFETY: `signalfd_siginfo` is plain data, and zeroes are a valid value.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            let size = std::mem::size_of::<libc::signalfd_siginfo>();
            // SAFETY: reads at most `size` bytes into `info`, which is that large.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n != size as isize {
                return signals; // EAGAIN: nothing more pending
            }
            signals.push(info.ssi_signo as i32);
        }
    }

    pub(crate) fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A pipe, both ends close-on-exec: (read end, write end).
pub(crate) fn pipe() -> io::Result<(File, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: `fds` is a writable array of two descriptors, as `pipe2` requires.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `pipe2` returned two new descriptors that nothing else owns.
    Ok(unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A `pollfd` waiting for input on `fd`.
pub(crate) fn readable(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// Waits until one of `fds` is ready or `timeout` passed; an interrupted wait counts as a
/// timeout.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<usize> {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: `fds` is a valid, writable slice of `pollfd` of the length passed.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(e)
        };
    }
    Ok(n as usize)
}

/// A descriptor that becomes readable when process `pid` ends (Linux 5.3 and later; an
/// error on older kernels, where the supervisor relies on SIGCHLD and `waitpid`).
pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: the system call takes a pid and flags (0) and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `pidfd_open` returned a new descriptor (close-on-exec) that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Sends `signal` to process `pid`. The supervisor only signals children it has not
/// reaped yet, so `pid` cannot have been reused by another process.
pub(crate) fn kill(pid: u32, signal: i32) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::other("pid out of range"))?;
    // SAFETY: `kill` takes two integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Prepares `command` to start a node: between fork and exec, the child puts `report` (the
/// write end of its report pipe) at [`REPORT_FD`], asks for SIGTERM when the supervisor
/// dies (`PR_SET_PDEATHSIG`), and unblocks every signal (the supervisor blocks the ones it
/// reads through its signalfd).
pub(crate) fn prepare_node(command: &mut Command, report: RawFd) {
    let nothing = signal_set(&[]);
    // SAFETY: the closure runs in the child between fork and exec, where only
    // async-signal-safe calls are allowed: it makes only `fcntl`, `dup2`, `prctl` and
    // `pthread_sigmask` calls, on integers and a signal set copied into it, and allocates
    // nothing (`last_os_error` builds its error from the errno alone).
    unsafe {
        command.pre_exec(move || {
            if report == REPORT_FD {
                let flags = libc::fcntl(report, libc::F_GETFD);
                if flags < 0 || libc::fcntl(report, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(report, REPORT_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) < 0 {
                return Err(io::Error::last_os_error());
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &nothing, std::ptr::null_mut());
            Ok(())
        });
    }
}

/// In a node: the write end of its report pipe at [`REPORT_FD`], checked to be a pipe, made
/// non-blocking (a supervisor that stopped reading never blocks the node) and
/// close-on-exec (processes the node starts do not hold it). Called once per process.
pub(crate) fn report_pipe() -> io::Result<File> {
    let fd = REPORT_FD;
    // SAFETY: `stat` is plain data, zeroes are a valid value, and `fstat` writes only into it.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; an invalid `fd` makes `fstat` fail with EBADF.
    if unsafe { libc::fstat(fd, &mut stat) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if stat.st_mode & libc::S_IFMT != libc::S_IFIFO {
        return Err(io::Error::other(format!(
            "descriptor {fd} is not a pipe: this process was not started by a swarm supervisor"
        )));
    }
    // SAFETY: `fcntl` on a valid descriptor, with integer arguments.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: the supervisor put this node's report pipe at `fd` for this process alone
    // (`prepare_node`), it is a pipe (checked above), and nothing else in the process uses
    // or closes that descriptor: the `File` owns it from here.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// This process's resident memory in bytes (`VmRSS` of `/proc/self/status`).
pub(crate) fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// How many threads this process has (`/proc/self/task`).
pub(crate) fn threads() -> Option<usize> {
    std::fs::read_dir("/proc/self/task").ok().map(|d| d.count())
}
