//! What `/proc/PID/stat` says of a process: its state and start time;
//! and which process a thread belongs to.

/// The fields of `/proc/PID/stat` after the command name, which may hold
/// spaces and parentheses: everything past its last `)`.
fn fields(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(stat.get(stat.rfind(')')? + 2..)?.to_string())
}

/// The state letter of process `pid` (`R`, `S`, `D`, `T` stopped, `t`
/// traced, `Z` zombie, `X` dead); `None` once it is gone.
pub fn state(pid: u32) -> Option<char> {
    fields(pid)?.chars().next()
}

/// Whether process `pid` has exited: gone, or a zombie waiting for its
/// parent.
pub fn exited(pid: u32) -> bool {
    state(pid).is_none_or(|s| s == 'Z' || s == 'X')
}

/// Whether process `pid` is stopped (SIGSTOP, a terminal stop, or a
/// debugger), so that it answers nothing until continued.
pub fn stopped(pid: u32) -> bool {
    state(pid).is_some_and(|s| s == 'T' || s == 't')
}

/// The start time of process `pid` in clock ticks after boot (field 22),
/// which tells a reused pid apart.
pub fn start_time(pid: u32) -> Option<u64> {
    fields(pid)?.split(' ').nth(19)?.parse().ok()
}

/// The process (thread group) that thread `tid` belongs to; `tid` itself
/// if that cannot be read.
pub fn thread_group(tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Tgid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(tid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_has_a_start_time() {
        let me = std::process::id();
        assert!(matches!(state(me), Some('R' | 'S')));
        assert!(!exited(me) && !stopped(me));
        assert!(start_time(me).is_some());
        assert!(exited(u32::MAX));
        assert_eq!(thread_group(me), me);
    }
}
