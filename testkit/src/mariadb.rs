//! Throwaway MariaDB servers (or a foreign MySQL/MariaDB server named by `MYSQL_DATABASE_URL`)
//! and per-test databases on them.

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

use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, MySqlConnection, MySqlPool};

use crate::process::{self, block_on, random_u64, running_as_root, shell_quote, tail_of_file};
use crate::server::ServerError;

/// How long to wait for a freshly started server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The advice printed whenever no MySQL/MariaDB server can be provided.
const HOW_TO_GET_A_DATABASE: &str = "To run the MySQL/MariaDB tests, set \
     MYSQL_DATABASE_URL=mysql://user:password@host:port/database or install MariaDB \
     (apt-get install -y mariadb-server); the binaries (mariadb-install-db or mysql_install_db, \
     and mariadbd or mysqld) are looked up in $MARIADB_BIN, /usr/sbin, /usr/bin and $PATH.";

/// A MySQL or MariaDB server for tests.
///
/// Either a foreign server named by the `MYSQL_DATABASE_URL` environment variable, or a
/// throwaway MariaDB created with the local binaries in a temporary directory. A throwaway
/// server is watched by a small shell watchdog that stops it and deletes its directory as soon
/// as the test process exits (however it exits).
pub struct MariaDbServer {
    url: String,
    instance: Option<Instance>,
}

impl fmt::Debug for MariaDbServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MariaDbServer")
            .field("url", &self.url)
            .field("throwaway", &self.instance.is_some())
            .field("root", &self.instance.as_ref().map(|i| &i.root))
            .finish()
    }
}

/// The state of a throwaway server.
struct Instance {
    root: PathBuf,
    server: Mutex<Option<Child>>,
    watchdog: Mutex<Option<Child>>,
}

static GLOBAL: OnceLock<Result<MariaDbServer, ServerError>> = OnceLock::new();

/// The URL of the MySQL/MariaDB test server, `mysql://…`.
///
/// Returns `$MYSQL_DATABASE_URL` when it is set; otherwise starts one throwaway MariaDB per
/// process (on first use) and returns `mysql://root@127.0.0.1:PORT/mysql`. Blocking, cached,
/// and safe to call from many threads and from inside a Tokio runtime.
///
/// # Panics
///
/// If no server can be provided; the message says how to get one and includes the tail of the
/// server log.
pub fn mysql_url() -> String {
    MariaDbServer::global().url().to_owned()
}

/// Connect options for the MySQL/MariaDB test server ([`mysql_url`]).
///
/// # Panics
///
/// If no server can be provided (see [`mysql_url`]).
pub fn mysql_connect_options() -> MySqlConnectOptions {
    let url = mysql_url();
    url.parse::<MySqlConnectOptions>()
        .unwrap_or_else(|e| panic!("invalid MySQL test database URL {url:?}: {e}"))
        .disable_statement_logging()
}

impl MariaDbServer {
    /// The process-wide test server (see [`mysql_url`]), started on first use.
    ///
    /// # Panics
    ///
    /// If no server can be provided; the message says how to get one.
    pub fn global() -> &'static MariaDbServer {
        let server = GLOBAL.get_or_init(|| match mysql_url_from_env() {
            Some(url) => MariaDbServer::external(url),
            None => MariaDbServer::start_throwaway(),
        });
        match server {
            Ok(server) => server,
            Err(e) => panic!("sqlx-retry-testkit: no MySQL/MariaDB server available: {e}"),
        }
    }

    /// Uses an already running server at `url`.
    pub fn external(url: impl Into<String>) -> Result<MariaDbServer, ServerError> {
        let url = url.into();
        url.parse::<MySqlConnectOptions>().map_err(|e| {
            ServerError::new(format!(
                "invalid MYSQL_DATABASE_URL {url:?}: {e}\n{HOW_TO_GET_A_DATABASE}"
            ))
        })?;
        Ok(MariaDbServer {
            url,
            instance: None,
        })
    }

    /// Creates and starts a new private throwaway MariaDB (`mariadb-install-db` into a fresh
    /// temporary directory, `mariadbd` on a free 127.0.0.1 port; as the `mysql` user when run as
    /// root).
    ///
    /// It is stopped and deleted when the returned value is dropped, or by its watchdog when the
    /// process exits.
    pub fn start_throwaway() -> Result<MariaDbServer, ServerError> {
        let bins = find_binaries()?;
        let as_mysql_user = running_as_root();
        let root = make_temp_root(as_mysql_user)?;
        // Started before anything else so that the directory is removed even if the install or
        // the server fail.
        let watchdog = spawn_watchdog(&root).map_err(|e| {
            let _ = fs::remove_dir_all(&root);
            ServerError::new(format!("could not spawn the watchdog shell: {e}"))
        })?;
        let instance = Instance {
            root,
            server: Mutex::new(None),
            watchdog: Mutex::new(Some(watchdog)),
        };
        instance.install(&bins, as_mysql_user)?;
        // Retry with other ports in case another process grabbed the one we chose.
        let mut last_error = None;
        for _ in 0..3 {
            let port = free_port()?;
            match instance.start(&bins, as_mysql_user, port) {
                Ok(()) => {
                    return Ok(MariaDbServer {
                        url: format!("mysql://root@127.0.0.1:{port}/mysql"),
                        instance: Some(instance),
                    });
                }
                Err(e) => {
                    let log = tail_of_file(&instance.root.join("mariadbd.log"), 30);
                    let port_taken = log.contains("Address already in use")
                        || log.contains("Do you already have another");
                    last_error = Some(e);
                    instance.kill_server();
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        // `instance` is dropped here: kills the server and the watchdog, removes the directory.
        Err(last_error.unwrap_or_else(|| ServerError::new("could not start MariaDB")))
    }

    /// The connection URL, `mysql://…`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether this is a throwaway server owned by this process, rather than a foreign
    /// `MYSQL_DATABASE_URL` server.
    pub fn is_throwaway(&self) -> bool {
        self.instance.is_some()
    }

    /// The last `lines` lines of the server's error log (empty for a foreign server).
    pub fn log_tail(&self, lines: usize) -> String {
        self.instance
            .as_ref()
            .map(|i| tail_of_file(&i.root.join("mariadbd.log"), lines))
            .unwrap_or_default()
    }
}

/// The MariaDB programs a throwaway server needs.
struct Binaries {
    install_db: PathBuf,
    server: PathBuf,
}

impl Instance {
    fn data(&self) -> PathBuf {
        self.root.join("data")
    }

    fn install(&self, bins: &Binaries, as_mysql_user: bool) -> Result<(), ServerError> {
        let mut cmd = Command::new(&bins.install_db);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data().display()))
            .args([
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--innodb-flush-method=nosync",
            ]);
        if as_mysql_user {
            cmd.arg("--user=mysql");
        }
        // The mysql user may not be allowed into the test's working directory.
        cmd.current_dir(&self.root).stdin(Stdio::null());
        let log = self.log_file("install.log")?;
        let status = cmd
            .stdout(Stdio::from(
                log.try_clone().map_err(|e| self.error(e.to_string()))?,
            ))
            .stderr(Stdio::from(log))
            .status()
            .map_err(|e| self.error(format!("could not run {}: {e}", bins.install_db.display())))?;
        if status.success() {
            Ok(())
        } else {
            Err(self.error(format!("{cmd:?} failed with {status}")))
        }
    }

    fn start(&self, bins: &Binaries, as_mysql_user: bool, port: u16) -> Result<(), ServerError> {
        let root = &self.root;
        let mut cmd = Command::new(&bins.server);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", self.data().display()))
            .arg(format!("--socket={}", root.join("mariadbd.sock").display()))
            .arg(format!(
                "--pid-file={}",
                root.join("mariadbd.pid").display()
            ))
            .arg(format!(
                "--log-error={}",
                root.join("mariadbd.log").display()
            ))
            .arg(format!("--tmpdir={}", root.display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--skip-log-bin",
                "--max-connections=300",
                "--innodb-buffer-pool-size=64M",
                "--innodb-flush-log-at-trx-commit=0",
                "--innodb-flush-method=nosync",
            ]);
        if as_mysql_user {
            cmd.arg("--user=mysql");
        }
        let log = self.log_file("mariadbd.out")?;
        let child = cmd
            .current_dir(root)
            .stdin(Stdio::null())
            .stdout(Stdio::from(
                log.try_clone().map_err(|e| self.error(e.to_string()))?,
            ))
            .stderr(Stdio::from(log))
            // Its own process group: a Ctrl-C aimed at the test run leaves it to the watchdog.
            .process_group(0)
            .spawn()
            .map_err(|e| self.error(format!("could not run {}: {e}", bins.server.display())))?;
        *self.server.lock().unwrap_or_else(|e| e.into_inner()) = Some(child);
        self.wait_ready(port)
    }

    /// Polls with a TCP connect and then a real sqlx connection until the server answers
    /// `SELECT 1`; fails early if the server exits.
    fn wait_ready(&self, port: u16) -> Result<(), ServerError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let options = MySqlConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .username("root")
            .database("mysql")
            .ssl_mode(sqlx::mysql::MySqlSslMode::Disabled)
            .disable_statement_logging();
        let mut last_error = String::from("timed out");
        while Instant::now() < deadline {
            let exited = self
                .server
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .map(|c| c.try_wait());
            if let Some(Ok(Some(status))) = exited {
                return Err(self.error(format!("mariadbd exited with {status} during startup")));
            }
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(_) => {
                    let result = block_on(async {
                        let mut conn = MySqlConnection::connect_with(&options).await?;
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
            "MariaDB on port {port} did not accept connections within {READY_TIMEOUT:?}: \
             {last_error}"
        )))
    }

    fn kill_server(&self) {
        let child = self.server.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_file(&self, name: &str) -> Result<File, ServerError> {
        let path = self.root.join(name);
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| ServerError::new(format!("could not create {}: {e}", path.display())))
    }

    /// An error carrying the advice and the tails of every log of the server.
    fn error(&self, what: String) -> ServerError {
        ServerError::new(process::with_log_tails(
            format!("could not run a throwaway MariaDB server: {what}\n{HOW_TO_GET_A_DATABASE}"),
            &self.root,
            &["install.log", "mariadbd.out", "mariadbd.log"],
        ))
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        process::stop_watchdog(&mut self.watchdog);
        self.kill_server();
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// A unique database on the MySQL/MariaDB test server, created by [`isolated_mysql_database`]
/// or [`isolated_mysql_pool`].
///
/// The database is *not* dropped automatically (a throwaway server is deleted anyway); call
/// [`IsolatedMySql::drop_database`] to clean up on a shared server.
#[derive(Debug, Clone)]
pub struct IsolatedMySql {
    database: String,
}

impl IsolatedMySql {
    /// The database name, e.g. `t_1234_7_5f3a9c`.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Connect options for this database.
    pub fn connect_options(&self) -> MySqlConnectOptions {
        mysql_connect_options().database(&self.database)
    }

    /// A pool of at most `max_connections` connections to this database.
    ///
    /// # Panics
    ///
    /// If the pool can't connect.
    pub async fn pool(&self, max_connections: u32) -> MySqlPool {
        self.pool_options(max_connections)
            .connect_with(self.connect_options())
            .await
            .unwrap_or_else(|e| panic!("sqlx-retry-testkit: could not connect a MySQL pool: {e}"))
    }

    /// Pool options with the testkit's defaults (a 30 s acquire timeout), for a pool that needs
    /// more settings, e.g. an `after_connect` hook; connect it with
    /// [`connect_options`](Self::connect_options).
    pub fn pool_options(&self, max_connections: u32) -> MySqlPoolOptions {
        MySqlPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
    }

    /// Drops the database and everything in it.
    pub async fn drop_database(self) -> Result<(), sqlx::Error> {
        let mut conn = MySqlConnection::connect_with(&mysql_connect_options()).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {}",
            quote_mysql_ident(&self.database)
        )))
        .execute(&mut conn)
        .await?;
        conn.close().await
    }
}

/// Creates a new uniquely named, empty database (`t_<pid>_<counter>_<random>`) on the
/// MySQL/MariaDB test server ([`mysql_url`]).
///
/// # Panics
///
/// If no server is available or the database can't be created; the message says how to get a
/// server.
pub async fn isolated_mysql_database() -> IsolatedMySql {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let database = format!(
        "t_{}_{}_{:06x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        random_u64() & 0xff_ffff
    );
    let options = mysql_connect_options();
    let result = async {
        let mut conn = MySqlConnection::connect_with(&options).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {}",
            quote_mysql_ident(&database)
        )))
        .execute(&mut conn)
        .await?;
        conn.close().await
    }
    .await;
    if let Err(e) = result {
        panic!(
            "sqlx-retry-testkit: could not create MySQL database {database} on {}: {e}\n\
             {HOW_TO_GET_A_DATABASE}",
            mysql_url()
        );
    }
    IsolatedMySql { database }
}

/// A pool of at most `max_connections` connections to a fresh database of its own (see
/// [`isolated_mysql_database`]).
///
/// # Panics
///
/// If no server is available or the database can't be created.
pub async fn isolated_mysql_pool(max_connections: u32) -> (MySqlPool, IsolatedMySql) {
    let isolated = isolated_mysql_database().await;
    let pool = isolated.pool(max_connections).await;
    (pool, isolated)
}

/// Quotes a MySQL identifier: ``a`b`` becomes ``` `a``b` ```.
pub fn quote_mysql_ident(ident: &str) -> String {
    format!("`{}`", ident.replace('`', "``"))
}

fn mysql_url_from_env() -> Option<String> {
    std::env::var("MYSQL_DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// Finds `mariadb-install-db` (or `mysql_install_db`) and `mariadbd` (or `mysqld`).
fn find_binaries() -> Result<Binaries, ServerError> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(dir) = std::env::var_os("MARIADB_BIN").filter(|d| !d.is_empty()) {
        dirs.push(PathBuf::from(dir));
    }
    dirs.extend(["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"].map(PathBuf::from));
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    let find = |names: &[&str]| {
        names
            .iter()
            .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
            .find(|p| p.is_file())
    };
    match (
        find(&["mariadb-install-db", "mysql_install_db"]),
        find(&["mariadbd", "mysqld"]),
    ) {
        (Some(install_db), Some(server)) => Ok(Binaries { install_db, server }),
        _ => Err(ServerError::new(format!(
            "no MariaDB server binaries (mariadb-install-db and mariadbd) found\n\
             {HOW_TO_GET_A_DATABASE}"
        ))),
    }
}

fn make_temp_root(chown_to_mysql: bool) -> Result<PathBuf, ServerError> {
    process::make_temp_root("sqlx-retry-mariadb", chown_to_mysql.then_some("mysql")).map_err(|e| {
        ServerError::new(format!(
            "{e} (mariadbd refuses to run as root; does the user exist?)\n{HOW_TO_GET_A_DATABASE}"
        ))
    })
}

fn free_port() -> Result<u16, ServerError> {
    process::free_port()
        .map_err(|e| ServerError::new(format!("could not find a free TCP port: {e}")))
}

/// Starts a shell that waits for this process to end, then stops the server (SIGTERM, SIGKILL
/// after 10 s) and deletes its directory. It runs in its own process group with all standard
/// streams on /dev/null, like the PostgreSQL watchdog.
fn spawn_watchdog(root: &Path) -> io::Result<Child> {
    let root_q = shell_quote(&root.to_string_lossy());
    let pid_q = shell_quote(&root.join("mariadbd.pid").to_string_lossy());
    let script = format!(
        r#"
trap '' INT HUP PIPE QUIT
cleanup() {{
  if [ -f {pid_q} ]; then
    pid="$(head -n 1 {pid_q})"
    kill -TERM "$pid" 2>/dev/null
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
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
