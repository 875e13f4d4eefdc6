// The attribute on a function written by a `macro_rules!` macro whose caller supplies the
// transaction's name, an argument and the return type.
use sqlx::{PgConnection, PgPool};
use sqlx_retry::serializable_retry;

macro_rules! repository_fn {
    ($name:ident, $tx:ident, $arg:ident: $arg_ty:ty, $ret:ty, $sql:literal) => {
        #[serializable_retry(retry_on = ["55P03"])]
        async fn $name($tx: &mut PgConnection, $arg: $arg_ty) -> $ret {
            let n: i64 = sqlx::query_scalar($sql)
                .bind($arg)
                .fetch_one(&mut *$tx)
                .await?;
            Ok(n)
        }
    };
}

repository_fn!(count, tx, id: i64, Result<i64, sqlx::Error>, "SELECT count(*) FROM t WHERE id = $1");
repository_fn!(count_named, conn, name: String, anyhow::Result<i64>, "SELECT count(*) FROM t WHERE name = $1");

macro_rules! whole_fn {
    ($name:ident) => {
        #[serializable_retry]
        async fn $name(tx: &mut PgConnection) -> Result<i64, sqlx::Error> {
            sqlx::query_scalar("SELECT 1").fetch_one(&mut *tx).await
        }
    };
}

whole_fn!(one);

#[allow(dead_code)]
async fn call(pool: &PgPool) -> anyhow::Result<i64> {
    Ok(count(pool, 1).await? + count_named(pool, "ada".to_owned()).await? + one(pool).await?)
}

fn main() {}
