//! Child processes tied to the test process: killed with it even when it
//! dies without running any `Drop`.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus};
use std::thread::JoinHandle;

/// Spawns `cmd` in its own process group (so a terminal's ^C reaches only
/// the test process) with PR_SET_PDEATHSIG=`signal`. The death signal fires
/// when the *spawning thread* exits, so a thread of its own spawns the child
/// and then waits for it; that waiter is returned with the pid.
pub(crate) fn spawn_tied(
    mut cmd: Command,
    signal: libc::c_int,
) -> io::Result<(i32, JoinHandle<io::Result<ExitStatus>>)> {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The test process may have died before the line above.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    cmd.process_group(0);
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || match cmd.spawn() {
        Ok(mut child) => {
            let _ = tx.send(Ok(child.id() as i32));
            child.wait()
        }
        Err(e) => {
            let msg = e.to_string();
            let _ = tx.send(Err(e));
            Err(io::Error::other(msg))
        }
    });
    let pid = rx
        .recv()
        .map_err(|_| io::Error::other("the spawner thread died"))??;
    Ok((pid, waiter))
}
