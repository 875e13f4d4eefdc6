//! Throwaway PostgreSQL clusters (or a foreign server named by `DATABASE_URL`).

use crate::process::{self, block_on, running_as_root, shell_quote, tail_of_file};
use std::fmt;
use std::fs::{self};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _};

/// How long to wait for a freshly started server to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The advice printed whenever no database can be provided.
const HOW_TO_GET_A_DATABASE: &str = "To run these tests, set DATABASE_URL=postgres://user:password@host:port/database \
     or install PostgreSQL (apt-get install -y postgresql); the binaries are looked up in \
     $PG_BIN, /usr/lib/postgresql/*/bin (highest version) and $PATH.";

/// An error from starting, stopping or restarting a test server ([`PgServer`] or
/// [`MariaDbServer`](crate::MariaDbServer)), or from reading its URL from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    message: String,
}

impl ServerError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }

    /// The human-readable description of the failure (including log tails, if any).
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ServerError {}

/// A PostgreSQL server for tests.
///
/// Either a foreign server named by the `DATABASE_URL` environment variable, or a
/// throwaway cluster created with the local PostgreSQL binaries in a temporary
/// directory. A throwaway cluster is watched by a small shell watchdog that stops it
/// and deletes its directory as soon as the test process exits (however it exits).
///
/// Most code wants the process-wide instance: [`PgServer::global`] or
/// [`postgres_url`]. Tests that stop or restart the server should prefer a private
/// cluster from [`PgServer::start_throwaway`] so that they do not disturb tests
/// running in parallel.
pub struct PgServer {
    url: String,
    host: String,
    port: u16,
    cluster: Option<Cluster>,
}

impl fmt::Debug for PgServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgServer")
            .field("url", &self.url)
            .field("throwaway", &self.cluster.is_some())
            .field("data_dir", &self.data_dir())
            .finish()
    }
}

/// The state of a throwaway cluster.
struct Cluster {
    bin: PathBuf,
    root: PathBuf,
    data: PathBuf,
    port: u16,
    as_postgres_user: bool,
    /// Serialises start/stop; holds the watchdog so it can be killed on drop.
    control: Mutex<Option<Child>>,
}

static GLOBAL: OnceLock<Result<PgServer, ServerError>> = OnceLock::new();

/// The URL of the test database, `postgres://…`.
///
/// Returns `$DATABASE_URL` when it is set; otherwise starts one throwaway cluster per
/// process (on first use) and returns `postgres://postgres@127.0.0.1:PORT/postgres`.
/// Blocking, cached, and safe to call from many threads and from inside a Tokio
/// runtime.
///
/// # Panics
///
/// If no server can be provided; the message says how to get one and includes the
/// tail of the server log.
pub fn postgres_url() -> String {
    PgServer::global().url().to_owned()
}

/// Restarts the process-wide throwaway cluster: immediate stop (like a crash, every
/// connection is cut) and start on the same port and data directory.
///
/// Returns an error when `DATABASE_URL` names a foreign server, which cannot be
/// restarted. Every test of the process sharing the server is affected; prefer a
/// private [`PgServer::start_throwaway`] for server-fault tests.
///
/// # Panics
///
/// If no server can be provided at all (see [`postgres_url`]).
pub fn postgres_restart_fast() -> Result<(), ServerError> {
    PgServer::global().restart()
}

impl PgServer {
    /// The process-wide test server (see [`postgres_url`]), started on first use.
    ///
    /// # Panics
    ///
    /// If no server can be provided; the message says how to get one.
    pub fn global() -> &'static PgServer {
        let server = GLOBAL.get_or_init(|| match database_url_from_env() {
            Some(url) => PgServer::external(url),
            None => PgServer::start_throwaway(),
        });
        match server {
            Ok(server) => server,
            Err(e) => panic!("sqlx-retry-testkit: no PostgreSQL server available: {e}"),
        }
    }

    /// Uses an already running server at `url`; it can't be stopped or restarted.
    pub fn external(url: impl Into<String>) -> Result<PgServer, ServerError> {
        let url = url.into();
        let options: PgConnectOptions = url.parse().map_err(|e| {
            ServerError::new(format!(
                "invalid database URL {url:?}: {e}\n{HOW_TO_GET_A_DATABASE}"
            ))
        })?;
        Ok(PgServer {
            host: options.get_host().to_owned(),
            port: options.get_port(),
            url,
            cluster: None,
        })
    }

    /// Creates and starts a new private throwaway cluster (initdb into a fresh
    /// temporary directory, `postgres` on a free 127.0.0.1 port).
    ///
    /// It is stopped and deleted when the returned value is dropped, or by its
    /// watchdog when the process exits.
    pub fn start_throwaway() -> Result<PgServer, ServerError> {
        let bin = find_pg_bin()?;
        let as_postgres_user = running_as_root();
        let root = make_temp_root(as_postgres_user)?;
        let data = root.join("data");
        // Started before anything else so that the directory is removed even if
        // initdb or the server fail.
        let watchdog = spawn_watchdog(&bin, &root, &data, as_postgres_user).map_err(|e| {
            let _ = fs::remove_dir_all(&root);
            ServerError::new(format!("could not spawn the watchdog shell: {e}"))
        })?;

        let mut cluster = Cluster {
            bin,
            data,
            root,
            port: 0,
            as_postgres_user,
            control: Mutex::new(Some(watchdog)),
        };
        // Retry with other ports in case another process grabbed the one we chose.
        let mut last_error = None;
        let mut initialised = false;
        for _ in 0..3 {
            let result = free_port().and_then(|port| {
                cluster.port = port;
                if !initialised {
                    cluster.initdb()?;
                    initialised = true;
                }
                cluster.start()
            });
            match result {
                Ok(()) => {
                    let port = cluster.port;
                    return Ok(PgServer {
                        url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
                        host: "127.0.0.1".to_owned(),
                        port,
                        cluster: Some(cluster),
                    });
                }
                Err(e) => {
                    // Only a lost race for the port is worth another attempt.
                    let port_taken = initialised
                        && tail_of_file(&cluster.log_path(), 20).contains("Address already in use");
                    last_error = Some(e);
                    if !port_taken {
                        break;
                    }
                    let _ = cluster.stop_immediate();
                }
            }
        }
        // `cluster` is dropped here: kills the watchdog, stops the server, removes the dir.
        Err(last_error.unwrap_or_else(|| ServerError::new("could not start PostgreSQL")))
    }

    /// The connection URL, `postgres://…`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The host name or address of the server.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port of the server.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host:port`, e.g. for [`crate::PgProxy::start`].
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Connect options parsed from [`PgServer::url`].
    pub fn connect_options(&self) -> PgConnectOptions {
        self.url
            .parse()
            .expect("the server URL was validated on construction")
    }

    /// Whether this is a throwaway cluster owned by this process (which can be
    /// stopped and restarted), rather than a foreign `DATABASE_URL` server.
    pub fn is_throwaway(&self) -> bool {
        self.cluster.is_some()
    }

    /// The data directory of a throwaway cluster.
    pub fn data_dir(&self) -> Option<&Path> {
        self.cluster.as_ref().map(|c| c.data.as_path())
    }

    /// The server log file of a throwaway cluster.
    pub fn log_path(&self) -> Option<PathBuf> {
        self.cluster.as_ref().map(Cluster::log_path)
    }

    /// The last `lines` lines of the server log (empty for a foreign server).
    pub fn log_tail(&self, lines: usize) -> String {
        self.log_path()
            .map(|p| tail_of_file(&p, lines))
            .unwrap_or_default()
    }

    /// Immediate shutdown (`pg_ctl stop -m immediate`): every connection is cut and
    /// new ones are refused until [`PgServer::start`]. Blocking.
    ///
    /// The cluster runs with `synchronous_commit=off`, so right before the stop the
    /// WAL is flushed: commits acknowledged before this call survive, in-flight
    /// transactions are lost, as after a crash of a server with synchronous commit.
    pub fn stop(&self) -> Result<(), ServerError> {
        let cluster = self.cluster_or_error("stop")?;
        let _guard = cluster.control.lock().unwrap_or_else(|e| e.into_inner());
        cluster.flush_wal();
        cluster.stop_immediate()
    }

    /// Starts a stopped throwaway cluster again (same port and data directory) and
    /// waits until it accepts connections. Blocking.
    pub fn start(&self) -> Result<(), ServerError> {
        let cluster = self.cluster_or_error("start")?;
        let _guard = cluster.control.lock().unwrap_or_else(|e| e.into_inner());
        cluster.start()
    }

    /// Immediate stop followed by a start on the same port and data directory, like a
    /// server crash and recovery (acknowledged commits survive, see
    /// [`PgServer::stop`]). Blocking; returns when the server accepts connections
    /// again. Errors for a foreign `DATABASE_URL` server.
    pub fn restart(&self) -> Result<(), ServerError> {
        let cluster = self.cluster_or_error("restart")?;
        let _guard = cluster.control.lock().unwrap_or_else(|e| e.into_inner());
        cluster.flush_wal();
        cluster.stop_immediate()?;
        cluster.start()
    }

    fn cluster_or_error(&self, what: &str) -> Result<&Cluster, ServerError> {
        self.cluster.as_ref().ok_or_else(|| {
            ServerError::new(format!(
                "cannot {what} the server at {}: it was given by DATABASE_URL and is not \
                 owned by this process",
                self.url
            ))
        })
    }
}

impl Cluster {
    fn log_path(&self) -> PathBuf {
        self.root.join("postgres.log")
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
        cmd.arg("-D").arg(&self.data).args([
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

    fn start(&self) -> Result<(), ServerError> {
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -k {socket_dir} -c fsync=off \
             -c synchronous_commit=off -c wal_writer_delay=10ms -c full_page_writes=off \
             -c max_connections=300 -c shared_buffers=128MB",
            port = self.port,
            socket_dir = shell_quote(&self.root.to_string_lossy()),
        );
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "30", "-o", &options]);
        self.run_logged(cmd, "pg_ctl.log")?;
        self.wait_ready()
    }

    /// Makes every acknowledged commit survive an immediate stop: with
    /// `synchronous_commit=off` the WAL of recent commits may still be in the
    /// server's memory; a checkpoint writes all of it out (cheap with `fsync=off`).
    /// Best effort.
    fn flush_wal(&self) {
        let options = self.admin_options();
        let _ = block_on(async {
            tokio::time::timeout(Duration::from_secs(10), async {
                let mut conn = sqlx::PgConnection::connect_with(&options).await?;
                sqlx::raw_sql("CHECKPOINT").execute(&mut conn).await?;
                conn.close().await
            })
            .await
        });
    }

    fn admin_options(&self) -> PgConnectOptions {
        PgConnectOptions::new_without_pgpass()
            .host("127.0.0.1")
            .port(self.port)
            .username("postgres")
            .database("postgres")
            .ssl_mode(sqlx::postgres::PgSslMode::Disable)
            .disable_statement_logging()
    }

    fn stop_immediate(&self) -> Result<(), ServerError> {
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("stop")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "30"]);
        self.run_logged(cmd, "pg_ctl.log")
    }

    /// Polls with a TCP connect and then a real sqlx connection until the server
    /// answers `SELECT 1`.
    fn wait_ready(&self) -> Result<(), ServerError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let options = self.admin_options();
        let mut last_error = String::from("timed out");
        while Instant::now() < deadline {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(_) => {
                    let result = block_on(async {
                        let mut conn = sqlx::PgConnection::connect_with(&options).await?;
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
            "PostgreSQL on port {} did not accept connections within {READY_TIMEOUT:?}: \
             {last_error}",
            self.port
        )))
    }

    /// An error carrying the advice and the tails of every log of the cluster.
    fn error(&self, what: String) -> ServerError {
        ServerError::new(process::with_log_tails(
            format!(
                "could not run a throwaway PostgreSQL cluster: {what}\n{HOW_TO_GET_A_DATABASE}"
            ),
            &self.root,
            &["initdb.log", "pg_ctl.log", "postgres.log"],
        ))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        process::stop_watchdog(&mut self.control);
        if self.data.join("postmaster.pid").exists() {
            let _ = self.stop_immediate();
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

fn database_url_from_env() -> Option<String> {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.trim().is_empty())
}

/// Finds the directory with `initdb`, `pg_ctl` and `postgres`.
pub(crate) fn find_pg_bin() -> Result<PathBuf, ServerError> {
    let usable = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres"]
            .iter()
            .all(|t| dir.join(t).is_file())
    };
    if let Some(dir) = std::env::var_os("PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if usable(&dir) {
            Ok(dir)
        } else {
            Err(ServerError::new(format!(
                "PG_BIN={} does not contain initdb, pg_ctl and postgres\n{HOW_TO_GET_A_DATABASE}",
                dir.display()
            )))
        };
    }
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let version: Vec<u32> = name
                .split('.')
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            let bin = entry.path().join("bin");
            usable(&bin).then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    if let Some(dir) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&dir) {
            if usable(&dir) {
                return Ok(dir);
            }
        }
    }
    Err(ServerError::new(format!(
        "no PostgreSQL server binaries (initdb, pg_ctl, postgres) found\n{HOW_TO_GET_A_DATABASE}"
    )))
}

pub(crate) fn make_temp_root(chown_to_postgres: bool) -> Result<PathBuf, ServerError> {
    process::make_temp_root("sqlx-retry-testkit", chown_to_postgres.then_some("postgres")).map_err(
        |e| {
            ServerError::new(format!(
                "{e} (initdb and postgres refuse to run as root; does the user exist?)\n{HOW_TO_GET_A_DATABASE}"
            ))
        },
    )
}

pub(crate) fn free_port() -> Result<u16, ServerError> {
    process::free_port()
        .map_err(|e| ServerError::new(format!("could not find a free TCP port: {e}")))
}

/// Starts a shell that waits for this process to end, then stops the cluster and
/// deletes its directory. It runs in its own process group (a Ctrl-C aimed at the
/// test run does not kill it) with all standard streams on /dev/null (it never holds
/// a pipe of the test runner open and can't die of SIGPIPE).
fn spawn_watchdog(bin: &Path, root: &Path, data: &Path, as_postgres: bool) -> io::Result<Child> {
    let pg_ctl = shell_quote(&bin.join("pg_ctl").to_string_lossy());
    let data_q = shell_quote(&data.to_string_lossy());
    let root_q = shell_quote(&root.to_string_lossy());
    let runuser = if as_postgres {
        "runuser -u postgres -- "
    } else {
        ""
    };
    let script = format!(
        r#"
trap '' INT HUP PIPE QUIT
cleanup() {{
  {runuser}{pg_ctl} stop -D {data_q} -m immediate -w -t 10 >/dev/null 2>&1
  if [ -f {data_q}/postmaster.pid ]; then
    kill -QUIT "$(head -n 1 {data_q}/postmaster.pid)" 2>/dev/null
    sleep 1
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
