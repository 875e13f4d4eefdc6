//! Helpers both throwaway servers use: running as another user, temporary directories, ports,
//! the watchdog shell, log tails, and blocking on a future from any context.

use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// Whether the effective uid is 0, without libc: `/proc/self/status`, else `id -u`.
pub(crate) fn running_as_root() -> bool {
    if let Ok(status) = fs::read_to_string("/proc/self/status")
        && let Some(line) = status.lines().find(|l| l.starts_with("Uid:"))
        && let Some(euid) = line.split_whitespace().nth(2)
    {
        return euid == "0";
    }
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The PostgreSQL program `name` from `bin`, run as the `postgres` user when `as_postgres`, in
/// `dir` (the postgres user may not be allowed into the test's working directory), with no input.
pub(crate) fn pg_command(bin: &Path, dir: &Path, as_postgres: bool, name: &str) -> Command {
    let exe = bin.join(name);
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    cmd.current_dir(dir).stdin(Stdio::null());
    cmd
}

/// Runs `cmd` to its end with stdout and stderr appended to `log`; the error says what failed.
pub(crate) fn run_logged(mut cmd: Command, log: &Path) -> Result<(), String> {
    let open = || fs::OpenOptions::new().create(true).append(true).open(log);
    let (out, err) = match (open(), open()) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => {
            return Err(format!("could not create {}: {e}", log.display()));
        }
    };
    let status = cmd
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .status()
        .map_err(|e| format!("could not run {:?}: {e}", cmd.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

/// A random `u64` from the standard library's per-process random hasher keys.
pub(crate) fn random_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    hasher.finish()
}

/// Creates `<tmp>/<prefix>-<pid>-<random>`, owned by `owner` when given (a server that refuses
/// to run as root runs as that user). The error says what failed; callers add how to fix it.
pub(crate) fn make_temp_root(prefix: &str, owner: Option<&str>) -> Result<PathBuf, String> {
    let mut base = std::env::temp_dir();
    // Unix socket paths are limited to ~107 bytes, and the server's user may not be able to
    // reach root's $TMPDIR.
    if owner.is_some() || base.as_os_str().len() > 60 {
        base = PathBuf::from("/tmp");
    }
    let root = base.join(format!(
        "{prefix}-{}-{:012x}",
        std::process::id(),
        random_u64() & 0xffff_ffff_ffff
    ));
    fs::create_dir(&root).map_err(|e| format!("could not create {}: {e}", root.display()))?;
    if let Some(owner) = owner {
        let ok = Command::new("chown")
            .arg(format!("{owner}:"))
            .arg(&root)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = fs::remove_dir_all(&root);
            return Err(format!(
                "running as root, but could not chown {} to the `{owner}` user",
                root.display()
            ));
        }
    }
    Ok(root)
}

/// Runs `script` in a detached `sh`: its own process group (a Ctrl-C aimed at the test run does
/// not kill it) with all standard streams on /dev/null (it never holds a pipe of the test runner
/// open and can't die of SIGPIPE).
pub(crate) fn spawn_detached_shell(script: String) -> io::Result<Child> {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> io::Result<u16> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
}

/// `s` quoted for `sh`.
pub(crate) fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The last `lines` lines of a log file (empty if it cannot be read).
pub(crate) fn tail_of_file(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut bytes = Vec::new();
    let _ = file.read_to_end(&mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `headline`, then the last 30 lines of each of `logs` (files under `root`) that has any: the
/// message of a throwaway server that failed.
pub(crate) fn with_log_tails(headline: String, root: &Path, logs: &[&str]) -> String {
    let mut message = headline;
    for name in logs {
        let tail = tail_of_file(&root.join(name), 30);
        if !tail.trim().is_empty() {
            message.push_str(&format!("\n--- tail of {name} ---\n{tail}"));
        }
    }
    message
}

/// Kills and reaps the watchdog process in `slot`, if any (a poisoned lock still yields it).
pub(crate) fn stop_watchdog(slot: &mut std::sync::Mutex<Option<Child>>) {
    let watchdog = slot.get_mut().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(mut watchdog) = watchdog {
        let _ = watchdog.kill();
        let _ = watchdog.wait();
    }
}

/// Runs a future to completion on a fresh current-thread runtime in a scoped helper thread, so
/// it works both inside and outside of a Tokio runtime.
pub(crate) fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("could not build a Tokio runtime")
                    .block_on(future)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
