//! CPU time on each side of the wire, read from Linux's `/proc`: the benchmark process (our
//! clients), its reaped child processes (pgbench), and the PostgreSQL server (the postmaster,
//! which reaps its backends, so a backend's CPU time joins the postmaster's once it exits).
//!
//! Where `/proc` is missing, or the server runs on another machine, the figures are `None` and
//! the report leaves them out.

use std::time::Duration;

use sqlx::PgConnection;
use sqlx::postgres::PgConnectOptions;

/// Clock ticks per second of `/proc/PID/stat` (`USER_HZ`, 100 on every Linux this runs on).
const TICKS_PER_SEC: f64 = 100.0;

/// A process's own CPU time and that of its reaped children.
fn times(pid: &str) -> Option<(Duration, Duration)> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Reads `(utime + stime, cutime + cstime)` from the text of a `/proc/PID/stat`.
fn parse_stat(stat: &str) -> Option<(Duration, Duration)> {
    // The command name is in parentheses and may contain spaces and parentheses; the fields
    // after the last `)` start with field 3 of proc(5).
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    // Fields 14–17: utime, stime, cutime, cstime.
    let tick = |n: usize| -> Option<f64> { fields.get(n - 3)?.parse().ok() };
    let secs = |t: f64| Duration::from_secs_f64(t / TICKS_PER_SEC);
    Some((secs(tick(14)? + tick(15)?), secs(tick(16)? + tick(17)?)))
}

/// CPU time this process has used so far: our clients, the runtime and everything else in it.
pub fn own() -> Option<Duration> {
    times("self").map(|(own, _)| own)
}

/// CPU time of this process's reaped children (pgbench, once it has exited).
pub fn children() -> Option<Duration> {
    times("self").map(|(_, children)| children)
}

/// `later - earlier`, when both were read.
fn delta(earlier: Option<Duration>, later: Option<Duration>) -> Option<Duration> {
    Some(later?.saturating_sub(earlier?))
}

/// CPU time spent during one run, on the client side (read by `client`: [`own`] or
/// [`children`]) and on the server.
pub struct Meter {
    client: fn() -> Option<Duration>,
    client0: Option<Duration>,
    server: Option<Server>,
    server0: Option<Duration>,
    backends: Vec<u32>,
}

impl Meter {
    /// Starts counting.
    pub fn start(client: fn() -> Option<Duration>, server: Option<Server>) -> Meter {
        Meter {
            client,
            client0: client(),
            server,
            server0: server.and_then(|s| s.total()),
            backends: Vec::new(),
        }
    }

    /// Names the run's backends, so that [`Meter::server`] waits for exactly them to be
    /// reaped instead of for the database to have no other client.
    pub fn watch(&mut self, backends: Vec<u32>) {
        self.backends = backends;
    }

    /// The client's CPU time since the start.
    pub fn client(&self) -> Option<Duration> {
        delta(self.client0, (self.client)())
    }

    /// The server's CPU time since the start, once the run's connections are closed: waits for
    /// their backends to exit and be counted (see [`Server::reaped`] and [`Server::settle`]).
    pub async fn server(&self, opts: &PgConnectOptions) -> Option<Duration> {
        let server = self.server?;
        if self.backends.is_empty() {
            server.settle(opts).await;
        } else {
            Server::reaped(&self.backends).await;
        }
        delta(self.server0, server.total())
    }
}

/// The server's CPU meter: the postmaster of the backend serving a connection, when it runs on
/// this machine.
#[derive(Debug, Clone, Copy)]
pub struct Server {
    postmaster: u32,
}

impl Server {
    /// Finds the postmaster behind `c`: the parent of `c`'s backend, both named `postgres`.
    pub async fn find(c: &mut PgConnection) -> Option<Server> {
        let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut *c)
            .await
            .ok()?;
        let is_postgres = |pid: &str| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|name| name.trim() == "postgres")
        };
        if !is_postgres(&backend.to_string()) {
            return None;
        }
        let status = std::fs::read_to_string(format!("/proc/{backend}/status")).ok()?;
        let parent = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))?
            .trim()
            .to_owned();
        is_postgres(&parent).then_some(Server {
            postmaster: parent.parse().ok()?,
        })
    }

    /// The postmaster's CPU time and that of every backend it has reaped so far.
    pub fn total(&self) -> Option<Duration> {
        times(&self.postmaster.to_string()).map(|(own, children)| own + children)
    }

    /// Waits (at most 2 s) until the backends `pids` have exited and the postmaster has reaped
    /// them (their `/proc` entries are gone), so that their CPU time is in its total.
    pub async fn reaped(pids: &[u32]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline
            && pids
                .iter()
                .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits (at most 2 s) until no other client backend is connected to the benchmark's
    /// database, so that the backends of the run just finished have exited and been counted.
    pub async fn settle(&self, opts: &PgConnectOptions) {
        let Ok(mut c) = <PgConnection as sqlx::Connection>::connect_with(opts).await else {
            return;
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            let others: Result<i64, _> = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                 AND backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )
            .fetch_one(&mut c)
            .await;
            if others.is_ok_and(|n| n == 0) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = sqlx::Connection::close(c).await;
    }
}

/// CPU time of a whole server: its postmaster, the processes it reaped, and those still
/// running (a pool's backends, the WAL sender, and on a standby the startup process that replays
/// WAL), read at one instant; counting the live ones too lets a run be measured while its
/// connections stay open. A live process counted once and reaped later moves into the reaped
/// total with the same time, so differences of two readings stay right.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tree {
    /// Every process of the server.
    pub total: Duration,
    /// Of which the WAL replay: a standby's startup process and WAL receiver.
    pub replay: Duration,
}

impl Tree {
    /// `self - earlier`, field by field.
    pub fn since(&self, earlier: &Tree) -> Tree {
        Tree {
            total: self.total.saturating_sub(earlier.total),
            replay: self.replay.saturating_sub(earlier.replay),
        }
    }
}

impl Server {
    /// The CPU time of the whole server so far; `None` where `/proc` can't be read.
    pub fn tree(&self) -> Option<Tree> {
        let mut tree = Tree {
            total: self.total()?,
            replay: Duration::ZERO,
        };
        let parent = self.postmaster.to_string();
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            if parent_pid(&stat) != Some(parent.as_str()) {
                continue;
            }
            let Some((own, _)) = parse_stat(&stat) else {
                continue;
            };
            tree.total += own;
            // A backend shows its role in its command line: "postgres: startup recovering …".
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            if cmdline.starts_with("postgres: startup")
                || cmdline.starts_with("postgres: walreceiver")
            {
                tree.replay += own;
            }
        }
        Some(tree)
    }
}

/// The parent's pid (field 4) in the text of a `/proc/PID/stat`.
fn parent_pid(stat: &str) -> Option<&str> {
    stat.get(stat.rfind(')')? + 1..)?.split_whitespace().nth(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1 2 3 4 250 50 7 3 20 0 9 0 1";
        let (own, children) = parse_stat(stat).unwrap();
        assert_eq!(own, Duration::from_secs(3));
        assert_eq!(children, Duration::from_millis(100));
        assert_eq!(parse_stat("4242 (short) S 1 2"), None);
        assert_eq!(parent_pid(stat), Some("1"));
    }

    #[test]
    fn own_cpu_time_grows_with_work() {
        let before = own().expect("/proc/self/stat is readable on Linux");
        // Busy work until the clock ticks over (10 ms of CPU), or fail after 5 s of wall time.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while own() == Some(before) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "CPU time stuck at {before:?}"
            );
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(1));
            }
        }
        assert!(own().unwrap() > before);
    }
}
