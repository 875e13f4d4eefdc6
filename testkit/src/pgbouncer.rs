//! A real pgbouncer in front of a PostgreSQL test server, for tests of transaction-mode pooling.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow, PgSslMode};
use sqlx::{ConnectOptions as _, Connection as _, PgConnection, PgPool, Row as _};

use crate::process::{self, block_on, random_u64, running_as_root, shell_quote, tail_of_file};
use crate::schema::quote_ident;
use crate::server::{PgServer, ServerError, free_port};

/// How long to wait for a freshly started pgbouncer to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The advice printed whenever pgbouncer cannot be run.
const HOW_TO_GET_PGBOUNCER: &str = "The pooler tests run a real pgbouncer: install it with \
     `apt-get install -y pgbouncer` (Debian/Ubuntu) or point $PGBOUNCER_BIN at the binary; it is \
     otherwise looked up in /usr/sbin, /usr/bin, /usr/local/bin and $PATH.";

/// How pgbouncer hands server connections to clients (its `pool_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolMode {
    /// A client keeps its server connection until it disconnects.
    Session,
    /// A client holds a server connection for one transaction; between transactions another
    /// client may get it. Named prepared statements of one client may land on (or be missing
    /// from) a server connection another client prepared them on.
    Transaction,
    /// A server connection per statement; multi-statement transactions are refused.
    Statement,
}

impl PoolMode {
    fn as_str(self) -> &'static str {
        match self {
            PoolMode::Session => "session",
            PoolMode::Transaction => "transaction",
            PoolMode::Statement => "statement",
        }
    }
}

/// A pgbouncer process in front of a PostgreSQL server, listening on a free 127.0.0.1 port.
///
/// Its configuration and userlist live in a temporary directory: `auth_type = trust`, every
/// database name mapped to the same name on the upstream server (`* = host=… port=…`), the
/// upstream user as admin (so the admin console, database `pgbouncer`, answers `SHOW`, `KILL`,
/// `RECONNECT`), and `ignore_startup_parameters = extra_float_digits` because sqlx sends that
/// parameter. sqlx's `options` startup parameter (a `search_path`) is not supported by
/// pgbouncer 1.18, so tests isolate themselves with a database of their own,
/// [`PgBouncer::isolated_database`], rather than a schema.
///
/// The process runs as the `postgres` user when the tests run as root (pgbouncer refuses root).
/// It is killed and its directory deleted on drop, or by a watchdog when the test process
/// exits. If pgbouncer is not installed, [`PgBouncer::start`] fails with a message that says
/// how to install it.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use sqlx_retry_testkit::PgBouncer;
///
/// let db = PgBouncer::global().isolated_database().await;
/// let pool = db.pool(4).await; // through pgbouncer, transaction mode
/// let one: i32 = sqlx::query_scalar("SELECT 1").persistent(false).fetch_one(&pool).await?;
/// assert_eq!(one, 1);
/// # Ok(()) }
/// ```
pub struct PgBouncer {
    root: PathBuf,
    port: u16,
    mode: PoolMode,
    user: String,
    upstream: PgConnectOptions,
    child: Mutex<Option<Child>>,
    watchdog: Mutex<Option<Child>>,
}

impl fmt::Debug for PgBouncer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgBouncer")
            .field("port", &self.port)
            .field("pool_mode", &self.mode)
            .field(
                "upstream",
                &(self.upstream.get_host(), self.upstream.get_port()),
            )
            .field("root", &self.root)
            .finish()
    }
}

static GLOBAL: OnceLock<Result<PgBouncer, ServerError>> = OnceLock::new();

impl PgBouncer {
    /// The process-wide pgbouncer, in transaction mode in front of the process-wide test server
    /// ([`PgServer::global`]), started on first use. Blocking; safe from many threads and from
    /// inside a Tokio runtime.
    ///
    /// # Panics
    ///
    /// If no PostgreSQL server can be had or pgbouncer can't be started; the message says how
    /// to fix it.
    pub fn global() -> &'static PgBouncer {
        let bouncer =
            GLOBAL.get_or_init(|| PgBouncer::start(PgServer::global(), PoolMode::Transaction));
        match bouncer {
            Ok(bouncer) => bouncer,
            Err(e) => panic!("sqlx-retry-testkit: no pgbouncer available: {e}"),
        }
    }

    /// Starts pgbouncer in `mode` in front of `upstream`. Blocking; returns once it answers
    /// `SELECT 1` through a pooled server connection.
    pub fn start(upstream: &PgServer, mode: PoolMode) -> Result<PgBouncer, ServerError> {
        let binary = find_pgbouncer()?;
        let upstream_options = upstream.connect_options().disable_statement_logging();
        let user = upstream_options.get_username().to_owned();
        let password = password_of(upstream.url());
        let as_postgres_user = running_as_root();
        let root = process::make_temp_root(
            "sqlx-retry-pgbouncer",
            as_postgres_user.then_some("postgres"),
        )
        .map_err(|e| {
            ServerError::new(format!(
                "{e} (pgbouncer refuses to run as root; does the postgres user exist?)\n\
                 {HOW_TO_GET_PGBOUNCER}"
            ))
        })?;
        let watchdog = spawn_watchdog(&root).map_err(|e| {
            let _ = fs::remove_dir_all(&root);
            ServerError::new(format!("could not spawn the watchdog shell: {e}"))
        })?;
        let mut bouncer = PgBouncer {
            root,
            port: 0,
            mode,
            user,
            upstream: upstream_options,
            child: Mutex::new(None),
            watchdog: Mutex::new(Some(watchdog)),
        };
        // Retry with other ports in case another process grabbed the one we chose.
        let mut last_error = None;
        for _ in 0..3 {
            bouncer.port = free_port()?;
            let started = bouncer
                .write_config(upstream, password.as_deref())
                .and_then(|()| bouncer.spawn(&binary, as_postgres_user))
                .and_then(|()| bouncer.wait_ready());
            match started {
                Ok(()) => return Ok(bouncer),
                Err(e) => {
                    bouncer.kill();
                    let port_taken = tail_of_file(&bouncer.root.join("pgbouncer.log"), 20)
                        .contains("Address already in use");
                    last_error = Some(e);
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        // `bouncer` is dropped here: kills pgbouncer and the watchdog, removes the directory.
        Err(last_error.unwrap_or_else(|| ServerError::new("could not start pgbouncer")))
    }

    /// The TCP port pgbouncer listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The pool mode pgbouncer runs in.
    pub fn pool_mode(&self) -> PoolMode {
        self.mode
    }

    /// Connect options for `database` through pgbouncer, as the upstream's user.
    pub fn connect_options(&self, database: &str) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(self.port)
            .username(&self.user)
            .database(database)
            .ssl_mode(PgSslMode::Disable)
            .disable_statement_logging()
    }

    /// The URL of `database` through pgbouncer, `postgres://USER@127.0.0.1:PORT/DATABASE`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{database}",
            self.user, self.port
        )
    }

    /// Creates a fresh database on the upstream server (directly, not through pgbouncer) and
    /// returns a handle for reaching it through pgbouncer.
    ///
    /// # Panics
    ///
    /// If the database can't be created.
    pub async fn isolated_database(&self) -> BouncedDatabase<'_> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "b_{}_{}_{:06x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            random_u64() & 0xff_ffff
        );
        let sql = format!("CREATE DATABASE {} TEMPLATE template0", quote_ident(&name));
        let result = async {
            let mut conn = PgConnection::connect_with(&self.upstream).await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await?;
            conn.close().await
        }
        .await;
        if let Err(e) = result {
            panic!(
                "sqlx-retry-testkit: could not create database {name} upstream of pgbouncer: {e}"
            );
        }
        BouncedDatabase {
            bouncer: self,
            name,
        }
    }

    /// Runs a command on pgbouncer's admin console (database `pgbouncer`), e.g. `SHOW SERVERS`,
    /// `RECONNECT`, `KILL db`, and returns its rows, each a map from column name to text value.
    pub async fn admin(
        &self,
        command: &str,
    ) -> Result<Vec<BTreeMap<String, Option<String>>>, ServerError> {
        let rows = async {
            let mut conn = PgConnection::connect_with(&self.connect_options("pgbouncer")).await?;
            let rows: Vec<PgRow> = sqlx::raw_sql(sqlx::AssertSqlSafe(command.to_owned()))
                .fetch_all(&mut conn)
                .await?;
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>(rows)
        }
        .await
        .map_err(|e| self.error(format!("admin console, {command}: {e}")))?;
        Ok(rows.iter().map(row_as_text).collect())
    }

    /// The upstream backends (`pg_stat_activity.pid`) of pgbouncer's server connections, from
    /// `SHOW SERVERS`, with their pgbouncer state (`active` while linked to a client, `idle`,
    /// `used`, …) and database; `database = None` lists them all.
    pub async fn server_connections(
        &self,
        database: Option<&str>,
    ) -> Result<Vec<ServerConnection>, ServerError> {
        let rows = self.admin("SHOW SERVERS").await?;
        let text = |row: &BTreeMap<String, Option<String>>, column: &str| {
            row.get(column).cloned().flatten().unwrap_or_default()
        };
        Ok(rows
            .iter()
            .filter(|row| database.is_none_or(|d| text(row, "database") == d))
            .filter_map(|row| {
                Some(ServerConnection {
                    pid: text(row, "remote_pid").parse().ok()?,
                    state: text(row, "state"),
                    database: text(row, "database"),
                })
            })
            .collect())
    }

    /// Terminates (with `pg_terminate_backend` on the upstream server, waiting until each is
    /// gone) every server connection pgbouncer holds, or those to `database`: what a server
    /// crash or an administrator does behind the pooler. A client inside a transaction on one
    /// of them gets an error on its next statement; idle ones are replaced by pgbouncer.
    /// Returns how many were terminated.
    pub async fn kill_server_connections(
        &self,
        database: Option<&str>,
    ) -> Result<usize, ServerError> {
        let pids: Vec<i32> = self
            .server_connections(database)
            .await?
            .into_iter()
            .map(|s| s.pid)
            .collect();
        self.terminate_upstream(&pids).await
    }

    /// Terminates the given upstream backends with `pg_terminate_backend(pid, 5000)` (waits
    /// until each has exited). Returns how many were terminated.
    pub async fn terminate_upstream(&self, pids: &[i32]) -> Result<usize, ServerError> {
        if pids.is_empty() {
            return Ok(0);
        }
        let result = async {
            let mut conn = PgConnection::connect_with(&self.upstream).await?;
            let killed: i64 = sqlx::query_scalar(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) \
                 FROM unnest($1::int[]) AS pid",
            )
            .bind(pids)
            .persistent(false)
            .fetch_one(&mut conn)
            .await?;
            let _ = conn.close().await;
            Ok::<_, sqlx::Error>(killed)
        }
        .await;
        match result {
            Ok(n) => Ok(usize::try_from(n).unwrap_or(0)),
            Err(e) => Err(self.error(format!("pg_terminate_backend on the upstream: {e}"))),
        }
    }

    /// The last `lines` lines of pgbouncer's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail_of_file(&self.root.join("pgbouncer.log"), lines)
    }

    fn write_config(&self, upstream: &PgServer, password: Option<&str>) -> Result<(), ServerError> {
        let root = &self.root;
        let mut target = format!(
            "host={} port={} user={}",
            upstream.host(),
            upstream.port(),
            self.user
        );
        if let Some(password) = password {
            target.push_str(&format!(" password={password}"));
        }
        let ini = format!(
            "[databases]\n\
             * = {target}\n\
             \n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {userlist}\n\
             admin_users = {user}\n\
             pool_mode = {mode}\n\
             max_client_conn = 500\n\
             default_pool_size = 20\n\
             ignore_startup_parameters = extra_float_digits\n\
             server_login_retry = 1\n\
             query_wait_timeout = 20\n\
             logfile = {log}\n\
             pidfile = {pid}\n",
            port = self.port,
            userlist = root.join("userlist.txt").display(),
            user = self.user,
            mode = self.mode.as_str(),
            log = root.join("pgbouncer.log").display(),
            pid = root.join("pgbouncer.pid").display(),
        );
        let userlist = format!("\"{}\" \"\"\n", self.user.replace('"', "\"\""));
        fs::write(root.join("pgbouncer.ini"), ini)
            .and_then(|()| fs::write(root.join("userlist.txt"), userlist))
            .map_err(|e| self.error(format!("could not write the configuration: {e}")))
    }

    fn spawn(&self, binary: &Path, as_postgres_user: bool) -> Result<(), ServerError> {
        let mut cmd = Command::new(binary);
        if as_postgres_user {
            cmd.args(["-u", "postgres"]);
        }
        cmd.arg(self.root.join("pgbouncer.ini"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(self.root.join("pgbouncer.out"))
            .map_err(|e| self.error(format!("could not create pgbouncer.out: {e}")))?;
        let err = out.try_clone().map_err(|e| self.error(e.to_string()))?;
        let child = cmd
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            // Its own process group: a Ctrl-C aimed at the test run leaves it to the watchdog.
            .process_group(0)
            .spawn()
            .map_err(|e| self.error(format!("could not run {}: {e}", binary.display())))?;
        *self.child.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        Ok(())
    }

    /// Polls until a client gets `SELECT 1` answered through pgbouncer (which also proves the
    /// upstream accepts pgbouncer's server connection); fails early if pgbouncer exits.
    fn wait_ready(&self) -> Result<(), ServerError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let database = self
            .upstream
            .get_database()
            .unwrap_or("postgres")
            .to_owned();
        let options = self.connect_options(&database);
        let mut last_error = String::from("timed out");
        while Instant::now() < deadline {
            let exited = self
                .child
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .map(|c| c.try_wait());
            if let Some(Ok(Some(status))) = exited {
                return Err(self.error(format!("pgbouncer exited with {status} during startup")));
            }
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(_) => {
                    let result = block_on(async {
                        let mut conn = PgConnection::connect_with(&options).await?;
                        let one: i32 = sqlx::query_scalar("SELECT 1")
                            .persistent(false)
                            .fetch_one(&mut conn)
                            .await?;
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
            "pgbouncer on port {} did not answer within {READY_TIMEOUT:?}: {last_error}",
            self.port
        )))
    }

    fn kill(&self) {
        let child = self.child.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// An error carrying the advice and the tails of pgbouncer's logs.
    fn error(&self, what: String) -> ServerError {
        ServerError::new(process::with_log_tails(
            format!("could not run pgbouncer: {what}\n{HOW_TO_GET_PGBOUNCER}"),
            &self.root,
            &["pgbouncer.out", "pgbouncer.log"],
        ))
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        process::stop_watchdog(&mut self.watchdog);
        self.kill();
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// One of pgbouncer's server connections, from `SHOW SERVERS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConnection {
    /// The upstream backend's process id (`pg_stat_activity.pid`).
    pub pid: i32,
    /// pgbouncer's state of the connection: `active` (linked to a client), `idle`, `used`,
    /// `tested`, `new`.
    pub state: String,
    /// The database it is connected to.
    pub database: String,
}

/// A database of its own on pgbouncer's upstream server, created by
/// [`PgBouncer::isolated_database`].
#[derive(Debug, Clone)]
pub struct BouncedDatabase<'b> {
    bouncer: &'b PgBouncer,
    name: String,
}

impl BouncedDatabase<'_> {
    /// The database name, e.g. `b_1234_0_5f3a9c`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Connect options for this database through pgbouncer.
    pub fn options(&self) -> PgConnectOptions {
        self.bouncer.connect_options(&self.name)
    }

    /// Connect options for this database on the upstream server, bypassing pgbouncer.
    pub fn direct_options(&self) -> PgConnectOptions {
        self.bouncer.upstream.clone().database(&self.name)
    }

    /// A pool of at most `max_connections` client connections to this database through
    /// pgbouncer.
    ///
    /// # Panics
    ///
    /// If the pool can't connect.
    pub async fn pool(&self, max_connections: u32) -> PgPool {
        connect_pool(self.options(), max_connections).await
    }

    /// A pool of at most `max_connections` direct connections to this database.
    ///
    /// # Panics
    ///
    /// If the pool can't connect.
    pub async fn direct_pool(&self, max_connections: u32) -> PgPool {
        connect_pool(self.direct_options(), max_connections).await
    }

    /// pgbouncer's server connections to this database (see [`PgBouncer::server_connections`]).
    pub async fn server_connections(&self) -> Result<Vec<ServerConnection>, ServerError> {
        self.bouncer.server_connections(Some(&self.name)).await
    }

    /// Terminates pgbouncer's server connections to this database (see
    /// [`PgBouncer::kill_server_connections`]).
    pub async fn kill_server_connections(&self) -> Result<usize, ServerError> {
        self.bouncer.kill_server_connections(Some(&self.name)).await
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

/// Every column of an admin console row as text (the console answers in text format).
fn row_as_text(row: &PgRow) -> BTreeMap<String, Option<String>> {
    use sqlx::Column as _;
    row.columns()
        .iter()
        .map(|column| {
            let value = row
                .try_get_unchecked::<Option<String>, _>(column.ordinal())
                .ok()
                .flatten();
            (column.name().to_owned(), value)
        })
        .collect()
}

/// The password in `postgres://user:password@host/…`, if any (not percent-decoded).
fn password_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let userinfo = rest.split_once('@')?.0;
    let password = userinfo.split_once(':')?.1;
    (!password.is_empty()).then(|| password.to_owned())
}

/// Finds the pgbouncer binary: `$PGBOUNCER_BIN`, then the usual directories and `$PATH`.
fn find_pgbouncer() -> Result<PathBuf, ServerError> {
    let mut dirs: Vec<PathBuf> = ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .map(PathBuf::from)
        .to_vec();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    let chosen = std::env::var_os("PGBOUNCER_BIN")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    locate_pgbouncer(chosen, &dirs)
}

/// `chosen` if given (it must exist), else the first `pgbouncer` in `dirs`.
fn locate_pgbouncer(chosen: Option<PathBuf>, dirs: &[PathBuf]) -> Result<PathBuf, ServerError> {
    if let Some(path) = chosen {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ServerError::new(format!(
                "PGBOUNCER_BIN={} is not a file\n{HOW_TO_GET_PGBOUNCER}",
                path.display()
            )))
        };
    }
    dirs.iter()
        .map(|dir| dir.join("pgbouncer"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            ServerError::new(format!(
                "pgbouncer is not installed\n{HOW_TO_GET_PGBOUNCER}"
            ))
        })
}

/// Starts a shell that waits for this process to end, then stops pgbouncer (by its pid file)
/// and deletes its directory; detached like the servers' watchdogs.
fn spawn_watchdog(root: &Path) -> io::Result<Child> {
    let root_q = shell_quote(&root.to_string_lossy());
    let pid_q = shell_quote(&root.join("pgbouncer.pid").to_string_lossy());
    let script = format!(
        r#"
trap '' INT HUP PIPE QUIT
cleanup() {{
  if [ -f {pid_q} ]; then
    pid="$(head -n 1 {pid_q})"
    kill -TERM "$pid" 2>/dev/null
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
    kill -KILL "$pid" 2>/dev/null
  fi
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_pgbouncer_is_an_error_that_says_how_to_install_it() {
        let empty = std::env::temp_dir().join(format!("no-pgbouncer-{:x}", random_u64()));
        fs::create_dir(&empty).unwrap();
        let missing = locate_pgbouncer(None, std::slice::from_ref(&empty)).unwrap_err();
        let wrong = locate_pgbouncer(Some(empty.join("pgbouncer")), &[]).unwrap_err();
        fs::remove_dir(&empty).unwrap();
        for err in [missing, wrong] {
            assert!(
                err.message().contains("apt-get install -y pgbouncer"),
                "{err}"
            );
        }
    }

    #[test]
    fn the_upstream_password_is_read_from_the_url() {
        assert_eq!(
            password_of("postgres://u:secret@h:5432/db").as_deref(),
            Some("secret")
        );
        assert_eq!(password_of("postgres://u@h/db"), None);
        assert_eq!(password_of("postgres://u:@h/db"), None);
        assert_eq!(password_of("postgres://h/db"), None);
    }
}
