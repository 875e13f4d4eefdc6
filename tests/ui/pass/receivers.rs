// Every receiver that can be given to each attempt: `&self`, `self: &Self`, `self: &Arc<Self>`,
// `self: Arc<Self>` and `self: Box<Self>` (used by reference in each attempt), `&mut self`
// (restored before a retry; `Self: Clone`) and `#[keep] &mut self` (not restored).
use std::sync::Arc;

use sqlx::{PgConnection, PgPool};
use sqlx_retry::serializable_retry;

#[derive(Clone)]
struct Service {
    fee: i64,
    calls: u64,
}

impl Service {
    #[serializable_retry]
    async fn by_ref(&self, tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT $1").bind(self.fee).fetch_one(&mut *tx).await
    }

    #[serializable_retry]
    async fn typed_ref(self: &Self, tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT $1").bind(self.fee).fetch_one(&mut *tx).await
    }

    #[serializable_retry]
    async fn arc_ref(self: &Arc<Self>, tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
        let this: Arc<Self> = Arc::clone(self);
        sqlx::query_scalar("SELECT $1").bind(this.fee).fetch_one(&mut *tx).await
    }

    #[serializable_retry]
    async fn arc(self: Arc<Self>, tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT $1").bind(self.fee).fetch_one(&mut *tx).await
    }

    #[serializable_retry]
    async fn boxed(self: Box<Self>, tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT $1").bind(self.fee).fetch_one(&mut *tx).await
    }

    #[serializable_retry]
    async fn restored(&mut self, tx: &mut PgConnection) -> Result<u64, sqlx::Error> {
        self.calls += 1;
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        Ok(self.calls)
    }

    #[serializable_retry]
    async fn kept(#[keep] &mut self, tx: &mut PgConnection) -> Result<u64, sqlx::Error> {
        // Counts every attempt, the failed ones too.
        self.calls += 1;
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        Ok(self.calls)
    }

    #[serializable_retry]
    async fn typed_mut(self: &mut Self, tx: &mut PgConnection) -> Result<u64, sqlx::Error> {
        self.calls += 1;
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        Ok(self.calls)
    }
}

struct NotClone {
    attempts: u64,
}

impl NotClone {
    #[serializable_retry]
    async fn count(#[keep] &mut self, tx: &mut PgConnection) -> Result<u64, sqlx::Error> {
        self.attempts += 1;
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        Ok(self.attempts)
    }
}

#[allow(dead_code)]
async fn use_them(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut service = Service { fee: 1, calls: 0 };
    service.by_ref(pool).await?;
    service.typed_ref(pool).await?;
    service.restored(pool).await?;
    service.kept(pool).await?;
    service.typed_mut(pool).await?;
    Service::boxed(Box::new(service.clone()), pool).await?;
    let shared = Arc::new(service);
    shared.arc_ref(pool).await?;
    Arc::clone(&shared).arc(pool).await?;
    // The future is `Send`: it can be spawned.
    let pool = pool.clone();
    tokio::spawn(async move { shared.arc(&pool).await });
    let mut counter = NotClone { attempts: 0 };
    counter.count(&PgPool::connect_lazy("postgres://").unwrap()).await?;
    Ok(())
}

fn main() {}
