//! How long one unit test of the README's `transfer` takes, three ways, each run as a test
//! would run it (a fresh tokio runtime per run):
//!
//! - **scripted server**: `mock::server::MockServer`, a 40001 at COMMIT of attempt 1, the script
//!   checked, on the paused clock;
//! - **throwaway PostgreSQL**: a fresh schema, the table and two rows, the transfer, the balances
//!   checked, the schema dropped (the server itself starts once, timed apart);
//! - **`MockDb`**: the trait-based pattern of `tests/mock/pattern.rs`, the same fault, paused clock.
//!
//! Prints figures and asserts nothing: `cargo run --example mock_server_timing --features
//! mock-server [-- RUNS]`.

#[cfg(feature = "mock-server")]
fn main() {
    timing::main();
}

#[cfg(not(feature = "mock-server"))]
fn main() {
    eprintln!("run with `--features mock-server`");
}

#[cfg(feature = "mock-server")]
mod timing {
    use std::future::Future;
    use std::time::{Duration, Instant};

    use sqlx::PgConnection;
    use sqlx_retry::mock::server::{Expectation, MockServer, PgType, Rows};
    use sqlx_retry::mock::{Fault, MockDb, MockTx, Phase};
    use sqlx_retry::serializable_retry;

    #[serializable_retry(max = 5)]
    async fn transfer(
        tx: &mut PgConnection,
        from: i64,
        to: i64,
        amount: i64,
    ) -> Result<bool, sqlx::Error> {
        let balance: i64 = sqlx::query_scalar("SELECT balance FROM accounts WHERE id = $1")
            .bind(from)
            .fetch_one(&mut *tx)
            .await?;
        if balance < amount {
            return Ok(false);
        }
        sqlx::query("UPDATE accounts SET balance = balance - $1 WHERE id = $2")
            .bind(amount)
            .bind(from)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE accounts SET balance = balance + $1 WHERE id = $2")
            .bind(amount)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        Ok(true)
    }

    trait Accounts {
        fn balance(&mut self, id: i64) -> impl Future<Output = Result<i64, sqlx::Error>> + Send;
        fn add(
            &mut self,
            id: i64,
            delta: i64,
        ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
    }

    impl Accounts for MockTx<[i64; 2]> {
        async fn balance(&mut self, id: i64) -> Result<i64, sqlx::Error> {
            self.execute("balance")?;
            Ok(self.state()[id as usize - 1])
        }
        async fn add(&mut self, id: i64, delta: i64) -> Result<(), sqlx::Error> {
            self.execute("add")?;
            self.state_mut()[id as usize - 1] += delta;
            Ok(())
        }
    }

    #[serializable_retry(max = 5)]
    async fn transfer_generic<C: Accounts + Send>(
        tx: &mut C,
        from: i64,
        to: i64,
        amount: i64,
    ) -> Result<bool, sqlx::Error> {
        if tx.balance(from).await? < amount {
            return Ok(false);
        }
        tx.add(from, -amount).await?;
        tx.add(to, amount).await?;
        Ok(true)
    }

    fn paused_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime")
    }

    fn real_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn scripted_server_run() {
        paused_runtime().block_on(async {
            let server = MockServer::start().await.expect("start");
            for _ in 0..2 {
                server
                    .expect(
                        Expectation::new("SELECT balance FROM accounts WHERE id = $1")
                            .with_args((1_i64,))
                            .returns(Rows::new([("balance", PgType::Int8)]).row((100_i64,))),
                    )
                    .expect(
                        Expectation::new(
                            "UPDATE accounts SET balance = balance - $1 WHERE id = $2",
                        )
                        .with_args((30_i64, 1_i64))
                        .affects(1),
                    )
                    .expect(
                        Expectation::new(
                            "UPDATE accounts SET balance = balance + $1 WHERE id = $2",
                        )
                        .with_args((30_i64, 2_i64))
                        .affects(1),
                    );
            }
            server.fail(1, Phase::Commit, Fault::sqlstate("40001"));
            let pool = server.pool();
            let moved = transfer(&pool, 1, 2, 30).await.expect("transfer");
            assert!(moved && server.attempts() == 2);
            server.expectations_were_met().expect("script met");
            pool.close().await;
        });
    }

    fn postgres_run() {
        real_runtime().block_on(async {
            let (pool, schema) = sqlx_retry_testkit::isolated_pool(2).await;
            sqlx::raw_sql(
                "CREATE TABLE accounts (id int8 PRIMARY KEY, balance int8 NOT NULL);
                 INSERT INTO accounts VALUES (1, 100), (2, 0);",
            )
            .execute(&pool)
            .await
            .expect("setup");
            assert!(transfer(&pool, 1, 2, 30).await.expect("transfer"));
            let total: i64 = sqlx::query_scalar("SELECT sum(balance)::int8 FROM accounts")
                .fetch_one(&pool)
                .await
                .expect("sum");
            assert_eq!(total, 100);
            pool.close().await;
            schema.drop_schema().await.expect("drop schema");
        });
    }

    fn mockdb_run() {
        paused_runtime().block_on(async {
            let db = MockDb::new([100_i64, 0]).fail(1, Phase::Commit, Fault::sqlstate("40001"));
            assert!(transfer_generic(&db, 1, 2, 30).await.expect("transfer"));
            assert_eq!(db.state(), [70, 30]);
        });
    }

    fn measure(name: &str, runs: usize, run: fn()) {
        run(); // warm-up, not counted
        let mut times: Vec<Duration> = (0..runs)
            .map(|_| {
                let start = Instant::now();
                run();
                start.elapsed()
            })
            .collect();
        times.sort();
        let mean = times.iter().sum::<Duration>() / runs as u32;
        println!(
            "{name:<22} runs {runs:>4}  min {:>9.3?}  median {:>9.3?}  mean {:>9.3?}  max {:>9.3?}",
            times[0],
            times[runs / 2],
            mean,
            times[runs - 1]
        );
    }

    pub(super) fn main() {
        let runs: usize = std::env::args()
            .nth(1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(50)
            .max(1);
        let start = Instant::now();
        real_runtime().block_on(async {
            let (_pool, schema) = sqlx_retry_testkit::isolated_pool(1).await;
            schema.drop_schema().await.expect("drop schema");
        });
        println!(
            "throwaway PostgreSQL: first schema (server start if none was running) {:.3?}",
            start.elapsed()
        );
        measure("scripted server", runs, scripted_server_run);
        measure("throwaway PostgreSQL", runs, postgres_run);
        measure("MockDb (trait-based)", runs, mockdb_run);
    }
}
