//! Context switches and write system calls from Linux's `/proc`, for section 4's account of
//! where a transaction's time goes: the client process's threads (ours, or pgbench's) and the
//! server backends of one run.
//!
//! A voluntary context switch is a thread blocking (on a socket, a futex, `epoll_wait`) and
//! being woken again later, so it counts wake-ups; an involuntary one is a thread preempted
//! while it still had work. A backend's write system calls are the replies it flushed to its
//! client, each of which ends a round trip.
//!
//! Where `/proc` is missing, or the server runs on another machine, the figures are `None` and
//! the report leaves them out.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::PgConnection;

/// Context switches of a set of threads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Switches {
    /// The thread blocked and was woken later.
    pub voluntary: u64,
    /// The thread was preempted.
    pub involuntary: u64,
}

impl Switches {
    /// Both kinds.
    pub fn total(self) -> u64 {
        self.voluntary + self.involuntary
    }
}

impl std::ops::Add for Switches {
    type Output = Switches;
    fn add(self, o: Switches) -> Switches {
        Switches {
            voluntary: self.voluntary + o.voluntary,
            involuntary: self.involuntary + o.involuntary,
        }
    }
}

/// What one run's counters added up to over `over` of its wall time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tally {
    /// The client process's threads (ours, or pgbench's).
    pub client: Option<Switches>,
    /// The run's server backends.
    pub server: Option<Switches>,
    /// Write system calls of the run's server backends: the replies they flushed.
    pub server_writes: Option<u64>,
    /// The stretch of the run the counters cover.
    pub over: Duration,
}

impl Tally {
    /// Adds another run's tally.
    pub fn absorb(&mut self, o: Tally) {
        let add = |a: Option<Switches>, b: Option<Switches>| Some(a? + b?);
        self.client = add(self.client, o.client);
        self.server = add(self.server, o.server);
        self.server_writes = self.server_writes.zip(o.server_writes).map(|(a, b)| a + b);
        self.over += o.over;
    }
}

/// Reads `voluntary_ctxt_switches` and `nonvoluntary_ctxt_switches` from the text of a
/// `/proc/PID/task/TID/status`.
fn parse_status(status: &str) -> Option<Switches> {
    let field = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .trim()
            .parse()
            .ok()
    };
    Some(Switches {
        voluntary: field("voluntary_ctxt_switches:")?,
        involuntary: field("nonvoluntary_ctxt_switches:")?,
    })
}

/// Reads `syscw` from the text of a `/proc/PID/io`.
fn parse_io(io: &str) -> Option<u64> {
    io.lines()
        .find_map(|l| l.strip_prefix("syscw:"))?
        .trim()
        .parse()
        .ok()
}

/// The context switches of each live thread of process `pid`, by thread id.
fn threads(pid: u32) -> Option<HashMap<u32, Switches>> {
    let mut out = HashMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(entry) = entry else { continue };
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status"));
        if let Some(s) = status.ok().as_deref().and_then(parse_status) {
            out.insert(tid, s);
        }
    }
    Some(out)
}

/// One reading of the counters of a client process and of some server backends.
#[derive(Debug, Clone)]
pub struct Reading {
    client: Option<HashMap<u32, Switches>>,
    /// Per backend: its context switches (a backend has one thread) and write calls.
    backends: HashMap<u32, (Switches, u64)>,
    at: Instant,
}

impl Reading {
    /// Reads the threads of process `client` and the backends `backends`; backends that have
    /// exited are left out.
    pub fn take(client: u32, backends: &[u32]) -> Reading {
        let mut b = HashMap::new();
        for &pid in backends {
            let switches = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .as_deref()
                .and_then(parse_status);
            let writes = std::fs::read_to_string(format!("/proc/{pid}/io"))
                .ok()
                .as_deref()
                .and_then(parse_io);
            if let (Some(s), Some(w)) = (switches, writes) {
                b.insert(pid, (s, w));
            }
        }
        Reading {
            client: threads(client),
            backends: b,
            at: Instant::now(),
        }
    }

    /// What happened between `earlier` and this reading, counting the threads and backends
    /// present in both (a thread that exited in between is lost).
    pub fn since(&self, earlier: &Reading, with_server: bool) -> Tally {
        let diff = |a: Switches, b: Switches| Switches {
            voluntary: a.voluntary.saturating_sub(b.voluntary),
            involuntary: a.involuntary.saturating_sub(b.involuntary),
        };
        let client = self
            .client
            .as_ref()
            .zip(earlier.client.as_ref())
            .map(|(now, then)| {
                now.iter()
                    .filter_map(|(tid, s)| then.get(tid).map(|t| diff(*s, *t)))
                    .fold(Switches::default(), |a, b| a + b)
            });
        let (mut server, mut writes, mut any) = (Switches::default(), 0, false);
        for (pid, (s, w)) in &self.backends {
            if let Some((s0, w0)) = earlier.backends.get(pid) {
                server = server + diff(*s, *s0);
                writes += w.saturating_sub(*w0);
                any = true;
            }
        }
        let server_side = with_server && any;
        Tally {
            client,
            server: server_side.then_some(server),
            server_writes: server_side.then_some(writes),
            over: self.at.saturating_duration_since(earlier.at),
        }
    }
}

/// The process ids of pgbench's backends in the benchmark's database (pgbench names its
/// connections `pgbench`); empty when the server cannot be asked.
pub async fn pgbench_backends(c: &mut PgConnection) -> Vec<u32> {
    sqlx::query_scalar::<_, i32>(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
         AND backend_type = 'client backend' AND application_name = 'pgbench'",
    )
    .fetch_all(&mut *c)
    .await
    .unwrap_or_default()
    .into_iter()
    .filter_map(|p| u32::try_from(p).ok())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_io_fields_are_read() {
        let status =
            "Name:\tpostgres\nvoluntary_ctxt_switches:\t120\nnonvoluntary_ctxt_switches:\t7\n";
        assert_eq!(
            parse_status(status),
            Some(Switches {
                voluntary: 120,
                involuntary: 7
            })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
        assert_eq!(
            parse_io("rchar: 10\nwchar: 5\nsyscr: 3\nsyscw: 42\n"),
            Some(42)
        );
        assert_eq!(parse_io("syscr: 3\n"), None);
    }

    #[test]
    fn own_threads_switch_when_they_sleep() {
        let me = std::process::id();
        let before = Reading::take(me, &[]);
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(2));
        }
        let t = Reading::take(me, &[]).since(&before, true);
        let client = t.client.expect("/proc/self/task is readable on Linux");
        assert!(client.voluntary >= 5, "{client:?}");
        assert_eq!(t.server, None);
    }
}
