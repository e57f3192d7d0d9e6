//! Kernel modules: whether one is loaded, or can be loaded, and loading it.

use std::path::Path;
use std::time::Duration;

use log::debug;

use crate::error::Step;

/// Whether the kernel has a driver whose presence `ready` shows (a sysfs
/// or device path): already there, or `module` is in this kernel's
/// `modules.dep` and `modprobe module args...` (bounded, 10 s) makes it
/// appear.
pub(crate) fn available(module: &str, args: &[&str], ready: &Path) -> bool {
    if ready.exists() {
        return true;
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let dep =
        std::fs::read_to_string(format!("/lib/modules/{release}/modules.dep")).unwrap_or_default();
    let file = format!("/{module}.ko");
    if !dep.lines().any(|l| {
        l.split(':')
            .next()
            .is_some_and(|m| m.ends_with(&file) || m.contains(&format!("{file}.")))
    }) {
        return false;
    }
    debug!("attach: loading the {module} module");
    let loaded = crate::command::run_within(
        Step::Attach,
        ready,
        std::process::Command::new("modprobe")
            .arg(module)
            .args(args),
        Duration::from_secs(10),
    );
    if let Err(e) = &loaded {
        debug!("attach: {e}");
    }
    loaded.is_ok() && ready.exists()
}
