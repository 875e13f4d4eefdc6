//! The sources that hold one connection: `&mut PgConnection` (and MySQL's and SQLite's), and
//! `&mut sqlx::Transaction`.

use std::future::Future;

use sqlx::{Database, Transaction};

#[allow(unused_imports)] // unused when no database feature is enabled
use super::MaybeJoined;
use super::{BeginTransaction, Joined};
#[allow(unused_imports)]
use crate::backends::Backend;
use crate::policy::TxOptions;

/// The `&mut Connection` sources: each attempt is a transaction on that connection, and a broken
/// connection ends the call (it cannot be replaced). A connection that is already inside a
/// transaction (an annotated function called with the outer function's `tx`) joins it: see
/// [`Joined`].
macro_rules! connection_source {
    ($(#[$attr:meta])* $conn:ty, $db:ty) => {
        $(#[$attr])*
        impl<'s> BeginTransaction<'s> for &mut $conn {
            type Conn = $conn;
            type Tx = MaybeJoined<'s, $db>;

            fn begin(
                &'s mut self,
                options: TxOptions,
            ) -> impl Future<Output = Result<Self::Tx, sqlx::Error>> + Send + 's {
                let statement = <$db as Backend>::begin_statement(&options);
                let conn: &'s mut $conn = self;
                async move {
                    if sqlx::Connection::is_in_transaction(&*conn) {
                        Ok(MaybeJoined::Joined(Joined::new(conn)))
                    } else {
                        sqlx::Connection::begin_with(conn, statement?)
                            .await
                            .map(MaybeJoined::Began)
                    }
                }
            }

            fn reconnects(&self) -> bool {
                false
            }

            fn joins(&self) -> bool {
                sqlx::Connection::is_in_transaction(&**self)
            }
        }
    };
}

connection_source!(
    #[cfg(feature = "postgres")]
    sqlx::PgConnection,
    sqlx::Postgres
);
connection_source!(
    #[cfg(feature = "mysql")]
    sqlx::MySqlConnection,
    sqlx::MySql
);
connection_source!(
    #[cfg(feature = "sqlite")]
    sqlx::SqliteConnection,
    sqlx::Sqlite
);

/// An open transaction as the source: the call joins it (see [`Joined`]). The body runs once on
/// it; nothing is sent to start or end a transaction, and the body's error is returned as is. The
/// caller commits or rolls back.
impl<'s, DB: Database> BeginTransaction<'s> for &mut Transaction<'_, DB> {
    type Conn = DB::Connection;
    type Tx = Joined<'s, DB::Connection>;

    fn begin(
        &'s mut self,
        _options: TxOptions,
    ) -> impl Future<Output = Result<Self::Tx, sqlx::Error>> + Send + 's {
        let conn: &'s mut DB::Connection = self;
        std::future::ready(Ok(Joined::new(conn)))
    }

    fn reconnects(&self) -> bool {
        false
    }

    fn joins(&self) -> bool {
        true
    }
}
