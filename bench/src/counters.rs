//! Context switches from Linux's `/proc`, for section 4's account of where a transaction's time
//! goes: of the client process's threads (ours, or pgbench's) and of the server backends of one
//! run.
//!
//! A voluntary context switch is a thread blocking (on a socket, a futex, `epoll_wait`) and
//! being woken again later, so it counts wake-ups; an involuntary one is a thread preempted
//! while it still had work. A backend blocks when it waits for its client's next message, once
//! per round trip, and when it waits for a lock; so its wake-ups count the round trips and the
//! lock waits. (Its socket sends would count round trips exactly, but `/proc/PID/io` counts
//! `write` calls only, not `send`.)
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
    /// The stretch of the run the counters cover.
    pub over: Duration,
}

impl Tally {
    /// Adds another run's tally.
    pub fn absorb(&mut self, o: Tally) {
        let add = |a: Option<Switches>, b: Option<Switches>| Some(a? + b?);
        self.client = add(self.client, o.client);
        self.server = add(self.server, o.server);
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
    /// Per backend (a backend has one thread).
    backends: HashMap<u32, Switches>,
    at: Instant,
}

impl Reading {
    /// Reads the threads of process `client` and the backends `backends`; backends that have
    /// exited are left out.
    pub fn take(client: u32, backends: &[u32]) -> Reading {
        let read = |pid: &u32| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            Some((*pid, parse_status(&status)?))
        };
        Reading {
            client: threads(client),
            backends: backends.iter().filter_map(read).collect(),
            at: Instant::now(),
        }
    }

    /// Whether this reading saw every thread and backend that `earlier` saw: a later reading
    /// of a process that has begun to exit would lose some.
    pub fn covers(&self, earlier: &Reading) -> bool {
        let threads = |r: &Reading| r.client.as_ref().map_or(0, HashMap::len);
        threads(self) >= threads(earlier) && self.backends.len() >= earlier.backends.len()
    }

    /// What happened between `earlier` and this reading, counting the threads and backends
    /// present in both (a thread that exited in between is lost).
    pub fn since(&self, earlier: &Reading, with_server: bool) -> Tally {
        let diff = |a: &Switches, b: &Switches| Switches {
            voluntary: a.voluntary.saturating_sub(b.voluntary),
            involuntary: a.involuntary.saturating_sub(b.involuntary),
        };
        let sum = |now: &HashMap<u32, Switches>, then: &HashMap<u32, Switches>| {
            let mut both = now
                .iter()
                .filter_map(|(id, s)| then.get(id).map(|t| diff(s, t)))
                .peekable();
            both.peek()
                .is_some()
                .then(|| both.fold(Switches::default(), |a, b| a + b))
        };
        let client = self
            .client
            .as_ref()
            .zip(earlier.client.as_ref())
            .and_then(|(now, then)| sum(now, then));
        Tally {
            client,
            server: sum(&self.backends, &earlier.backends).filter(|_| with_server),
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
    fn status_fields_are_read() {
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
