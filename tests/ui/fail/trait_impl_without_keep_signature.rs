// In a trait impl, the rewritten signature no longer matches the trait's: the error is the
// compiler's (E0049); `keep_signature` is the documented form (see tests/ui/pass/trait_impl.rs).
use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

trait Repo {
    async fn f(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error>;
}

struct Pg;

impl Repo for Pg {
    #[serializable_retry]
    async fn f(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&mut *tx).await?;
        Ok(())
    }
}

fn main() {}
