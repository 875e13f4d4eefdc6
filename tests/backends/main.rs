//! The other backends: MySQL/MariaDB (a throwaway server or `MYSQL_DATABASE_URL`) and SQLite
//! (temporary files).

mod mysql;
mod sqlite;
