//! A fault-injecting TCP proxy that understands the PostgreSQL frontend protocol.

use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sqlx::ConnectOptions as _;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};

use crate::server::PgServer;

/// How long [`Fault::CutAfterForwarding`] waits for the server's answer before it
/// cuts the connection anyway.
pub const CUT_AFTER_GRACE: Duration = Duration::from_secs(2);

const SSL_REQUEST_CODE: u32 = 80_877_103;
const GSSENC_REQUEST_CODE: u32 = 80_877_104;
const CANCEL_REQUEST_CODE: u32 = 80_877_102;
const READ_CHUNK: usize = 16 * 1024;

// ---------------------------------------------------------------------------------
// Messages, matchers and faults
// ---------------------------------------------------------------------------------

/// One frontend (client → server) protocol message after the startup phase: a type
/// byte, a 4-byte big-endian length (counting itself) and the payload.
#[derive(Debug, Clone, Copy)]
pub struct FrontendMessage<'a> {
    tag: u8,
    payload: &'a [u8],
}

impl<'a> FrontendMessage<'a> {
    /// Wraps a message type byte and its payload (without the length field).
    pub fn new(tag: u8, payload: &'a [u8]) -> Self {
        Self { tag, payload }
    }

    /// The message type byte: `b'Q'` simple query, `b'P'` Parse, `b'B'` Bind,
    /// `b'E'` Execute, `b'D'` Describe, `b'S'` Sync, `b'X'` Terminate, …
    pub fn tag(&self) -> u8 {
        self.tag
    }

    /// The payload after the length field.
    pub fn payload(&self) -> &'a [u8] {
        self.payload
    }

    /// The SQL text of a simple Query (`Q`) or Parse (`P`) message.
    pub fn sql(&self) -> Option<&'a str> {
        let cstr = |bytes: &'a [u8]| -> Option<(&'a [u8], &'a [u8])> {
            let end = bytes.iter().position(|&b| b == 0)?;
            Some((&bytes[..end], &bytes[end + 1..]))
        };
        let text = match self.tag {
            b'Q' => cstr(self.payload)?.0,
            b'P' => {
                let (_name, rest) = cstr(self.payload)?;
                cstr(rest)?.0
            }
            _ => return None,
        };
        std::str::from_utf8(text).ok()
    }
}

/// Which frontend message a [`Fault`] fires on.
///
/// Text comparisons are ASCII case-insensitive; "starts with" ignores leading
/// whitespace of the statement. sqlx sends `BEGIN`, `COMMIT` and `ROLLBACK` as simple
/// queries (`Q`) and user statements with the extended protocol (Parse/Bind/Execute/
/// Sync, or only Bind/Execute/Sync for cached prepared statements).
#[derive(Clone, Debug)]
pub enum Matcher {
    /// A simple Query (`Q`) whose text starts with the given string.
    QueryStartsWith(&'static str),
    /// A simple Query (`Q`) whose text contains the given string.
    QueryContains(&'static str),
    /// A Parse (`P`) message whose statement text starts with the given string.
    ParseStartsWith(&'static str),
    /// A Parse (`P`) message whose statement text contains the given string.
    ParseContains(&'static str),
    /// A simple Query or Parse message whose text contains the given string.
    SqlContains(&'static str),
    /// The first Parse or Bind message after a `BEGIN`/`START TRANSACTION` simple
    /// query on a connection, i.e. the first statement of the transaction body,
    /// whether or not it is already prepared.
    AnyExtendedQuery,
    /// The n-th (1-based) statement execution on a connection, counting simple
    /// Query (`Q`) and Bind (`B`) messages since the connection was opened.
    NthQueryOnConnection(usize),
    /// Any message with this type byte, e.g. `Matcher::Tag(b'S')` for a Sync.
    Tag(u8),
    /// A custom predicate.
    Predicate(fn(&FrontendMessage<'_>) -> bool),
}

/// What the connection looked like when a message arrived (for [`Matcher`]s).
#[derive(Debug, Clone, Copy)]
struct MessageContext {
    /// 1-based count of `Q` + `B` messages on the connection, including this one.
    statement_index: usize,
    /// Whether this is the first Parse/Bind after `BEGIN`.
    first_extended_after_begin: bool,
}

impl Matcher {
    fn matches(&self, msg: &FrontendMessage<'_>, ctx: &MessageContext) -> bool {
        let sql = || msg.sql().unwrap_or("");
        match *self {
            Matcher::QueryStartsWith(prefix) => msg.tag == b'Q' && starts_with_ci(sql(), prefix),
            Matcher::QueryContains(needle) => msg.tag == b'Q' && contains_ci(sql(), needle),
            Matcher::ParseStartsWith(prefix) => msg.tag == b'P' && starts_with_ci(sql(), prefix),
            Matcher::ParseContains(needle) => msg.tag == b'P' && contains_ci(sql(), needle),
            Matcher::SqlContains(needle) => {
                matches!(msg.tag, b'Q' | b'P') && contains_ci(sql(), needle)
            }
            Matcher::AnyExtendedQuery => ctx.first_extended_after_begin,
            Matcher::NthQueryOnConnection(n) => {
                matches!(msg.tag, b'Q' | b'B') && ctx.statement_index == n
            }
            Matcher::Tag(tag) => msg.tag == tag,
            Matcher::Predicate(predicate) => predicate(msg),
        }
    }
}

fn starts_with_ci(text: &str, prefix: &str) -> bool {
    let (text, prefix) = (text.trim_start().as_bytes(), prefix.trim().as_bytes());
    text.len() >= prefix.len() && text[..prefix.len()].eq_ignore_ascii_case(prefix)
}

fn contains_ci(text: &str, needle: &str) -> bool {
    text.to_ascii_lowercase()
        .contains(&needle.to_ascii_lowercase())
}

/// A fault to inject with [`PgProxy::arm`]. It fires once, on the next matching
/// frontend message on any connection of the proxy.
#[derive(Clone, Debug)]
pub enum Fault {
    /// Close both sides of the connection instead of forwarding the message: the
    /// server never sees it (messages before it in the same packet are forwarded).
    CutBeforeForwarding(Matcher),
    /// Forward the message (and what follows it), wait until the server has answered
    /// it (its `ReadyForQuery`, at most [`CUT_AFTER_GRACE`]), then close the
    /// connection without relaying the answer: the client sees an I/O error although
    /// the server executed the message (e.g. a `COMMIT` that landed).
    CutAfterForwarding(Matcher),
    /// Hold the message for the given time, then forward it.
    DelayBeforeForwarding(Matcher, Duration),
}

impl Fault {
    /// The matcher that selects the message the fault fires on.
    pub fn matcher(&self) -> &Matcher {
        match self {
            Fault::CutBeforeForwarding(m)
            | Fault::CutAfterForwarding(m)
            | Fault::DelayBeforeForwarding(m, _) => m,
        }
    }
}

const ARMED: u8 = 0;
const FIRED: u8 = 1;
const DISARMED: u8 = 2;

#[derive(Debug)]
struct FaultState {
    fault: Fault,
    status: AtomicU8,
    notify: Notify,
}

/// The handle returned by [`PgProxy::arm`].
#[derive(Debug, Clone)]
pub struct FaultHandle {
    state: Arc<FaultState>,
}

impl FaultHandle {
    /// The armed fault.
    pub fn fault(&self) -> &Fault {
        &self.state.fault
    }

    /// Whether the fault has fired.
    pub fn fired(&self) -> bool {
        self.state.status.load(Ordering::Acquire) == FIRED
    }

    /// Whether the fault is still waiting for a matching message.
    pub fn is_armed(&self) -> bool {
        self.state.status.load(Ordering::Acquire) == ARMED
    }

    /// Withdraws the fault; returns `false` if it had already fired (or was disarmed).
    pub fn disarm(&self) -> bool {
        self.state
            .status
            .compare_exchange(ARMED, DISARMED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Waits up to `timeout` for the fault to fire; returns [`FaultHandle::fired`].
    pub async fn wait_fired(&self, timeout: Duration) -> bool {
        let notified = self.state.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.fired() {
            return true;
        }
        let _ = tokio::time::timeout(timeout, notified).await;
        self.fired()
    }
}

// ---------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------

/// Traffic counters of a [`PgProxy`] (since start or [`PgProxy::reset_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProxyStats {
    /// Client connections accepted.
    pub connections: u64,
    /// Client → server round trips: simple Query (`Q`) plus Sync (`S`) messages
    /// forwarded. (sqlx's `ping`, used by pools before handing out idle
    /// connections, is a lone Sync and counts, too.)
    pub round_trips: u64,
    /// Simple Query (`Q`) messages forwarded.
    pub simple_queries: u64,
    /// Simple queries that are a bare `ROLLBACK`, which nobody waits for: sqlx queues the
    /// ROLLBACK of a dropped transaction ahead of the connection's next message, and sqlx-retry
    /// sends the one that ends the empty transaction after its COMMIT without awaiting the
    /// answer. `round_trips - rollbacks` is what a client waits for while no statement fails.
    pub rollbacks: u64,
    /// Sync (`S`) messages forwarded.
    pub syncs: u64,
    /// Parse (`P`) messages forwarded.
    pub parses: u64,
    /// Bind (`B`) messages forwarded.
    pub binds: u64,
    /// Execute (`E`) messages forwarded.
    pub executes: u64,
    /// All typed frontend messages forwarded.
    pub messages: u64,
    /// Bytes forwarded from clients to the server.
    pub bytes_to_server: u64,
    /// Bytes received from the server (relayed to clients unless a fault cut them).
    pub bytes_to_client: u64,
    /// NoticeResponse (`N`) messages from the server, such as the warning "there is no
    /// transaction in progress".
    pub notices: u64,
}

impl ProxyStats {
    /// The difference `self - earlier`, counter by counter (saturating).
    pub fn since(&self, earlier: &ProxyStats) -> ProxyStats {
        ProxyStats {
            connections: self.connections.saturating_sub(earlier.connections),
            round_trips: self.round_trips.saturating_sub(earlier.round_trips),
            simple_queries: self.simple_queries.saturating_sub(earlier.simple_queries),
            rollbacks: self.rollbacks.saturating_sub(earlier.rollbacks),
            syncs: self.syncs.saturating_sub(earlier.syncs),
            parses: self.parses.saturating_sub(earlier.parses),
            binds: self.binds.saturating_sub(earlier.binds),
            executes: self.executes.saturating_sub(earlier.executes),
            messages: self.messages.saturating_sub(earlier.messages),
            bytes_to_server: self.bytes_to_server.saturating_sub(earlier.bytes_to_server),
            bytes_to_client: self.bytes_to_client.saturating_sub(earlier.bytes_to_client),
            notices: self.notices.saturating_sub(earlier.notices),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    simple_queries: AtomicU64,
    rollbacks: AtomicU64,
    syncs: AtomicU64,
    parses: AtomicU64,
    binds: AtomicU64,
    executes: AtomicU64,
    messages: AtomicU64,
    bytes_to_server: AtomicU64,
    bytes_to_client: AtomicU64,
    notices: AtomicU64,
}

impl Counters {
    fn all(&self) -> [&AtomicU64; 11] {
        [
            &self.connections,
            &self.simple_queries,
            &self.rollbacks,
            &self.syncs,
            &self.parses,
            &self.binds,
            &self.executes,
            &self.messages,
            &self.bytes_to_server,
            &self.bytes_to_client,
            &self.notices,
        ]
    }

    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn count_message(&self, msg: &FrontendMessage<'_>, len: usize) {
        Self::add(&self.messages, 1);
        Self::add(&self.bytes_to_server, len as u64);
        if msg.tag == b'Q' && msg.sql().is_some_and(|sql| sql.trim() == "ROLLBACK") {
            Self::add(&self.rollbacks, 1);
        }
        match msg.tag {
            b'Q' => Self::add(&self.simple_queries, 1),
            b'S' => Self::add(&self.syncs, 1),
            b'P' => Self::add(&self.parses, 1),
            b'B' => Self::add(&self.binds, 1),
            b'E' => Self::add(&self.executes, 1),
            _ => {}
        }
    }

    fn snapshot(&self) -> ProxyStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let simple_queries = get(&self.simple_queries);
        let syncs = get(&self.syncs);
        ProxyStats {
            connections: get(&self.connections),
            round_trips: simple_queries + syncs,
            simple_queries,
            rollbacks: get(&self.rollbacks),
            syncs,
            parses: get(&self.parses),
            binds: get(&self.binds),
            executes: get(&self.executes),
            messages: get(&self.messages),
            bytes_to_server: get(&self.bytes_to_server),
            bytes_to_client: get(&self.bytes_to_client),
            notices: get(&self.notices),
        }
    }
}

// ---------------------------------------------------------------------------------
// Upstreams
// ---------------------------------------------------------------------------------

/// The server a [`PgProxy`] forwards to: a TCP address plus the connect options
/// (user, password, database) used to build [`PgProxy::url`].
#[derive(Debug, Clone)]
pub struct Upstream {
    addr: String,
    options: PgConnectOptions,
}

impl Upstream {
    /// An upstream at `addr` (`host:port`) whose clients log in with `options`
    /// (host, port and TLS settings of `options` are replaced by the proxy's).
    pub fn new(addr: impl Into<String>, options: PgConnectOptions) -> Self {
        Self {
            addr: addr.into(),
            options,
        }
    }

    /// An upstream at `addr` with default credentials: those of `$DATABASE_URL` if
    /// set, else user `postgres` and database `postgres`.
    pub fn from_addr(addr: impl Into<String>) -> Self {
        let options = std::env::var("DATABASE_URL")
            .ok()
            .and_then(|url| url.parse::<PgConnectOptions>().ok())
            .unwrap_or_else(|| {
                PgConnectOptions::new_without_pgpass()
                    .username("postgres")
                    .database("postgres")
            });
        Self::new(addr, options)
    }

    /// The upstream that `options` connect to (must be TCP, not a Unix socket).
    pub fn from_options(options: &PgConnectOptions) -> io::Result<Self> {
        if let Some(socket) = options.get_socket() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "PgProxy needs a TCP upstream, got Unix socket {}",
                    socket.display()
                ),
            ));
        }
        let host = options.get_host();
        let addr = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{}", options.get_port())
        } else {
            format!("{host}:{}", options.get_port())
        };
        Ok(Self::new(addr, options.clone()))
    }
}

/// Things [`PgProxy::start`] accepts as upstream: a [`SocketAddr`], `"host:port"`, a
/// `postgres://` URL, `(host, port)`, [`PgConnectOptions`], a [`PgServer`] or an
/// [`Upstream`].
pub trait IntoUpstream {
    /// Converts into an [`Upstream`].
    fn into_upstream(self) -> io::Result<Upstream>;
}

impl IntoUpstream for Upstream {
    fn into_upstream(self) -> io::Result<Upstream> {
        Ok(self)
    }
}

impl IntoUpstream for SocketAddr {
    fn into_upstream(self) -> io::Result<Upstream> {
        Ok(Upstream::from_addr(self.to_string()))
    }
}

impl IntoUpstream for &str {
    fn into_upstream(self) -> io::Result<Upstream> {
        if self.starts_with("postgres://") || self.starts_with("postgresql://") {
            let options: PgConnectOptions = self
                .parse()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Upstream::from_options(&options)
        } else {
            Ok(Upstream::from_addr(self))
        }
    }
}

impl IntoUpstream for String {
    fn into_upstream(self) -> io::Result<Upstream> {
        self.as_str().into_upstream()
    }
}

impl IntoUpstream for &String {
    fn into_upstream(self) -> io::Result<Upstream> {
        self.as_str().into_upstream()
    }
}

impl IntoUpstream for (&str, u16) {
    fn into_upstream(self) -> io::Result<Upstream> {
        Ok(Upstream::from_addr(format!("{}:{}", self.0, self.1)))
    }
}

impl IntoUpstream for &PgConnectOptions {
    fn into_upstream(self) -> io::Result<Upstream> {
        Upstream::from_options(self)
    }
}

impl IntoUpstream for PgConnectOptions {
    fn into_upstream(self) -> io::Result<Upstream> {
        Upstream::from_options(&self)
    }
}

impl IntoUpstream for &PgServer {
    fn into_upstream(self) -> io::Result<Upstream> {
        Upstream::from_options(&self.connect_options())
    }
}

// ---------------------------------------------------------------------------------
// The proxy
// ---------------------------------------------------------------------------------

/// A TCP proxy in front of a PostgreSQL server that parses the client → server
/// message stream, counts round trips and injects [`Fault`]s.
///
/// It listens on `127.0.0.1` (random port) and runs on the Tokio runtime that
/// started it; dropping it stops the listener and cuts every connection.
///
/// ```no_run
/// # async fn demo() {
/// use sqlx_retry_testkit::{Fault, Matcher, PgProxy};
///
/// let proxy = PgProxy::start(sqlx_retry_testkit::connect_options()).await;
/// let lost_commit = proxy.arm(Fault::CutAfterForwarding(Matcher::QueryStartsWith("COMMIT")));
/// // … run a transaction through a pool made from `proxy.connect_options()` …
/// assert!(lost_commit.fired());
/// # }
/// ```
pub struct PgProxy {
    shared: Arc<Shared>,
    addr: SocketAddr,
    options: PgConnectOptions,
    accept_task: JoinHandle<()>,
}

impl fmt::Debug for PgProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.shared.upstream)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

struct Shared {
    upstream: SocketAddr,
    faults: Mutex<Vec<Arc<FaultState>>>,
    /// Length of `faults`, to skip the lock while nothing is armed.
    pending_faults: AtomicUsize,
    fired: AtomicUsize,
    connections: Mutex<JoinSet<()>>,
    active: AtomicUsize,
    reject_new: AtomicBool,
    counters: Counters,
    /// The statements executed, while [`PgProxy::record_statements`] is on.
    log: Mutex<Option<Vec<String>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl PgProxy {
    /// Starts a proxy in front of `upstream` on the current Tokio runtime.
    ///
    /// # Panics
    ///
    /// If the upstream can't be resolved or the listener can't be bound; see
    /// [`PgProxy::try_start`].
    pub async fn start(upstream: impl IntoUpstream) -> PgProxy {
        match Self::try_start(upstream).await {
            Ok(proxy) => proxy,
            Err(e) => panic!("sqlx-retry-testkit: could not start PgProxy: {e}"),
        }
    }

    /// Starts a proxy in front of the test database ([`crate::postgres_url`]).
    ///
    /// # Panics
    ///
    /// If no database is available or the proxy can't start.
    pub async fn for_test_db() -> PgProxy {
        Self::start(crate::connect_options()).await
    }

    /// Starts a proxy in front of `upstream` on the current Tokio runtime.
    pub async fn try_start(upstream: impl IntoUpstream) -> io::Result<PgProxy> {
        let upstream = upstream.into_upstream()?;
        let upstream_addr = tokio::net::lookup_host(&upstream.addr)
            .await?
            .next()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{} did not resolve to any address", upstream.addr),
                )
            })?;
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream: upstream_addr,
            faults: Mutex::new(Vec::new()),
            pending_faults: AtomicUsize::new(0),
            fired: AtomicUsize::new(0),
            connections: Mutex::new(JoinSet::new()),
            active: AtomicUsize::new(0),
            reject_new: AtomicBool::new(false),
            counters: Counters::default(),
            log: Mutex::new(None),
        });
        let accept_task = tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        let options = upstream
            .options
            .host("127.0.0.1")
            .port(addr.port())
            .ssl_mode(PgSslMode::Disable);
        Ok(PgProxy {
            shared,
            addr,
            options,
            accept_task,
        })
    }

    /// The address the proxy listens on (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server address the proxy forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// A `postgres://` URL that connects through the proxy, with the upstream's
    /// user, password and database and `sslmode=disable`.
    pub fn url(&self) -> String {
        self.options.to_url_lossy().to_string()
    }

    /// Connect options that connect through the proxy (`sslmode=disable`).
    pub fn connect_options(&self) -> PgConnectOptions {
        self.options.clone()
    }

    /// [`PgProxy::connect_options`] with `search_path` set to `schema`.
    pub fn schema_options(&self, schema: &str) -> PgConnectOptions {
        crate::schema::with_search_path(self.connect_options(), schema)
    }

    /// Arms `fault`: it fires once, on the next matching message on any connection.
    /// Several armed faults fire in the order they were armed, one per message.
    pub fn arm(&self, fault: Fault) -> FaultHandle {
        let state = Arc::new(FaultState {
            fault,
            status: AtomicU8::new(ARMED),
            notify: Notify::new(),
        });
        let mut faults = lock(&self.shared.faults);
        faults.push(Arc::clone(&state));
        self.shared
            .pending_faults
            .store(faults.len(), Ordering::Release);
        FaultHandle { state }
    }

    /// How many faults have fired so far.
    pub fn fired(&self) -> usize {
        self.shared.fired.load(Ordering::Acquire)
    }

    /// How many faults are armed and have not fired yet.
    pub fn armed(&self) -> usize {
        lock(&self.shared.faults)
            .iter()
            .filter(|f| f.status.load(Ordering::Acquire) == ARMED)
            .count()
    }

    /// Withdraws every armed fault that has not fired yet.
    pub fn disarm_all(&self) {
        let mut faults = lock(&self.shared.faults);
        for fault in faults.drain(..) {
            let _ =
                fault
                    .status
                    .compare_exchange(ARMED, DISARMED, Ordering::AcqRel, Ordering::Acquire);
        }
        self.shared.pending_faults.store(0, Ordering::Release);
    }

    /// Closes every current connection (both sides) immediately; returns how many
    /// were open. New connections are still accepted.
    pub fn cut_all(&self) -> usize {
        let open = self.active_connections();
        lock(&self.shared.connections).abort_all();
        open
    }

    /// The number of client connections currently open through the proxy.
    pub fn active_connections(&self) -> usize {
        self.shared.active.load(Ordering::Acquire)
    }

    /// While `true`, new client connections are accepted and closed at once (as if
    /// the server were down); existing connections are not affected.
    pub fn set_reject_new_connections(&self, reject: bool) {
        self.shared.reject_new.store(reject, Ordering::Release);
    }

    /// The traffic counters.
    pub fn stats(&self) -> ProxyStats {
        self.shared.counters.snapshot()
    }

    /// Starts (or restarts, empty) the log of executed statements that
    /// [`PgProxy::statements`] returns.
    pub fn record_statements(&self) {
        *lock(&self.shared.log) = Some(Vec::new());
    }

    /// The statements executed since [`PgProxy::record_statements`], in the order
    /// they were forwarded, on every connection: the text of each simple Query (`Q`, as
    /// sent: one entry even for `SELECT 1; COMMIT`) and, for each Bind (`B`), the text
    /// of the prepared statement it executes (so a cached statement is logged every time
    /// it runs). Empty when recording is off.
    pub fn statements(&self) -> Vec<String> {
        lock(&self.shared.log).clone().unwrap_or_default()
    }

    /// Sets every traffic counter to zero.
    pub fn reset_stats(&self) {
        for counter in self.shared.counters.all() {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.accept_task.abort();
        // Dropping the set aborts every connection task.
        drop(std::mem::take(&mut *lock(&self.shared.connections)));
    }
}

impl Shared {
    /// Finds, claims and removes the first armed fault that matches `msg`.
    fn take_fault(&self, msg: &FrontendMessage<'_>, ctx: &MessageContext) -> Option<Fault> {
        if self.pending_faults.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut faults = lock(&self.faults);
        faults.retain(|f| f.status.load(Ordering::Acquire) == ARMED);
        let mut claimed = None;
        let mut i = 0;
        while i < faults.len() {
            if faults[i].fault.matcher().matches(msg, ctx) {
                let state = faults.remove(i);
                if state
                    .status
                    .compare_exchange(ARMED, FIRED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    claimed = Some(state);
                    break;
                }
            } else {
                i += 1;
            }
        }
        self.pending_faults.store(faults.len(), Ordering::Release);
        drop(faults);
        let state = claimed?;
        self.fired.fetch_add(1, Ordering::AcqRel);
        state.notify.notify_waiters();
        Some(state.fault.clone())
    }
}

struct ActiveGuard<'a>(&'a AtomicUsize);

impl<'a> ActiveGuard<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                // E.g. out of file descriptors; don't spin.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.reject_new.load(Ordering::Acquire) {
            drop(client);
            continue;
        }
        Counters::add(&shared.counters.connections, 1);
        let mut connections = lock(&shared.connections);
        while connections.try_join_next().is_some() {}
        connections.spawn(serve_connection(Arc::clone(&shared), client));
    }
}

/// Per-connection state shared by both directions.
#[derive(Default)]
struct ConnState {
    /// SSLRequest/GSSENCRequest packets forwarded whose one-byte answer is pending.
    single_byte_answers: AtomicU32,
    /// TLS or unparseable traffic: relay bytes without framing.
    passthrough: AtomicBool,
    /// 0, or the number of the sync point (counting from 1 = startup) whose
    /// `ReadyForQuery` ends the connection without being relayed.
    cut_after_sync_point: AtomicU64,
    cut_after_armed: Notify,
}

async fn serve_connection(shared: Arc<Shared>, client: TcpStream) {
    let _active = ActiveGuard::new(&shared.active);
    let Ok(server) = TcpStream::connect(shared.upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let conn = ConnState::default();
    tokio::select! {
        () = client_to_server(&shared, &conn, client_read, server_write) => {}
        () = server_to_client(&shared, &conn, server_read, client_write) => {}
        () = async {
            conn.cut_after_armed.notified().await;
            tokio::time::sleep(CUT_AFTER_GRACE).await;
        } => {}
    }
    // Both sockets are dropped (closed) here.
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Startup,
    Typed,
    Passthrough,
}

/// Per-connection state of the client → server direction.
struct ClientSide {
    phase: Phase,
    after_ssl_request: bool,
    /// Sync points forwarded: the startup packet and every `Q`, `S` and `F` message;
    /// the server answers each with exactly one `ReadyForQuery`.
    sync_points: u64,
    statements: usize,
    after_begin: bool,
    /// Prepared statement name → SQL text, for the statement log.
    prepared: std::collections::HashMap<Vec<u8>, String>,
}

enum Frame {
    /// Forward this many bytes without looking at them.
    Raw(usize),
    /// A typed message of this total length (type byte included).
    Typed(usize),
}

impl ClientSide {
    /// The next complete frame at the start of `buf`, if any.
    fn next_frame(&mut self, buf: &[u8], conn: &ConnState) -> Option<Frame> {
        if buf.is_empty() {
            return None;
        }
        if conn.passthrough.load(Ordering::Acquire) {
            self.phase = Phase::Passthrough;
        }
        match self.phase {
            Phase::Passthrough => Some(Frame::Raw(buf.len())),
            Phase::Startup => {
                if self.after_ssl_request && buf[0] == 0x16 {
                    // A TLS ClientHello: the server accepted the SSLRequest.
                    return Some(self.passthrough(buf, conn));
                }
                if buf.len() < 8 {
                    return None;
                }
                let len = be_u32(&buf[..4]) as usize;
                if !(8..=1 << 20).contains(&len) {
                    return Some(self.passthrough(buf, conn));
                }
                if buf.len() < len {
                    return None;
                }
                match be_u32(&buf[4..8]) {
                    SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
                        conn.single_byte_answers.fetch_add(1, Ordering::AcqRel);
                        self.after_ssl_request = true;
                    }
                    CANCEL_REQUEST_CODE => {}
                    _ => {
                        self.phase = Phase::Typed;
                        self.sync_points += 1;
                    }
                }
                Some(Frame::Raw(len))
            }
            Phase::Typed => {
                if buf.len() < 5 {
                    return None;
                }
                let len = be_u32(&buf[1..5]) as usize;
                if len < 4 {
                    return Some(self.passthrough(buf, conn));
                }
                (buf.len() > len).then_some(Frame::Typed(len + 1))
            }
        }
    }

    /// The SQL text `msg` executes, for the statement log: a simple Query's text, or the
    /// prepared statement a Bind names (remembered from its Parse).
    fn executed(&mut self, msg: &FrontendMessage<'_>) -> Option<String> {
        let cstr = |bytes: &[u8]| bytes.iter().position(|&b| b == 0);
        match msg.tag {
            b'Q' => msg.sql().map(str::to_owned),
            b'P' => {
                let end = cstr(msg.payload)?;
                let name = msg.payload[..end].to_vec();
                self.prepared.insert(name, msg.sql()?.to_owned());
                None
            }
            b'B' => {
                let portal_end = cstr(msg.payload)?;
                let rest = &msg.payload[portal_end + 1..];
                let name = &rest[..cstr(rest)?];
                self.prepared.get(name).cloned()
            }
            _ => None,
        }
    }

    fn passthrough(&mut self, buf: &[u8], conn: &ConnState) -> Frame {
        self.phase = Phase::Passthrough;
        conn.passthrough.store(true, Ordering::Release);
        Frame::Raw(buf.len())
    }

    /// Updates the per-connection bookkeeping for `msg` and returns the context the
    /// matchers see.
    fn observe(&mut self, msg: &FrontendMessage<'_>) -> MessageContext {
        let first_extended_after_begin = self.after_begin && matches!(msg.tag, b'P' | b'B');
        match msg.tag {
            b'Q' => {
                self.statements += 1;
                let sql = msg.sql().unwrap_or("");
                if starts_with_ci(sql, "BEGIN") || starts_with_ci(sql, "START TRANSACTION") {
                    self.after_begin = true;
                } else if ["COMMIT", "ROLLBACK", "END", "ABORT"]
                    .iter()
                    .any(|p| starts_with_ci(sql, p))
                {
                    self.after_begin = false;
                }
            }
            b'B' => {
                self.statements += 1;
                self.after_begin = false;
            }
            b'P' => self.after_begin = false,
            _ => {}
        }
        MessageContext {
            statement_index: self.statements,
            first_extended_after_begin,
        }
    }
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

async fn client_to_server(
    shared: &Shared,
    conn: &ConnState,
    mut client: OwnedReadHalf,
    mut server: OwnedWriteHalf,
) {
    let mut side = ClientSide {
        phase: Phase::Startup,
        after_ssl_request: false,
        sync_points: 0,
        statements: 0,
        after_begin: false,
        prepared: std::collections::HashMap::new(),
    };
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    loop {
        let n = match client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut pos = 0;
        let mut cut = false;
        while let Some(frame) = side.next_frame(&buf[pos..], conn) {
            let len = match frame {
                Frame::Raw(len) => {
                    Counters::add(&shared.counters.bytes_to_server, len as u64);
                    out.extend_from_slice(&buf[pos..pos + len]);
                    pos += len;
                    continue;
                }
                Frame::Typed(len) => len,
            };
            let bytes = &buf[pos..pos + len];
            let msg = FrontendMessage::new(bytes[0], &bytes[5..]);
            let ctx = side.observe(&msg);
            match shared.take_fault(&msg, &ctx) {
                Some(Fault::CutBeforeForwarding(_)) => {
                    cut = true;
                    break;
                }
                Some(Fault::CutAfterForwarding(_)) => {
                    // The sync point answering this message: itself if it is a
                    // `Q`/`S`/`F`, else the next one.
                    let target = side.sync_points + 1;
                    // Published before the message is written, so the server side
                    // cannot see the answer before it knows to swallow it.
                    conn.cut_after_sync_point.store(target, Ordering::Release);
                    conn.cut_after_armed.notify_one();
                }
                Some(Fault::DelayBeforeForwarding(_, delay)) => {
                    if server.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                    tokio::time::sleep(delay).await;
                }
                None => {}
            }
            if matches!(msg.tag, b'Q' | b'S' | b'F') {
                side.sync_points += 1;
            }
            if let Some(sql) = side.executed(&msg)
                && let Some(log) = lock(&shared.log).as_mut()
            {
                log.push(sql);
            }
            shared.counters.count_message(&msg, len);
            out.extend_from_slice(bytes);
            pos += len;
        }
        if !out.is_empty() {
            if server.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if cut {
            return;
        }
        buf.drain(..pos);
    }
}

async fn server_to_client(
    shared: &Shared,
    conn: &ConnState,
    mut server: OwnedReadHalf,
    mut client: OwnedWriteHalf,
) {
    let mut chunk = vec![0u8; READ_CHUNK];
    let mut buf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    // `ReadyForQuery` messages seen; the k-th answers sync point k.
    let mut ready_seen: u64 = 0;
    loop {
        let n = match server.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        Counters::add(&shared.counters.bytes_to_client, n as u64);
        buf.extend_from_slice(&chunk[..n]);
        let mut pos = 0;
        let mut finished = false;
        while pos < buf.len() {
            let target = conn.cut_after_sync_point.load(Ordering::Acquire);
            if conn.passthrough.load(Ordering::Acquire) {
                if target != 0 {
                    // Can't find message boundaries: any answer ends it.
                    finished = true;
                } else {
                    out.extend_from_slice(&buf[pos..]);
                }
                pos = buf.len();
                break;
            }
            let rest = &buf[pos..];
            if conn.single_byte_answers.load(Ordering::Acquire) > 0 {
                conn.single_byte_answers.fetch_sub(1, Ordering::AcqRel);
                if matches!(rest[0], b'S' | b'G') {
                    conn.passthrough.store(true, Ordering::Release);
                }
                out.push(rest[0]);
                pos += 1;
                continue;
            }
            if rest.len() < 5 {
                break;
            }
            let len = be_u32(&rest[1..5]) as usize;
            if len < 4 {
                conn.passthrough.store(true, Ordering::Release);
                continue;
            }
            if rest.len() <= len {
                break;
            }
            let total = len + 1;
            if rest[0] == b'N' {
                Counters::add(&shared.counters.notices, 1);
            }
            let swallow = target != 0 && ready_seen + 1 >= target;
            if !swallow {
                out.extend_from_slice(&rest[..total]);
            }
            if rest[0] == b'Z' {
                ready_seen += 1;
                if target != 0 && ready_seen >= target {
                    finished = true;
                    pos += total;
                    break;
                }
            }
            pos += total;
        }
        if !out.is_empty() {
            if client.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if finished {
            return;
        }
        buf.drain(..pos);
    }
}
