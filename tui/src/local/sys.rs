//! The few process calls std does not offer: signalling a process by pid, asking whether one is alive, and
//! tying a child's life to ours. Unix only; elsewhere they report that they cannot.

use std::io;
use std::process::Command;

#[derive(Debug, Clone, Copy)]
pub enum Signal {
    Term,
    Kill,
}

#[cfg(unix)]
pub fn signal(pid: u32, sig: Signal) -> io::Result<()> {
    let sig = match sig {
        Signal::Term => libc::SIGTERM,
        Signal::Kill => libc::SIGKILL,
    };
    let pid =
        libc::pid_t::try_from(pid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, sig) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
pub fn signal(_pid: u32, _sig: Signal) -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Whether `pid` is a live process (a zombie, dead but not yet reaped, is not).
#[cfg(unix)]
pub fn alive(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    if unsafe { libc::kill(p, 0) } != 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_none_or(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

#[cfg(not(unix))]
pub fn alive(_pid: u32) -> bool {
    false
}

/// The command line of `pid`, where the system shows it (Linux `/proc`); None elsewhere.
pub fn command_line(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Makes the child get SIGKILL when this process dies, however it dies (Linux `PR_SET_PDEATHSIG`), so a
/// crashed or SIGKILLed `baton` never leaves servers behind. The kernel ties this to the *thread* that
/// forks, so children must be spawned from a thread that lives as long as the process: ours are spawned
/// from the main thread (before the runtime starts, or in the event loop, which `block_on` runs there).
/// It also puts the child in a process group of its own, so that signals meant for the terminal's
/// foreground job reach `baton`, which decides what happens to its servers.
pub fn die_with_parent(cmd: &mut Command) {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        {
            let parent = std::process::id() as libc::pid_t;
            // SAFETY: the closure runs in the child between fork and exec and only makes async-signal-safe
            // system calls (prctl, getppid); it allocates nothing.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // The parent may have died before the prctl took effect: then do not start at all.
                    if libc::getppid() != parent {
                        return Err(io::Error::from_raw_os_error(libc::ESRCH));
                    }
                    Ok(())
                });
            }
        }
    }
    #[cfg(not(unix))]
    let _ = cmd;
}
