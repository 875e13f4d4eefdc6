// On a trait's declaration (no body): one error that points to the implementation form.
use sqlx::PgConnection;
use sqlx_retry::serializable_retry;

trait Repo {
    #[serializable_retry]
    async fn f(&self, tx: &mut PgConnection) -> Result<(), sqlx::Error>;
}

fn main() {}
