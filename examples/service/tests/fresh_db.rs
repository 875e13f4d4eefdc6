//! The service functions under sqlx's own test attribute: each `#[sqlx::test]` gets a fresh
//! database with the migrations applied, and the function under test takes its transactions
//! from that database's pool, retry loop included.
//!
//! To unit-test the same logic without any database, the mock pattern of the library's
//! `tests/mock/pattern.rs` applies: a repository trait implemented for `PgConnection` and for
//! `sqlx_retry::mock::MockTx`, with failures scripted per attempt.
//!
//! `#[sqlx::test]` creates its databases on the server named by `DATABASE_URL`, with a role
//! allowed to `CREATE DATABASE`. When it is not set, these tests start the testkit's throwaway
//! cluster and point `DATABASE_URL` at it (see [`MIGRATOR`]); they never skip.

use std::sync::LazyLock;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx_retry_example_service::bank::{self, BankError, TransferOrder};

/// The service's migrations, for `#[sqlx::test(migrator = "MIGRATOR")]`.
///
/// `#[sqlx::test]` reads `DATABASE_URL` after it has taken the migrator, so this is the one
/// place to set it first. When it is unset, the testkit starts a throwaway cluster (removed when
/// the process exits) and the variable names it.
static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    if std::env::var_os("DATABASE_URL").is_none() {
        let url = sqlx_retry_testkit::postgres_url();
        // SAFETY: the first test to get here sets the variable while every other test of this
        // binary waits on this `LazyLock` before reaching its own `DATABASE_URL` read; this file
        // has no other tests and starts no threads of its own. Nothing here reads the
        // environment from C (the URL's host is an IP address, resolved without getaddrinfo).
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("DATABASE_URL", url);
        }
    }
    sqlx::migrate!()
});

async fn open(pool: &PgPool, balance: i64) -> i64 {
    bank::open_account(pool, balance).await.unwrap()
}

async fn balance(pool: &PgPool, id: i64) -> i64 {
    bank::account(pool, id).await.unwrap().balance
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_transfer_with_a_key_is_applied_once(pool: PgPool) {
    let (a, b) = (open(&pool, 100).await, open(&pool, 0).await);
    let order = TransferOrder {
        from: a,
        to: b,
        amount: 30,
    };
    let first = bank::transfer(&pool, &order, Some("k-1")).await.unwrap();
    let again = bank::transfer(&pool, &order, Some("k-1")).await.unwrap();
    assert!(!first.replayed);
    assert!(again.replayed);
    assert_eq!(again.transfer, first.transfer);
    assert_eq!((balance(&pool, a).await, balance(&pool, b).await), (70, 30));
    assert_eq!(
        bank::transfer_by_key(&pool, "k-1").await.unwrap(),
        first.transfer
    );

    let other = TransferOrder { amount: 1, ..order };
    assert!(matches!(
        bank::transfer(&pool, &other, Some("k-1")).await,
        Err(BankError::KeyReused)
    ));
}

#[sqlx::test(migrator = "MIGRATOR")]
async fn a_refused_transfer_writes_nothing(pool: PgPool) {
    let (a, b) = (open(&pool, 100).await, open(&pool, 0).await);
    let too_much = TransferOrder {
        from: a,
        to: b,
        amount: 101,
    };
    assert!(matches!(
        bank::transfer(&pool, &too_much, Some("k-2")).await,
        Err(BankError::InsufficientFunds)
    ));
    // The debit is written before the credited account is found missing: the Err rolls it back.
    let nowhere = TransferOrder {
        from: a,
        to: b + 1_000,
        amount: 10,
    };
    assert!(matches!(
        bank::transfer(&pool, &nowhere, Some("k-3")).await,
        Err(BankError::UnknownAccount)
    ));
    assert_eq!(balance(&pool, a).await, 100);
    assert!(matches!(
        bank::transfer_by_key(&pool, "k-2").await,
        Err(BankError::UnknownTransfer)
    ));
    assert!(matches!(
        bank::account(&pool, b + 1_000).await,
        Err(BankError::UnknownAccount)
    ));
}
