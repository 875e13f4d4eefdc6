//! One client connection: the protocol state machine over pgwire's message codec.
//!
//! Replies are buffered and written at Sync, Flush or the end of a simple query, as PostgreSQL
//! does; a scripted connection loss closes the socket with whatever is buffered unsent.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;
use pgwire::messages::data::{
    DataRow, FieldDescription, NoData, ParameterDescription, RowDescription,
};
use pgwire::messages::extendedquery::{
    Bind, BindComplete, CloseComplete, Describe, Execute, Parse, ParseComplete,
};
use pgwire::messages::response::{
    CommandComplete, EmptyQueryResponse, ErrorResponse, NoticeResponse, ReadyForQuery, SslResponse,
    TransactionStatus,
};
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus, SecretKey};
use pgwire::messages::{
    DecodeContext, Message, PgWireFrontendMessage, ProtocolVersion, SslNegotiationMetaMessage,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::value::{PgType, Value};
use super::{Answer, Column, Event, EventKind, Outcome, PgError, ServerFault, Shared, lock};
use crate::IsolationLevel;
use crate::mock::Phase;

/// Accepts connections until the server is dropped (which aborts this task).
pub(crate) async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    while let Ok((stream, _)) = listener.accept().await {
        let _ = stream.set_nodelay(true);
        let id = {
            let mut state = lock(&shared.state);
            state.connections += 1;
            state.connections
        };
        let task = tokio::spawn(Conn::new(id, Arc::clone(&shared)).serve(stream));
        let mut tasks = lock(&shared.tasks);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
    }
}

/// What to do after handling a message.
enum Next {
    Continue,
    /// Write what is buffered and go on.
    Flush,
    /// Close the socket now, dropping what is buffered: a scripted connection loss.
    Drop,
    /// The client said goodbye.
    Terminate,
}

/// The transaction state PostgreSQL reports in ReadyForQuery.
#[derive(Clone, Copy)]
enum Tx {
    Idle,
    /// In a transaction: its attempt number and how many statements ran in it.
    Open {
        attempt: u32,
        statements: u32,
    },
    /// In a transaction aborted by an error.
    Failed {
        attempt: u32,
    },
    /// The empty transaction a pooled COMMIT leaves open for the pool's ROLLBACK (see
    /// `aborted.rs`): no attempt of its own, and not recorded.
    Placeholder,
}

struct Prepared {
    sql: String,
    param_types: Vec<u32>,
    columns: Option<Vec<Column>>,
}

struct Portal {
    statement: String,
    params: Vec<Value>,
    /// Binary result columns: one flag for all (`len == 1`) or one per column.
    binary: Vec<bool>,
}

struct Conn {
    id: u32,
    shared: Arc<Shared>,
    out: BytesMut,
    tx: Tx,
    statements: HashMap<String, Prepared>,
    portals: HashMap<String, Portal>,
    /// After an error in the extended protocol, messages are skipped until Sync.
    skip_to_sync: bool,
}

impl Conn {
    fn new(id: u32, shared: Arc<Shared>) -> Conn {
        Conn {
            id,
            shared,
            out: BytesMut::new(),
            tx: Tx::Idle,
            statements: HashMap::new(),
            portals: HashMap::new(),
            skip_to_sync: false,
        }
    }

    async fn serve(mut self, mut stream: TcpStream) {
        let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
        let mut buf = BytesMut::with_capacity(8 * 1024);
        loop {
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            loop {
                let message = match PgWireFrontendMessage::decode(&mut buf, &ctx) {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(_) => return,
                };
                match self.handle(message, &mut ctx) {
                    Next::Continue => {}
                    Next::Flush => {
                        if stream.write_all(&self.out).await.is_err() {
                            return;
                        }
                        self.out.clear();
                    }
                    Next::Drop => {
                        // Dropping the stream closes it; buffered replies are never sent.
                        return;
                    }
                    Next::Terminate => {
                        let _ = stream.shutdown().await;
                        return;
                    }
                }
            }
        }
    }

    fn send(&mut self, message: impl Message) {
        // Encoding fails only for oversized messages; a mock reply never is one.
        let _ = message.encode(&mut self.out);
    }

    fn handle(&mut self, message: PgWireFrontendMessage, ctx: &mut DecodeContext) -> Next {
        use PgWireFrontendMessage as M;
        match message {
            M::SslNegotiation(SslNegotiationMetaMessage::None) => {
                ctx.awaiting_frontend_ssl = false;
                Next::Continue
            }
            M::SslNegotiation(_) => {
                // No TLS: the client goes on in plain text or gives up, as it was configured.
                ctx.awaiting_frontend_ssl = false;
                self.send(SslResponse::Refuse);
                Next::Flush
            }
            M::Startup(startup) => {
                ctx.awaiting_frontend_startup = false;
                if startup.protocol_number_minor >= 2 {
                    ctx.protocol_version = ProtocolVersion::PROTOCOL3_2;
                }
                self.startup();
                Next::Flush
            }
            M::CancelRequest(_) | M::Terminate(_) => Next::Terminate,
            M::PasswordMessageFamily(_) => Next::Continue,
            M::Query(query) => self.simple_query(&query.query),
            M::Sync(_) => {
                self.skip_to_sync = false;
                self.portals.remove("");
                self.ready();
                Next::Flush
            }
            M::Flush(_) => Next::Flush,
            _ if self.skip_to_sync => Next::Continue,
            M::Parse(parse) => {
                self.parse(parse);
                Next::Continue
            }
            M::Describe(describe) => {
                self.describe(describe);
                Next::Continue
            }
            M::Bind(bind) => {
                self.bind(bind);
                Next::Continue
            }
            M::Execute(execute) => self.execute(execute),
            M::Close(close) => {
                let name = close.name.unwrap_or_default();
                if close.target_type == b'S' {
                    self.statements.remove(&name);
                } else {
                    self.portals.remove(&name);
                }
                self.send(CloseComplete::new());
                Next::Continue
            }
            other => {
                // COPY and the like: answered with an error and reported as unexpected.
                let message = lock(&self.shared.state)
                    .script_error(format!("unsupported protocol message: {other:?}"));
                self.error_fields(protocol_error(&message));
                Next::Continue
            }
        }
    }

    fn startup(&mut self) {
        self.send(Authentication::Ok);
        for (name, value) in [
            ("server_version", "17.0"),
            ("server_encoding", "UTF8"),
            ("client_encoding", "UTF8"),
            ("DateStyle", "ISO, MDY"),
            ("TimeZone", "UTC"),
            ("integer_datetimes", "on"),
            ("standard_conforming_strings", "on"),
            ("application_name", "sqlx-retry mock server"),
        ] {
            self.send(ParameterStatus::new(name.into(), value.into()));
        }
        self.send(BackendKeyData::new(
            i32::try_from(self.id).unwrap_or(i32::MAX),
            SecretKey::I32(0),
        ));
        self.ready();
    }

    fn ready(&mut self) {
        let status = match self.tx {
            Tx::Idle => TransactionStatus::Idle,
            Tx::Open { .. } | Tx::Placeholder => TransactionStatus::Transaction,
            Tx::Failed { .. } => TransactionStatus::Error,
        };
        self.send(ReadyForQuery::new(status));
    }

    fn record(&self, attempt: Option<u32>, kind: EventKind, outcome: Outcome) {
        lock(&self.shared.state).record(Event {
            conn: self.id,
            attempt,
            kind,
            outcome,
        });
    }

    fn attempt(&self) -> Option<u32> {
        match self.tx {
            Tx::Idle | Tx::Placeholder => None,
            Tx::Open { attempt, .. } | Tx::Failed { attempt } => Some(attempt),
        }
    }

    /// Sends an ErrorResponse; inside a transaction, aborts it.
    fn error(&mut self, error: &PgError) {
        self.error_fields(error.wire_fields());
    }

    fn error_fields(&mut self, fields: Vec<(u8, String)>) {
        self.send(ErrorResponse::new(fields));
        self.skip_to_sync = true;
        if let Tx::Open { attempt, .. } = self.tx {
            self.tx = Tx::Failed { attempt };
        }
    }

    fn warning(&mut self, code: &str, message: &str) {
        self.send(NoticeResponse::new(vec![
            (b'S', "WARNING".into()),
            (b'V', "WARNING".into()),
            (b'C', code.into()),
            (b'M', message.into()),
        ]));
    }

    fn complete(&mut self, tag: impl Into<String>) {
        self.send(CommandComplete::new(tag.into()));
    }

    // ---- simple protocol ------------------------------------------------------------------------

    fn simple_query(&mut self, text: &str) -> Next {
        // The retry loop's own statements around COMMIT: answered as PostgreSQL would, and not
        // recorded, since they are no statement of the code under test.
        if text == crate::aborted::CHECK_SQL || text == crate::aborted::POOLED_COMMIT_SQL {
            let next = self.commit_check(text == crate::aborted::POOLED_COMMIT_SQL);
            self.skip_to_sync = false;
            if let Next::Drop = next {
                return Next::Drop;
            }
            self.ready();
            return Next::Flush;
        }
        let statements = split_statements(text);
        if statements.is_empty() {
            self.send(EmptyQueryResponse::new());
        }
        for sql in statements {
            if let Next::Drop = self.run(&sql, Vec::new(), None) {
                return Next::Drop;
            }
            if self.skip_to_sync {
                // An error ends the query string: its remaining statements are not run.
                self.skip_to_sync = false;
                break;
            }
        }
        self.ready();
        Next::Flush
    }

    // ---- extended protocol ----------------------------------------------------------------------

    fn parse(&mut self, parse: Parse) {
        let name = parse.name.unwrap_or_default();
        let sql = parse.query;
        let columns = if control(&sql).is_some() || sql.trim().is_empty() {
            None
        } else {
            let described = lock(&self.shared.state).describe(&sql);
            match described {
                Some(columns) => columns,
                None => {
                    let message = lock(&self.shared.state).unexpected_prepare(&sql);
                    self.record(
                        self.attempt(),
                        EventKind::Statement {
                            sql: super::normalize_sql(&sql),
                            params: Vec::new(),
                        },
                        Outcome::Unexpected,
                    );
                    self.error_fields(mock_error(message));
                    return;
                }
            }
        };
        self.statements.insert(
            name,
            Prepared {
                sql,
                param_types: parse.type_oids,
                columns,
            },
        );
        self.send(ParseComplete::new());
    }

    fn describe(&mut self, describe: Describe) {
        let name = describe.name.unwrap_or_default();
        let (statement, binary) = if describe.target_type == b'S' {
            (Some(name), None)
        } else {
            match self.portals.get(&name) {
                Some(portal) => (Some(portal.statement.clone()), Some(portal.binary.clone())),
                None => (None, None),
            }
        };
        let Some(prepared) = statement.and_then(|s| self.statements.get(&s)) else {
            self.error_fields(protocol_error(
                "sqlx-retry mock server: unknown prepared statement or portal",
            ));
            return;
        };
        let param_types = prepared
            .param_types
            .iter()
            .map(|&oid| if oid == 0 { PgType::Text.oid() } else { oid })
            .collect();
        let row = prepared
            .columns
            .as_ref()
            .map(|cols| row_description(cols, binary.as_deref()));
        if describe.target_type == b'S' {
            self.send(ParameterDescription::new(param_types));
        }
        match row {
            Some(row) => self.send(row),
            None => self.send(NoData::new()),
        }
    }

    fn bind(&mut self, bind: Bind) {
        let statement = bind.statement_name.unwrap_or_default();
        let Some(prepared) = self.statements.get(&statement) else {
            self.error_fields(protocol_error(
                "sqlx-retry mock server: unknown prepared statement",
            ));
            return;
        };
        let formats = &bind.parameter_format_codes;
        let params = bind
            .parameters
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                let oid = prepared.param_types.get(i).copied().unwrap_or(0);
                let format = match formats.len() {
                    0 => 0,
                    1 => formats[0],
                    _ => formats.get(i).copied().unwrap_or(0),
                };
                Value::decode(oid, bytes.as_deref(), format == 1)
            })
            .collect();
        let binary = bind
            .result_column_format_codes
            .iter()
            .map(|&f| f == 1)
            .collect();
        self.portals.insert(
            bind.portal_name.unwrap_or_default(),
            Portal {
                statement,
                params,
                binary,
            },
        );
        self.send(BindComplete::new());
    }

    fn execute(&mut self, execute: Execute) -> Next {
        let name = execute.name.unwrap_or_default();
        let Some(portal) = self.portals.get(&name) else {
            self.error_fields(protocol_error("sqlx-retry mock server: unknown portal"));
            return Next::Continue;
        };
        let Some(prepared) = self.statements.get(&portal.statement) else {
            self.error_fields(protocol_error(
                "sqlx-retry mock server: unknown prepared statement",
            ));
            return Next::Continue;
        };
        let sql = prepared.sql.clone();
        let params = portal.params.clone();
        let described = (prepared.columns.clone(), portal.binary.clone());
        self.run(&sql, params, Some(described))
    }

    // ---- running a statement --------------------------------------------------------------------

    /// Runs one statement. `described` is `None` for the simple protocol (rows are described
    /// here and sent as text), else the prepared statement's columns and the result formats.
    fn run(
        &mut self,
        sql: &str,
        params: Vec<Value>,
        described: Option<(Option<Vec<Column>>, Vec<bool>)>,
    ) -> Next {
        if sql.trim().is_empty() {
            self.send(EmptyQueryResponse::new());
            return Next::Continue;
        }
        match control(sql) {
            Some(Control::Begin) => self.begin(sql),
            Some(Control::Commit) => self.commit(),
            Some(Control::Rollback) => self.rollback(),
            Some(Control::Savepoint(tag)) => {
                let outcome = match self.tx {
                    Tx::Failed { .. } if tag != "ROLLBACK" => {
                        self.error(&PgError::new("25P02"));
                        Outcome::Error("25P02".into())
                    }
                    Tx::Idle => {
                        self.error(
                            &PgError::new("25P01")
                                .message(format!("{tag} can only be used in transaction blocks")),
                        );
                        Outcome::Error("25P01".into())
                    }
                    Tx::Failed { attempt } => {
                        self.tx = Tx::Open {
                            attempt,
                            statements: 0,
                        };
                        self.complete(tag);
                        Outcome::Ok
                    }
                    Tx::Open { .. } | Tx::Placeholder => {
                        self.complete(tag);
                        Outcome::Ok
                    }
                };
                self.record(
                    self.attempt(),
                    EventKind::Savepoint(super::normalize_sql(sql)),
                    outcome,
                );
                Next::Continue
            }
            None => self.statement(sql, params, described),
        }
    }

    /// The aborted-transaction check, and for a pooled COMMIT the COMMIT and the empty
    /// transaction after it.
    fn commit_check(&mut self, pooled: bool) -> Next {
        if let Tx::Failed { .. } = self.tx {
            self.error(&PgError::new("25P02"));
            return Next::Continue;
        }
        // The `SET LOCAL` answers with its tag alone.
        self.complete("SET");
        if !pooled {
            return Next::Continue;
        }
        if let Next::Drop = self.commit() {
            return Next::Drop;
        }
        if !self.skip_to_sync {
            self.tx = Tx::Placeholder;
            self.complete("BEGIN");
        }
        Next::Continue
    }

    fn begin(&mut self, sql: &str) -> Next {
        let (isolation, read_only, deferrable) = parse_begin(sql);
        let kind = EventKind::Begin {
            sql: super::normalize_sql(sql),
            isolation,
            read_only,
            deferrable,
        };
        if let Tx::Open { attempt, .. } | Tx::Failed { attempt } = self.tx {
            if matches!(self.tx, Tx::Failed { .. }) {
                self.error(&PgError::new("25P02"));
                self.record(Some(attempt), kind, Outcome::Error("25P02".into()));
                return Next::Continue;
            }
            self.warning("25001", "there is already a transaction in progress");
            self.complete("BEGIN");
            self.record(Some(attempt), kind, Outcome::Ok);
            return Next::Continue;
        }
        let (attempt, fault) = {
            let mut state = lock(&self.shared.state);
            state.attempts += 1;
            let attempt = state.attempts;
            (attempt, state.take_fault(attempt, Phase::Begin))
        };
        match fault {
            Some(ServerFault::Error(e)) => {
                self.record(Some(attempt), kind, Outcome::Error(e.code().into()));
                self.error(&e);
                Next::Continue
            }
            Some(ServerFault::ConnectionLost | ServerFault::CommitReplyLost) => {
                self.record(Some(attempt), kind, Outcome::ConnectionLost);
                Next::Drop
            }
            None => {
                self.tx = Tx::Open {
                    attempt,
                    statements: 0,
                };
                self.record(Some(attempt), kind, Outcome::Ok);
                self.complete("BEGIN");
                Next::Continue
            }
        }
    }

    fn commit(&mut self) -> Next {
        let attempt = match self.tx {
            Tx::Placeholder => {
                self.tx = Tx::Idle;
                self.complete("COMMIT");
                return Next::Continue;
            }
            Tx::Idle => {
                self.warning("25P01", "there is no transaction in progress");
                self.complete("COMMIT");
                self.record(None, EventKind::Commit, Outcome::NoTransaction);
                return Next::Continue;
            }
            Tx::Failed { attempt } => {
                self.tx = Tx::Idle;
                self.complete("ROLLBACK");
                self.record(Some(attempt), EventKind::Commit, Outcome::RolledBack);
                return Next::Continue;
            }
            Tx::Open { attempt, .. } => attempt,
        };
        let fault = lock(&self.shared.state).take_fault(attempt, Phase::Commit);
        self.tx = Tx::Idle;
        match fault {
            Some(ServerFault::Error(e)) => {
                // A COMMIT that fails ends the transaction: PostgreSQL rolled it back.
                self.record(
                    Some(attempt),
                    EventKind::Commit,
                    Outcome::Error(e.code().into()),
                );
                self.send(ErrorResponse::new(e.wire_fields()));
                self.skip_to_sync = true;
                Next::Continue
            }
            Some(ServerFault::ConnectionLost) => {
                self.record(Some(attempt), EventKind::Commit, Outcome::ConnectionLost);
                Next::Drop
            }
            Some(ServerFault::CommitReplyLost) => {
                self.record(Some(attempt), EventKind::Commit, Outcome::CommitReplyLost);
                Next::Drop
            }
            None => {
                self.record(Some(attempt), EventKind::Commit, Outcome::Ok);
                self.complete("COMMIT");
                Next::Continue
            }
        }
    }

    fn rollback(&mut self) -> Next {
        let attempt = match self.tx {
            Tx::Placeholder => {
                self.tx = Tx::Idle;
                self.complete("ROLLBACK");
                return Next::Continue;
            }
            Tx::Idle => {
                self.warning("25P01", "there is no transaction in progress");
                self.complete("ROLLBACK");
                self.record(None, EventKind::Rollback, Outcome::NoTransaction);
                return Next::Continue;
            }
            Tx::Open { attempt, .. } | Tx::Failed { attempt } => attempt,
        };
        let fault = lock(&self.shared.state).take_fault(attempt, Phase::Rollback);
        self.tx = Tx::Idle;
        match fault {
            Some(ServerFault::Error(e)) => {
                self.record(
                    Some(attempt),
                    EventKind::Rollback,
                    Outcome::Error(e.code().into()),
                );
                self.send(ErrorResponse::new(e.wire_fields()));
                self.skip_to_sync = true;
                Next::Continue
            }
            Some(ServerFault::ConnectionLost | ServerFault::CommitReplyLost) => {
                self.record(Some(attempt), EventKind::Rollback, Outcome::ConnectionLost);
                Next::Drop
            }
            None => {
                self.record(Some(attempt), EventKind::Rollback, Outcome::Ok);
                self.complete("ROLLBACK");
                Next::Continue
            }
        }
    }

    fn statement(
        &mut self,
        sql: &str,
        params: Vec<Value>,
        described: Option<(Option<Vec<Column>>, Vec<bool>)>,
    ) -> Next {
        let kind = EventKind::Statement {
            sql: super::normalize_sql(sql),
            params: params.clone(),
        };
        let (attempt, fault) = match &mut self.tx {
            Tx::Idle | Tx::Placeholder => (None, None),
            Tx::Failed { attempt } => {
                let attempt = *attempt;
                self.error(&PgError::new("25P02"));
                self.record(Some(attempt), kind, Outcome::Error("25P02".into()));
                return Next::Continue;
            }
            Tx::Open {
                attempt,
                statements,
            } => {
                *statements += 1;
                let (attempt, n) = (*attempt, *statements);
                let mut state = lock(&self.shared.state);
                let fault = state.take_fault(attempt, Phase::Statement(n)).or_else(|| {
                    (n == 1)
                        .then(|| state.take_fault(attempt, Phase::Body))
                        .flatten()
                });
                (Some(attempt), fault)
            }
        };
        let answer = lock(&self.shared.state).answer(sql, &params);
        if let Answer::Unexpected(message) = answer {
            self.record(attempt, kind, Outcome::Unexpected);
            self.error_fields(mock_error(message));
            return Next::Continue;
        }
        match fault {
            Some(ServerFault::Error(e)) => {
                self.record(attempt, kind, Outcome::Error(e.code().into()));
                self.error(&e);
                return Next::Continue;
            }
            Some(ServerFault::ConnectionLost | ServerFault::CommitReplyLost) => {
                self.record(attempt, kind, Outcome::ConnectionLost);
                return Next::Drop;
            }
            None => {}
        }
        match answer {
            Answer::Error(e) => {
                self.record(attempt, kind, Outcome::Error(e.code().into()));
                self.error(&e);
            }
            Answer::Affected(n) => {
                self.record(attempt, kind, Outcome::Ok);
                self.complete(command_tag(sql, n));
            }
            Answer::Rows(rows) => match self.send_rows(sql, &rows, described) {
                Ok(()) => self.record(attempt, kind, Outcome::Ok),
                Err(message) => {
                    let message = lock(&self.shared.state).script_error(message);
                    self.record(attempt, kind, Outcome::Unexpected);
                    self.error_fields(mock_error(message));
                }
            },
            Answer::Unexpected(_) => {}
        }
        Next::Continue
    }

    /// Encodes the rows first, so that a script error sends nothing but the error.
    fn send_rows(
        &mut self,
        sql: &str,
        rows: &super::Rows,
        described: Option<(Option<Vec<Column>>, Vec<bool>)>,
    ) -> Result<(), String> {
        let columns = rows.columns();
        let binary = match &described {
            Some((Some(described), binary)) if described == columns => binary.clone(),
            Some((described, _)) => {
                return Err(format!(
                    "the rows scripted for `{}` have columns {}, but the statement was prepared with {}; \
                     expectations for the same statement text must return the same columns",
                    super::normalize_sql(sql),
                    column_list(columns),
                    described.as_deref().map_or("no result".into(), column_list),
                ));
            }
            None => Vec::new(),
        };
        let mut encoded = Vec::with_capacity(rows.rows().len());
        for (r, row) in rows.rows().iter().enumerate() {
            if row.len() != columns.len() {
                return Err(format!(
                    "row {} has {} values for {} columns ({})",
                    r + 1,
                    row.len(),
                    columns.len(),
                    column_list(columns)
                ));
            }
            let mut data = BytesMut::new();
            for (c, (value, column)) in row.iter().zip(columns).enumerate() {
                let bin = match binary.len() {
                    0 => false,
                    1 => binary[0],
                    _ => binary.get(c).copied().unwrap_or(false),
                };
                let bytes = value
                    .encode(column.ty, bin)
                    .map_err(|e| format!("row {}, column {}: {e}", r + 1, column.name))?;
                match bytes {
                    Some(bytes) => {
                        data.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
                        data.extend_from_slice(&bytes);
                    }
                    None => data.extend_from_slice(&(-1_i32).to_be_bytes()),
                }
            }
            encoded.push(DataRow::new(data, columns.len() as i16));
        }
        if described.is_none() {
            self.send(row_description(columns, Some(&[false])));
        }
        for row in encoded {
            self.send(row);
        }
        self.complete(command_tag(sql, rows.rows().len() as u64));
        Ok(())
    }
}

fn row_description(columns: &[Column], binary: Option<&[bool]>) -> RowDescription {
    RowDescription::new(
        columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let format = match binary {
                    None => 0,
                    Some([]) => 0,
                    Some([one]) => i16::from(*one),
                    Some(all) => i16::from(all.get(i).copied().unwrap_or(false)),
                };
                FieldDescription::new(c.name.clone(), 0, 0, c.ty.oid(), c.ty.size(), -1, format)
            })
            .collect(),
    )
}

fn column_list(columns: &[Column]) -> String {
    let list: Vec<String> = columns
        .iter()
        .map(|c| format!("{} {}", c.name, c.ty))
        .collect();
    format!("({})", list.join(", "))
}

fn mock_error(message: String) -> Vec<(u8, String)> {
    vec![
        (b'S', "ERROR".into()),
        (b'V', "ERROR".into()),
        (b'C', "XX000".into()),
        (b'M', message),
    ]
}

fn protocol_error(message: &str) -> Vec<(u8, String)> {
    vec![
        (b'S', "ERROR".into()),
        (b'V', "ERROR".into()),
        (b'C', "08P01".into()),
        (b'M', message.to_owned()),
    ]
}

/// The command tag for `sql` having touched `n` rows.
fn command_tag(sql: &str, n: u64) -> String {
    let verb = first_word(sql);
    match verb.as_str() {
        "INSERT" => format!("INSERT 0 {n}"),
        "UPDATE" | "DELETE" | "MERGE" | "SELECT" | "MOVE" | "FETCH" | "COPY" => {
            format!("{verb} {n}")
        }
        "WITH" | "VALUES" | "TABLE" => format!("SELECT {n}"),
        _ => verb,
    }
}

fn first_word(sql: &str) -> String {
    sql.trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("")
        .to_ascii_uppercase()
}

enum Control {
    Begin,
    Commit,
    Rollback,
    /// SAVEPOINT, RELEASE or ROLLBACK TO, with its command tag.
    Savepoint(&'static str),
}

fn control(sql: &str) -> Option<Control> {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(2)
        .map(|w| w.trim_end_matches(';').to_ascii_uppercase())
        .collect();
    let first = words.first().map(String::as_str)?;
    let second = words.get(1).map(String::as_str);
    Some(match (first, second) {
        ("BEGIN", _) | ("START", Some("TRANSACTION")) => Control::Begin,
        ("COMMIT" | "END", _) => Control::Commit,
        ("ROLLBACK", Some("TO")) => Control::Savepoint("ROLLBACK"),
        ("ROLLBACK" | "ABORT", _) => Control::Rollback,
        ("SAVEPOINT", _) => Control::Savepoint("SAVEPOINT"),
        ("RELEASE", _) => Control::Savepoint("RELEASE"),
        _ => return None,
    })
}

/// Isolation level, `READ ONLY`, `DEFERRABLE` from a BEGIN / START TRANSACTION statement.
fn parse_begin(sql: &str) -> (Option<IsolationLevel>, bool, bool) {
    let upper = super::normalize_sql(sql).to_ascii_uppercase();
    let isolation = if upper.contains("ISOLATION LEVEL SERIALIZABLE") {
        Some(IsolationLevel::Serializable)
    } else if upper.contains("ISOLATION LEVEL REPEATABLE READ") {
        Some(IsolationLevel::RepeatableRead)
    } else if upper.contains("ISOLATION LEVEL READ COMMITTED")
        || upper.contains("ISOLATION LEVEL READ UNCOMMITTED")
    {
        Some(IsolationLevel::ReadCommitted)
    } else {
        None
    };
    let read_only = upper.contains("READ ONLY");
    let deferrable = upper.contains("DEFERRABLE") && !upper.contains("NOT DEFERRABLE");
    (isolation, read_only, deferrable)
}

/// Splits a simple query's text at `;` outside quotes and comments-free text; empty parts are
/// dropped.
fn split_statements(text: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    for c in text.chars() {
        match (quote, c) {
            (None, '\'' | '"') => {
                quote = Some(c);
                current.push(c);
            }
            (Some(q), _) if c == q => {
                quote = None;
                current.push(c);
            }
            (None, ';') => parts.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    parts.push(current);
    parts
        .into_iter()
        .filter(|p| !p.trim().is_empty())
        .map(|p| p.trim().to_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn begin_statements_are_read_for_isolation_and_access_mode() {
        assert_eq!(
            parse_begin("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE"),
            (Some(IsolationLevel::Serializable), true, true)
        );
        assert_eq!(
            parse_begin("start transaction isolation level repeatable read"),
            (Some(IsolationLevel::RepeatableRead), false, false)
        );
        assert_eq!(parse_begin("BEGIN"), (None, false, false));
    }

    #[test]
    fn transaction_control_is_told_from_statements() {
        assert!(matches!(control("BEGIN"), Some(Control::Begin)));
        assert!(matches!(control("commit;"), Some(Control::Commit)));
        assert!(matches!(control("ROLLBACK"), Some(Control::Rollback)));
        assert!(matches!(
            control("ROLLBACK TO SAVEPOINT a"),
            Some(Control::Savepoint("ROLLBACK"))
        ));
        assert!(control("SELECT 1").is_none());
    }

    #[test]
    fn command_tags_follow_the_verb() {
        assert_eq!(command_tag("INSERT INTO t VALUES (1)", 1), "INSERT 0 1");
        assert_eq!(command_tag("  update t set a = 1", 3), "UPDATE 3");
        assert_eq!(
            command_tag("WITH x AS (SELECT 1) SELECT * FROM x", 1),
            "SELECT 1"
        );
    }

    #[test]
    fn simple_queries_split_outside_quotes() {
        assert_eq!(
            split_statements("SELECT ';'; SELECT 2;"),
            ["SELECT ';'", "SELECT 2"]
        );
    }
}
