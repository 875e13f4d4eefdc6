//! The service functions: each runs in its own transaction, retried by `#[serializable_retry]`,
//! at the isolation level it needs. The queries are compile-checked by sqlx's macros (offline,
//! from `.sqlx/`).

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

/// What can go wrong in a service function. Business outcomes are variants of their own; a
/// database error keeps the `sqlx::Error` as its source, so the retry loop finds its SQLSTATE.
#[derive(Debug, thiserror::Error)]
pub enum BankError {
    /// The account does not exist.
    #[error("unknown account")]
    UnknownAccount,
    /// The debited account holds less than the amount.
    #[error("insufficient funds")]
    InsufficientFunds,
    /// No transfer was committed under this idempotency key.
    #[error("unknown transfer")]
    UnknownTransfer,
    /// The idempotency key was already used for a different transfer.
    #[error("idempotency key reused for a different transfer")]
    KeyReused,
    /// The database failed; after the retry loop, this is the last attempt's error.
    // The message is fixed: sqlx's own may quote values from the rows.
    #[error("database error")]
    Db(#[from] sqlx::Error),
}

/// An account as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// The account's id.
    pub id: i64,
    /// Its balance, in the smallest unit.
    pub balance: i64,
    /// Transfers it sent.
    pub sent: i64,
    /// Transfers it received.
    pub received: i64,
}

/// A transfer the client asks for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TransferOrder {
    /// The debited account.
    pub from: i64,
    /// The credited account.
    pub to: i64,
    /// The amount, at least 1.
    pub amount: i64,
}

/// A committed transfer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// The transfer's id.
    pub id: i64,
    /// The debited account.
    pub from_account: i64,
    /// The credited account.
    pub to_account: i64,
    /// The amount moved.
    pub amount: i64,
}

/// The result of [`transfer`]: the transfer, and whether it was committed by an earlier request
/// with the same idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The transfer.
    pub transfer: Transfer,
    /// `true` when an earlier request with the same key committed it.
    pub replayed: bool,
}

/// Opens an account. A single INSERT of a fresh row has nothing to conflict with and needs no
/// snapshot, so READ COMMITTED is enough; the loop still retries a deadlock or a lost connection.
#[serializable_retry(isolation = "read_committed")]
pub async fn open_account(tx: &mut PgConnection, balance: i64) -> Result<i64, BankError> {
    let id = sqlx::query_scalar!(
        "INSERT INTO accounts (balance) VALUES ($1) RETURNING id",
        balance
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(id)
}

/// Reads an account: its balance and how many transfers it sent and received.
///
/// Two statements that must agree, so one snapshot: REPEATABLE READ. `read_only`, because a
/// read-only transaction at REPEATABLE READ is never aborted with `40001` (only writes and locks
/// conflict there), takes no SSI predicate locks that would make concurrent transfers fail more
/// often, and does not wait for a safe snapshot as `SERIALIZABLE READ ONLY DEFERRABLE` would.
/// What it gives up, a read-only anomaly, needs a reader that combines several rows written by
/// different transfers into one decision; this read shows one account.
#[serializable_retry(read_only, isolation = "repeatable_read")]
pub async fn account(tx: &mut PgConnection, id: i64) -> Result<Account, BankError> {
    let balance = sqlx::query_scalar!("SELECT balance FROM accounts WHERE id = $1", id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(BankError::UnknownAccount)?;
    let counts = sqlx::query!(
        r#"SELECT count(*) FILTER (WHERE from_account = $1) AS "sent!",
                  count(*) FILTER (WHERE to_account = $1) AS "received!"
           FROM transfers WHERE from_account = $1 OR to_account = $1"#,
        id
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(Account {
        id,
        balance,
        sent: counts.sent,
        received: counts.received,
    })
}

/// Moves `order.amount` from `order.from` to `order.to`, unless the debited account would go
/// negative; applies a given idempotency key at most once.
///
/// SERIALIZABLE (the default): the balance check decides what is written, and the key lookup
/// decides whether anything is, so the whole decision must hold against concurrent transfers.
/// Under contention PostgreSQL aborts the losers with `40001` (or `40P01` when two transfers
/// lock the same two accounts in opposite order) and the loop runs the whole body again. The
/// backoff is shorter than the default: these transactions last a millisecond or two.
///
/// On tables of a few pages PostgreSQL reads by sequential scan, and under SSI a sequential scan
/// locks the whole table: every two concurrent transfers then conflict, as they do in the tests'
/// four accounts. On tables of realistic size the lookups use the primary key and the
/// idempotency key's index, and only transfers sharing an account (or a key) conflict.
#[serializable_retry(max = 8, backoff(base = "2ms", cap = "100ms"))]
pub async fn transfer(
    tx: &mut PgConnection,
    order: &TransferOrder,
    key: Option<&str>,
) -> Result<Applied, BankError> {
    if let Some(key) = key {
        let earlier = sqlx::query_as!(
            Transfer,
            "SELECT id, from_account, to_account, amount FROM transfers WHERE idempotency_key = $1",
            key
        )
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(earlier) = earlier {
            let same = (earlier.from_account, earlier.to_account, earlier.amount)
                == (order.from, order.to, order.amount);
            return if same {
                Ok(Applied {
                    transfer: earlier,
                    replayed: true,
                })
            } else {
                Err(BankError::KeyReused)
            };
        }
    }
    let balance = sqlx::query_scalar!("SELECT balance FROM accounts WHERE id = $1", order.from)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(BankError::UnknownAccount)?;
    if balance < order.amount {
        return Err(BankError::InsufficientFunds);
    }
    // Both rows are updated in id order, so two transfers over the same accounts never wait on
    // each other's row locks in a cycle: no deadlock (40P01), which PostgreSQL would only detect
    // after `deadlock_timeout` (1 s by default).
    let mut changes = [(order.from, -order.amount), (order.to, order.amount)];
    changes.sort_unstable();
    for (id, delta) in changes {
        let updated = sqlx::query!(
            "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
            delta,
            id
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            // The credited account does not exist; an `Err` rolls back what was written.
            return Err(BankError::UnknownAccount);
        }
    }
    let id = sqlx::query_scalar!(
        "INSERT INTO transfers (idempotency_key, from_account, to_account, amount)
         VALUES ($1, $2, $3, $4) RETURNING id",
        key,
        order.from,
        order.to,
        order.amount
    )
    .fetch_one(&mut *tx)
    .await?;
    Ok(Applied {
        transfer: Transfer {
            id,
            from_account: order.from,
            to_account: order.to,
            amount: order.amount,
        },
        replayed: false,
    })
}

/// Looks a transfer up by its idempotency key: how a client learns whether a transfer whose
/// outcome was unknown committed. One statement, read-only: REPEATABLE READ, as [`account`].
#[serializable_retry(read_only, isolation = "repeatable_read")]
pub async fn transfer_by_key(tx: &mut PgConnection, key: &str) -> Result<Transfer, BankError> {
    sqlx::query_as!(
        Transfer,
        "SELECT id, from_account, to_account, amount FROM transfers WHERE idempotency_key = $1",
        key
    )
    .fetch_optional(&mut *tx)
    .await?
    .ok_or(BankError::UnknownTransfer)
}
