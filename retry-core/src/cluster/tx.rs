//! The cluster's transactions, and `&Cluster` / `&Session` as transaction sources.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{PgConnection, Postgres, Row as _};

use super::lsn::Lsn;
use super::standby::COMMIT_AND_MEASURE;
use super::{Cluster, Inner, Session};
use crate::policy::TxOptions;
use crate::source::{BeginTransaction, OpenTransaction, PoolTransaction};

/// A session write's COMMIT: the check that the transaction is not aborted, COMMIT, the empty
/// transaction of a pooled COMMIT (see `aborted.rs`), and the WAL insert position, read after
/// COMMIT so that it is at or past the end of the commit record.
const COMMIT_AND_READ_LSN: &str = concat!(
    crate::aborted::check_sql!(),
    "; COMMIT; BEGIN; SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8"
);

/// A session's last commit position when it is not known (a COMMIT's reply was lost): its
/// `replica` calls run on the primary.
pub(crate) const UNKNOWN: u64 = u64::MAX;

/// An open transaction on one of a [`Cluster`]'s servers: the transaction type of the `&Cluster`
/// and `&Session` sources. You meet it only when driving those sources by hand.
pub struct ClusterTransaction {
    tx: PoolTransaction<Postgres>,
    on_commit: OnCommit,
}

/// What the COMMIT also does.
pub(crate) enum OnCommit {
    /// Nothing: a plain pooled COMMIT.
    Nothing,
    /// A session's write on the primary: remember the commit's WAL position.
    RecordLsn(Arc<AtomicU64>),
    /// On a standby: measure its replay position and lag.
    Measure(Arc<Inner>, usize),
}

impl std::fmt::Debug for ClusterTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let server = match self.on_commit {
            OnCommit::Measure(_, i) => format!("standby {i}"),
            _ => "primary".to_owned(),
        };
        f.debug_struct("ClusterTransaction")
            .field("server", &server)
            .finish_non_exhaustive()
    }
}

impl ClusterTransaction {
    pub(crate) fn new(tx: PoolTransaction<Postgres>, on_commit: OnCommit) -> Self {
        ClusterTransaction { tx, on_commit }
    }
}

impl OpenTransaction for ClusterTransaction {
    type Conn = PgConnection;

    fn conn(&mut self) -> &mut PgConnection {
        self.tx.conn()
    }

    /// Like a pooled transaction's COMMIT (the check that the transaction is not aborted rides
    /// with it), plus, in the same query, what the cluster learns from it: for a session's
    /// write, the commit's WAL position; on a standby, its replay position and lag.
    async fn commit(self) -> Result<(), sqlx::Error> {
        match self.on_commit {
            OnCommit::Nothing => self.tx.commit().await,
            OnCommit::RecordLsn(written) => {
                let rows = match self.tx.commit_returning(COMMIT_AND_READ_LSN).await {
                    Ok(rows) => rows,
                    Err(err) => {
                        // Without a reply from the server (the connection broke), the COMMIT
                        // may have committed: the session's later `replica` calls run on the
                        // primary, which has it if it committed. A server's error means
                        // nothing was committed.
                        if !matches!(err, sqlx::Error::Database(_)) {
                            written.store(UNKNOWN, Ordering::Release);
                        }
                        return Err(err);
                    }
                };
                // Committed. Should the position be unreadable, the session must still see this
                // commit: its later `replica` calls then all run on the primary.
                let lsn = rows
                    .last()
                    .and_then(|row| row.try_get::<i64, _>(0).ok())
                    .map_or(Lsn(UNKNOWN), Lsn::from_sql);
                written.fetch_max(lsn.0, Ordering::AcqRel);
                Ok(())
            }
            OnCommit::Measure(inner, i) => {
                let rows = self.tx.commit_returning(COMMIT_AND_MEASURE).await?;
                // Committed; a measurement that cannot be read is simply not recorded.
                if let (Some(row), Some(standby)) = (rows.first(), inner.standbys.get(i)) {
                    let _ = standby.record(row);
                }
                Ok(())
            }
        }
    }

    fn rollback(self) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        self.tx.rollback()
    }

    /// The savepoint protocol runs on the pooled transaction; its COMMIT stays this type's
    /// (`commit_released` is `commit`: a cluster's servers are PostgreSQL, where the check
    /// riding with COMMIT is harmless after `RELEASE`).
    fn savepoint(
        &mut self,
        statement: crate::source::Savepoint<'_>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        self.tx.savepoint(statement)
    }
}

/// `&cluster`: `replica` calls on a standby that is up and not lagging, every other call on the
/// primary. Each attempt is routed anew, so an attempt whose connection broke is retried on a
/// fresh connection, possibly on another server.
impl<'s, 'c> BeginTransaction<'s> for &'c Cluster {
    type Conn = PgConnection;
    type Tx = ClusterTransaction;

    fn begin(
        &'s mut self,
        options: TxOptions,
    ) -> impl Future<Output = Result<ClusterTransaction, sqlx::Error>> + Send + 's {
        let inner: &'c Arc<Inner> = &self.inner;
        inner.begin(options, None)
    }

    fn reconnects(&self) -> bool {
        true
    }
}

/// `&session`: as `&cluster`, and a `replica` call runs on a standby only once it has replayed
/// the session's last commit (see [`Session`]).
impl<'s, 'c> BeginTransaction<'s> for &'c Session {
    type Conn = PgConnection;
    type Tx = ClusterTransaction;

    fn begin(
        &'s mut self,
        options: TxOptions,
    ) -> impl Future<Output = Result<ClusterTransaction, sqlx::Error>> + Send + 's {
        let session: &'c Session = self;
        session.cluster.inner.begin(options, Some(&session.written))
    }

    fn reconnects(&self) -> bool {
        true
    }
}
