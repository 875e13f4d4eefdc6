//! A throwaway primary + hot standby pair: two PostgreSQL clusters joined by streaming
//! replication, for tests of reads on standbys, replication lag and recovery conflicts.

use std::fmt;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions as _, Connection as _, PgConnection, PgPool};

use crate::process::{self, block_on, random_u64, running_as_root, shell_quote, tail_of_file};
use crate::schema::{quote_ident, with_search_path};
use crate::server::{ServerError, find_pg_bin, free_port, make_temp_root};

/// How long to wait for a freshly started cluster to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`PgReplicaPair::wait_for_replay`] waits for the standby to catch up.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(10);

/// The standby's `max_standby_streaming_delay`: how long WAL replay waits for a standby query
/// that holds a conflicting lock (or needs rows the primary vacuumed away) before it cancels the
/// query with SQLSTATE `40001` "canceling statement due to conflict with recovery", or ends an
/// idle-in-transaction session with FATAL `40001`.
pub const STANDBY_MAX_DELAY: Duration = Duration::from_millis(200);

/// The advice printed whenever the pair cannot be started.
const HOW_TO_GET_A_PAIR: &str = "The replica tests start their own primary + hot standby pair \
     from the local PostgreSQL binaries (initdb, pg_ctl, postgres, pg_basebackup); install \
     PostgreSQL (apt-get install -y postgresql) or point $PG_BIN at its bin directory. \
     DATABASE_URL is not used for them: a foreign server can't be given a standby.";

/// A primary and a hot standby streaming from it, both throwaway clusters on 127.0.0.1.
///
/// The primary is created with `initdb`; the standby is a `pg_basebackup -R -X stream` of it
/// running with `hot_standby = on` and `max_standby_streaming_delay` =
/// [`STANDBY_MAX_DELAY`]. Both run with `fsync = off` (the data is thrown away) but with
/// synchronous commit, so a commit acknowledged by the primary is in its WAL and on its way to
/// the standby. A shell watchdog stops both and deletes their directory when the test process
/// exits (however it exits), as for [`PgServer`](crate::PgServer).
///
/// Most tests share the process-wide pair, [`PgReplicaPair::global`], and isolate themselves
/// with [`PgReplicaPair::isolated_schema`]. [`pause_replay`](Self::pause_replay) and
/// [`stop_standby`](Self::stop_standby) affect every test using the pair: tests that call
/// them should not run concurrently with other tests of the same pair.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use sqlx_retry_testkit::PgReplicaPair;
///
/// let pair = PgReplicaPair::global();
/// let schema = pair.isolated_schema().await;
/// let primary = schema.primary_pool(2).await;
/// sqlx::raw_sql("CREATE TABLE t (id int); INSERT INTO t VALUES (1)").execute(&primary).await?;
/// pair.wait_for_replay().await?;
/// let standby = schema.standby_pool(2).await;
/// let n: i64 = sqlx::query_scalar("SELECT count(*) FROM t").fetch_one(&standby).await?;
/// assert_eq!(n, 1);
/// # Ok(()) }
/// ```
pub struct PgReplicaPair {
    bin: PathBuf,
    root: PathBuf,
    as_postgres_user: bool,
    primary: Node,
    standby: Node,
    /// Serialises start/stop of the standby; holds the watchdog so it can be killed on drop.
    control: Mutex<Option<Child>>,
}

impl fmt::Debug for PgReplicaPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgReplicaPair")
            .field("primary_url", &self.primary_url())
            .field("standby_url", &self.standby_url())
            .field("root", &self.root)
            .finish()
    }
}

/// One cluster of the pair.
struct Node {
    name: &'static str,
    data: PathBuf,
    port: u16,
}

impl Node {
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn options(&self) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(self.port)
            .username("postgres")
            .database("postgres")
            .ssl_mode(PgSslMode::Disable)
            .disable_statement_logging()
    }

    fn log_name(&self) -> String {
        format!("{}.log", self.name)
    }
}

static GLOBAL: OnceLock<Result<PgReplicaPair, ServerError>> = OnceLock::new();

impl PgReplicaPair {
    /// The process-wide pair, started on first use (blocking, safe from many threads and from
    /// inside a Tokio runtime).
    ///
    /// # Panics
    ///
    /// If the pair can't be started; the message says how to fix it and includes the tails of
    /// the clusters' logs.
    pub fn global() -> &'static PgReplicaPair {
        match GLOBAL.get_or_init(PgReplicaPair::start) {
            Ok(pair) => pair,
            Err(e) => panic!("sqlx-retry-testkit: no primary + standby pair available: {e}"),
        }
    }

    /// Creates and starts a new private pair. Blocking; returns once the standby accepts
    /// connections and has replayed everything the primary wrote so far.
    ///
    /// Both clusters are stopped and deleted when the returned value is dropped, or by the
    /// watchdog when the process exits.
    pub fn start() -> Result<PgReplicaPair, ServerError> {
        let bin = find_pg_bin()
            .map_err(|e| ServerError::new(format!("{}\n{HOW_TO_GET_A_PAIR}", e.message())))?;
        if !bin.join("pg_basebackup").is_file() {
            return Err(ServerError::new(format!(
                "{} has no pg_basebackup\n{HOW_TO_GET_A_PAIR}",
                bin.display()
            )));
        }
        let as_postgres_user = running_as_root();
        let root = make_temp_root(as_postgres_user)?;
        let primary_data = root.join("primary");
        let standby_data = root.join("standby");
        // Started before anything else so that the directory is removed even if initdb or a
        // server fail.
        let watchdog = spawn_watchdog(
            &bin,
            &root,
            &[&standby_data, &primary_data],
            as_postgres_user,
        )
        .map_err(|e| {
            let _ = fs::remove_dir_all(&root);
            ServerError::new(format!("could not spawn the watchdog shell: {e}"))
        })?;
        let mut pair = PgReplicaPair {
            bin,
            root,
            as_postgres_user,
            primary: Node {
                name: "primary",
                data: primary_data,
                port: 0,
            },
            standby: Node {
                name: "standby",
                data: standby_data,
                port: 0,
            },
            control: Mutex::new(Some(watchdog)),
        };
        pair.initdb()?;
        pair.primary.port = pair.start_on_free_port(&pair.primary, Self::primary_settings)?;
        pair.base_backup()?;
        pair.standby.port = pair.start_on_free_port(&pair.standby, Self::standby_settings)?;
        block_on(pair.wait_for_replay())?;
        Ok(pair)
        // On error `pair` is dropped: kills the watchdog, stops the clusters, removes the dir.
    }

    /// The primary's URL, `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn primary_url(&self) -> String {
        self.primary.url()
    }

    /// The standby's URL, `postgres://postgres@127.0.0.1:PORT/postgres`.
    pub fn standby_url(&self) -> String {
        self.standby.url()
    }

    /// The primary's TCP port.
    pub fn primary_port(&self) -> u16 {
        self.primary.port
    }

    /// The standby's TCP port.
    pub fn standby_port(&self) -> u16 {
        self.standby.port
    }

    /// Connect options for the primary's `postgres` database as the `postgres` superuser.
    pub fn primary_options(&self) -> PgConnectOptions {
        self.primary.options()
    }

    /// Connect options for the standby's `postgres` database as the `postgres` superuser.
    pub fn standby_options(&self) -> PgConnectOptions {
        self.standby.options()
    }

    /// A pool of at most `max_connections` connections to the primary.
    ///
    /// # Panics
    ///
    /// If the pool can't connect.
    pub async fn primary_pool(&self, max_connections: u32) -> PgPool {
        connect_pool(self.primary_options(), max_connections).await
    }

    /// A pool of at most `max_connections` connections to the standby.
    ///
    /// # Panics
    ///
    /// If the pool can't connect.
    pub async fn standby_pool(&self, max_connections: u32) -> PgPool {
        connect_pool(self.standby_options(), max_connections).await
    }

    /// Creates a fresh schema on the primary and waits until the standby has replayed it, so
    /// parallel tests sharing the pair don't see each other's tables.
    ///
    /// # Panics
    ///
    /// If the schema can't be created or the standby does not replay it in time.
    pub async fn isolated_schema(&self) -> ReplicaSchema<'_> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let schema = format!(
            "r_{}_{}_{:06x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            random_u64() & 0xff_ffff
        );
        let sql = format!("CREATE SCHEMA {}", quote_ident(&schema));
        if let Err(e) = self.on_primary(&sql).await {
            panic!("sqlx-retry-testkit: could not create schema {schema} on the primary: {e}");
        }
        if let Err(e) = self.wait_for_replay().await {
            panic!("sqlx-retry-testkit: the standby did not replay schema {schema}: {e}");
        }
        ReplicaSchema { pair: self, schema }
    }

    /// Pauses WAL replay on the standby (`pg_wal_replay_pause()`) and waits until it is paused:
    /// from then on the standby lags, showing the state of the last replayed commit, until
    /// [`resume_replay`](Self::resume_replay).
    pub async fn pause_replay(&self) -> Result<(), ServerError> {
        self.on_standby_despite_conflicts("SELECT pg_wal_replay_pause()")
            .await?;
        let deadline = Instant::now() + REPLAY_TIMEOUT;
        loop {
            let state: String = self
                .standby_scalar("SELECT pg_get_wal_replay_pause_state()")
                .await?;
            if state == "paused" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.error(format!(
                    "the standby's replay is still {state:?} {REPLAY_TIMEOUT:?} after \
                     pg_wal_replay_pause()"
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Resumes WAL replay on the standby (`pg_wal_replay_resume()`).
    ///
    /// The statement itself can be cancelled by a recovery conflict (replay, waking up, may
    /// remove row versions its snapshot could need): it is then sent again, a few times.
    pub async fn resume_replay(&self) -> Result<(), ServerError> {
        self.on_standby_despite_conflicts("SELECT pg_wal_replay_resume()")
            .await
    }

    /// Whether the standby's WAL replay is paused (or being paused).
    pub async fn replay_paused(&self) -> Result<bool, ServerError> {
        let state: String = self
            .standby_scalar("SELECT pg_get_wal_replay_pause_state()")
            .await?;
        Ok(state != "not paused")
    }

    /// The primary's current WAL write position (`pg_current_wal_lsn()`), e.g. `0/3000148`.
    pub async fn primary_lsn(&self) -> Result<String, ServerError> {
        self.primary_scalar("SELECT pg_current_wal_lsn()::text")
            .await
    }

    /// The last WAL position the standby replayed (`pg_last_wal_replay_lsn()`).
    pub async fn standby_replay_lsn(&self) -> Result<String, ServerError> {
        self.standby_scalar("SELECT coalesce(pg_last_wal_replay_lsn()::text, '0/0')")
            .await
    }

    /// Waits (at most 10 s) until the standby has replayed past the primary's current WAL
    /// position, i.e. every commit acknowledged before this call is visible on the standby.
    /// Fails at once if the standby's replay is paused.
    pub async fn wait_for_replay(&self) -> Result<(), ServerError> {
        let target = self.primary_lsn().await?;
        let deadline = Instant::now() + REPLAY_TIMEOUT;
        let options = self.standby_options();
        let result = async {
            let mut conn = PgConnection::connect_with(&options).await?;
            loop {
                let (done, paused): (bool, bool) = sqlx::query_as(
                    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false), \
                            pg_get_wal_replay_pause_state() <> 'not paused'",
                )
                .bind(&target)
                .persistent(false)
                .fetch_one(&mut conn)
                .await?;
                if done {
                    conn.close().await?;
                    return Ok::<_, sqlx::Error>(Ok(()));
                }
                if paused {
                    return Ok(Err(format!(
                        "the standby's replay is paused before {target} (resume_replay() first)"
                    )));
                }
                if Instant::now() >= deadline {
                    return Ok(Err(format!(
                        "the standby did not replay up to {target} within {REPLAY_TIMEOUT:?}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        .await;
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(what)) => Err(self.error(what)),
            Err(e) => Err(self.error(format!("querying the standby: {e}"))),
        }
    }

    /// Stops the standby (`pg_ctl stop -m immediate`): its connections are cut and new ones
    /// refused until [`start_standby`](Self::start_standby). Blocking.
    pub fn stop_standby(&self) -> Result<(), ServerError> {
        let _guard = self.control.lock().unwrap_or_else(|e| e.into_inner());
        self.stop_immediate(&self.standby)
    }

    /// Starts the stopped standby again (same port and data directory), waits until it accepts
    /// connections and has caught up with the primary. Blocking.
    pub fn start_standby(&self) -> Result<(), ServerError> {
        {
            let _guard = self.control.lock().unwrap_or_else(|e| e.into_inner());
            self.start_node(&self.standby, self.standby.port, Self::standby_settings)?;
        }
        block_on(self.wait_for_replay())
    }

    /// Whether the standby accepts TCP connections.
    pub fn standby_is_up(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.standby.port));
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
    }

    /// The last `lines` lines of the primary's server log.
    pub fn primary_log_tail(&self, lines: usize) -> String {
        tail_of_file(&self.root.join(self.primary.log_name()), lines)
    }

    /// The last `lines` lines of the standby's server log.
    pub fn standby_log_tail(&self, lines: usize) -> String {
        tail_of_file(&self.root.join(self.standby.log_name()), lines)
    }

    // ---------------------------------------------------------------------------------------
    // Setup
    // ---------------------------------------------------------------------------------------

    fn primary_settings(&self, port: u16) -> String {
        format!(
            "{} -c wal_level=replica -c max_wal_senders=4 -c wal_keep_size=64MB",
            self.common_settings(port)
        )
    }

    fn standby_settings(&self, port: u16) -> String {
        format!(
            "{} -c hot_standby=on -c max_standby_streaming_delay={}ms \
             -c max_standby_archive_delay={}ms -c hot_standby_feedback=off \
             -c wal_receiver_status_interval=1s -c wal_retrieve_retry_interval=100ms",
            self.common_settings(port),
            STANDBY_MAX_DELAY.as_millis(),
            STANDBY_MAX_DELAY.as_millis(),
        )
    }

    fn common_settings(&self, port: u16) -> String {
        format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {socket_dir} -c fsync=off \
             -c full_page_writes=off -c wal_writer_delay=10ms -c max_connections=100 \
             -c shared_buffers=32MB",
            socket_dir = shell_quote(&self.root.to_string_lossy()),
        )
    }

    fn tool(&self, name: &str) -> Command {
        crate::process::pg_command(&self.bin, &self.root, self.as_postgres_user, name)
    }

    /// Runs `cmd` with stdout and stderr appended to `<root>/<log_name>`.
    fn run_logged(&self, cmd: Command, log_name: &str) -> Result<(), ServerError> {
        crate::process::run_logged(cmd, &self.root.join(log_name)).map_err(|e| self.error(e))
    }

    fn initdb(&self) -> Result<(), ServerError> {
        let mut cmd = self.tool("initdb");
        // `-A trust` also lets replication connections from 127.0.0.1 in.
        cmd.arg("-D").arg(&self.primary.data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        self.run_logged(cmd, "initdb.log")
    }

    /// `pg_basebackup -R -X stream` of the running primary into the standby's directory:
    /// `-R` writes `standby.signal` and the `primary_conninfo` that points at the primary.
    fn base_backup(&self) -> Result<(), ServerError> {
        let mut cmd = self.tool("pg_basebackup");
        cmd.arg("-D")
            .arg(&self.standby.data)
            .args(["-h", "127.0.0.1", "-U", "postgres"])
            .arg("-p")
            .arg(self.primary.port.to_string())
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]);
        self.run_logged(cmd, "pg_basebackup.log")
    }

    /// Starts `node` on a free port, trying another port if the chosen one was taken in the
    /// meantime. Returns the port.
    fn start_on_free_port(
        &self,
        node: &Node,
        settings: fn(&Self, u16) -> String,
    ) -> Result<u16, ServerError> {
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port()?;
            match self.start_node(node, port, settings) {
                Ok(()) => return Ok(port),
                Err(e) => {
                    let port_taken = tail_of_file(&self.root.join(node.log_name()), 20)
                        .contains("Address already in use");
                    last_error = Some(e);
                    if !port_taken {
                        break;
                    }
                    let _ = self.stop_immediate(node);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ServerError::new("could not start PostgreSQL")))
    }

    fn start_node(
        &self,
        node: &Node,
        port: u16,
        settings: fn(&Self, u16) -> String,
    ) -> Result<(), ServerError> {
        let options = settings(self, port);
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&node.data)
            .arg("-l")
            .arg(self.root.join(node.log_name()))
            .args(["-w", "-t", "30", "-o", &options]);
        self.run_logged(cmd, "pg_ctl.log")?;
        self.wait_ready(node.name, port)
    }

    fn stop_immediate(&self, node: &Node) -> Result<(), ServerError> {
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&node.data)
            .args(["-m", "immediate", "-w", "-t", "30"]);
        self.run_logged(cmd, "pg_ctl.log")
    }

    /// Polls until the server on `port` answers `SELECT 1` through sqlx.
    fn wait_ready(&self, name: &str, port: u16) -> Result<(), ServerError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let options = Node {
            name: "",
            data: PathBuf::new(),
            port,
        }
        .options();
        let mut last_error = String::from("timed out");
        while Instant::now() < deadline {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(_) => {
                    let result = block_on(async {
                        let mut conn = PgConnection::connect_with(&options).await?;
                        let one: i32 = sqlx::query_scalar("SELECT 1").fetch_one(&mut conn).await?;
                        conn.close().await?;
                        Ok::<_, sqlx::Error>(one)
                    });
                    match result {
                        Ok(1) => return Ok(()),
                        Ok(other) => last_error = format!("SELECT 1 returned {other}"),
                        Err(e) => last_error = e.to_string(),
                    }
                }
                Err(e) => last_error = format!("TCP connect to {addr}: {e}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(self.error(format!(
            "the {name} on port {port} did not accept connections within {READY_TIMEOUT:?}: \
             {last_error}"
        )))
    }

    // ---------------------------------------------------------------------------------------
    // Queries
    // ---------------------------------------------------------------------------------------

    async fn on_primary(&self, sql: &str) -> Result<(), ServerError> {
        run_sql(self.primary_options(), sql)
            .await
            .map_err(|e| self.error(format!("on the primary, {sql}: {e}")))
    }

    async fn on_standby(&self, sql: &str) -> Result<(), ServerError> {
        run_sql(self.standby_options(), sql)
            .await
            .map_err(|e| self.error(format!("on the standby, {sql}: {e}")))
    }

    /// [`on_standby`](Self::on_standby), sent again (a few times) when a recovery conflict
    /// cancels it.
    async fn on_standby_despite_conflicts(&self, sql: &str) -> Result<(), ServerError> {
        let mut tries = 0;
        loop {
            match self.on_standby(sql).await {
                Err(e) if tries < 5 && e.message().contains("conflict with recovery") => {
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    async fn primary_scalar(&self, sql: &'static str) -> Result<String, ServerError> {
        scalar(self.primary_options(), sql)
            .await
            .map_err(|e| self.error(format!("on the primary, {sql}: {e}")))
    }

    async fn standby_scalar(&self, sql: &'static str) -> Result<String, ServerError> {
        scalar(self.standby_options(), sql)
            .await
            .map_err(|e| self.error(format!("on the standby, {sql}: {e}")))
    }

    /// An error carrying the advice and the tails of every log of the pair.
    fn error(&self, what: String) -> ServerError {
        ServerError::new(process::with_log_tails(
            format!("primary + standby pair: {what}\n{HOW_TO_GET_A_PAIR}"),
            &self.root,
            &[
                "initdb.log",
                "pg_basebackup.log",
                "pg_ctl.log",
                "primary.log",
                "standby.log",
            ],
        ))
    }
}

impl Drop for PgReplicaPair {
    fn drop(&mut self) {
        process::stop_watchdog(&mut self.control);
        for node in [&self.standby, &self.primary] {
            if node.data.join("postmaster.pid").exists() {
                let _ = self.stop_immediate(node);
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A fresh schema on a [`PgReplicaPair`], created by [`PgReplicaPair::isolated_schema`]: pools
/// on either server whose connections use it as their `search_path`.
#[derive(Debug, Clone)]
pub struct ReplicaSchema<'p> {
    pair: &'p PgReplicaPair,
    schema: String,
}

impl ReplicaSchema<'_> {
    /// The schema name, e.g. `r_1234_0_5f3a9c`.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Connect options for the primary with `search_path` set to this schema.
    pub fn primary_options(&self) -> PgConnectOptions {
        with_search_path(self.pair.primary_options(), &self.schema)
    }

    /// Connect options for the standby with `search_path` set to this schema.
    pub fn standby_options(&self) -> PgConnectOptions {
        with_search_path(self.pair.standby_options(), &self.schema)
    }

    /// A pool of at most `max_connections` connections to this schema on the primary.
    ///
    /// # Panics
    ///
    /// If the pool can't connect.
    pub async fn primary_pool(&self, max_connections: u32) -> PgPool {
        connect_pool(self.primary_options(), max_connections).await
    }

    /// A pool of at most `max_connections` connections to this schema on the standby.
    ///
    /// # Panics
    ///
    /// If the pool can't connect.
    pub async fn standby_pool(&self, max_connections: u32) -> PgPool {
        connect_pool(self.standby_options(), max_connections).await
    }
}

async fn connect_pool(options: PgConnectOptions, max_connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("sqlx-retry-testkit: could not connect a pool: {e}"))
}

async fn run_sql(options: PgConnectOptions, sql: &str) -> Result<(), sqlx::Error> {
    let mut conn = PgConnection::connect_with(&options).await?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(&mut conn)
        .await?;
    conn.close().await
}

async fn scalar(options: PgConnectOptions, sql: &'static str) -> Result<String, sqlx::Error> {
    let mut conn = PgConnection::connect_with(&options).await?;
    let value: String = sqlx::query_scalar(sql)
        .persistent(false)
        .fetch_one(&mut conn)
        .await?;
    conn.close().await?;
    Ok(value)
}

/// Starts a shell that waits for this process to end, then stops every cluster in `data_dirs`
/// and deletes `root`; detached like the single cluster's watchdog.
fn spawn_watchdog(
    bin: &Path,
    root: &Path,
    data_dirs: &[&Path],
    as_postgres: bool,
) -> io::Result<Child> {
    let pg_ctl = shell_quote(&bin.join("pg_ctl").to_string_lossy());
    let root_q = shell_quote(&root.to_string_lossy());
    let runuser = if as_postgres {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let stops: String = data_dirs
        .iter()
        .map(|data| {
            let data_q = shell_quote(&data.to_string_lossy());
            format!(
                r#"
  {runuser}{pg_ctl} stop -D {data_q} -m immediate -w -t 10 >/dev/null 2>&1
  if [ -f {data_q}/postmaster.pid ]; then
    kill -QUIT "$(head -n 1 {data_q}/postmaster.pid)" 2>/dev/null
    sleep 1
  fi"#
            )
        })
        .collect();
    let script = format!(
        r#"
trap '' INT HUP PIPE QUIT
cleanup() {{{stops}
  rm -rf {root_q}
  exit 0
}}
trap cleanup TERM
while kill -0 {pid} 2>/dev/null; do sleep 1; done
cleanup
"#,
        pid = std::process::id(),
    );
    process::spawn_detached_shell(script)
}
