//! The HTTP layer: routes, and how each error becomes a status a client can act on.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::bank::{self, Account, BankError, Transfer, TransferOrder};

/// What the handlers share: the pool the service functions take their transactions from, and
/// the Prometheus recorder's handle that renders `/metrics`.
#[derive(Clone)]
pub struct AppState {
    /// Each attempt of a service function takes a connection from it.
    pub pool: PgPool,
    /// Renders the metrics of the process-wide recorder.
    pub metrics: PrometheusHandle,
}

/// The service's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/accounts", post(open_account))
        .route("/accounts/{id}", get(account))
        .route("/transfers", post(transfer))
        .route("/transfers/{key}", get(transfer_by_key))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// How long a client should wait before retrying a call that gave up on conflicts.
pub const RETRY_AFTER_SECS: u64 = 1;

/// The header that makes `POST /transfers` safe to repeat.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// An error response: a status and a machine-readable code, never database text or row data.
#[derive(Debug)]
pub enum ApiError {
    /// 422: the request can never succeed as sent.
    Invalid(&'static str),
    /// 404: no such account.
    UnknownAccount,
    /// 404: no transfer under this key.
    UnknownTransfer,
    /// 409: the account's balance is too low now; it may succeed after a deposit.
    InsufficientFunds,
    /// 422: the idempotency key belongs to a different transfer.
    KeyReused,
    /// 503 with `Retry-After`: every attempt conflicted with concurrent transactions
    /// (`40001`/`40P01`); nothing was committed, and the same request may be sent again.
    Conflict,
    /// 503 with `Retry-After`: the database could not be reached or the pool had no connection
    /// in time; nothing was committed.
    Unavailable,
    /// 500 `outcome_unknown`: the connection broke while COMMIT was in flight. The transfer may
    /// or may not be applied: repeat it with the same `Idempotency-Key` (applied at most once),
    /// or look it up with `GET /transfers/{key}`.
    OutcomeUnknown,
    /// 500: anything else; details are in the server log.
    Internal,
}

#[derive(Serialize)]
struct ErrorBody {
    error: &'static str,
    message: &'static str,
}

impl ApiError {
    /// The status, the code in the body, and a sentence for people.
    pub fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            ApiError::Invalid(message) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_request", message)
            }
            ApiError::UnknownAccount => {
                (StatusCode::NOT_FOUND, "unknown_account", "no such account")
            }
            ApiError::UnknownTransfer => (
                StatusCode::NOT_FOUND,
                "unknown_transfer",
                "no transfer was committed under this key",
            ),
            ApiError::InsufficientFunds => (
                StatusCode::CONFLICT,
                "insufficient_funds",
                "the debited account holds less than the amount",
            ),
            ApiError::KeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "this key was used for a different transfer",
            ),
            ApiError::Conflict => (
                StatusCode::SERVICE_UNAVAILABLE,
                "conflict",
                "too many concurrent transactions on the same accounts; nothing was applied, retry later",
            ),
            ApiError::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the database is unavailable; nothing was applied, retry later",
            ),
            ApiError::OutcomeUnknown => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "outcome_unknown",
                "the connection broke while committing: the transfer may or may not be applied; \
                 repeat it with the same Idempotency-Key, or GET /transfers/{key}",
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, error, message) = self.parts();
        let mut response = (status, Json(ErrorBody { error, message })).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        response
    }
}

impl From<BankError> for ApiError {
    fn from(err: BankError) -> Self {
        match err {
            BankError::UnknownAccount => ApiError::UnknownAccount,
            BankError::UnknownTransfer => ApiError::UnknownTransfer,
            BankError::InsufficientFunds => ApiError::InsufficientFunds,
            BankError::KeyReused => ApiError::KeyReused,
            BankError::Db(err) => from_database(&err),
        }
    }
}

/// Maps the error a service function returned after its retry loop. Logged with its SQLSTATE
/// and kind only: sqlx's messages can quote values from the rows.
fn from_database(err: &sqlx::Error) -> ApiError {
    let sqlstate = err
        .as_database_error()
        .and_then(|db| db.code())
        .map(|code| code.into_owned());
    let kind = error_kind(err);
    // First: a commit-unknown error also carries a SQLSTATE (40003) and wraps an I/O error.
    let mapped = if sqlx_retry::is_commit_unknown(err) {
        ApiError::OutcomeUnknown
    } else {
        match (err, sqlstate.as_deref()) {
            // The loop returns the last error as is once its attempts are spent.
            (_, Some("40001" | "40P01")) => ApiError::Conflict,
            // Connection lost or refused, server shutting down, or no pooled connection in
            // time: nothing committed (a broken COMMIT would be commit-unknown, above).
            (_, Some(code)) if code.starts_with("08") || code.starts_with("57P") => {
                ApiError::Unavailable
            }
            (sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed, _) => {
                ApiError::Unavailable
            }
            _ => ApiError::Internal,
        }
    };
    let (status, code, _) = mapped.parts();
    match mapped {
        ApiError::Internal | ApiError::OutcomeUnknown => {
            tracing::error!(
                status = status.as_u16(),
                error = code,
                sqlstate = sqlstate.as_deref(),
                kind,
                "request failed"
            )
        }
        _ => tracing::warn!(
            status = status.as_u16(),
            error = code,
            sqlstate = sqlstate.as_deref(),
            kind,
            "request failed"
        ),
    }
    mapped
}

fn error_kind(err: &sqlx::Error) -> &'static str {
    match err {
        sqlx::Error::Database(_) => "database",
        sqlx::Error::Io(_) => "io",
        sqlx::Error::PoolTimedOut => "pool_timed_out",
        sqlx::Error::PoolClosed => "pool_closed",
        sqlx::Error::Protocol(_) => "protocol",
        sqlx::Error::RowNotFound => "row_not_found",
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => "decode",
        _ => "other",
    }
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    body.map(|Json(body)| body)
        .map_err(|_| ApiError::Invalid("the body is not the expected JSON"))
}

/// `POST /accounts`: the body for opening an account.
#[derive(Debug, Deserialize, Serialize)]
pub struct NewAccount {
    /// The opening balance, at least 0.
    pub balance: i64,
}

async fn open_account(
    State(state): State<AppState>,
    body: Result<Json<NewAccount>, JsonRejection>,
) -> Result<(StatusCode, HeaderMap, Json<Account>), ApiError> {
    let NewAccount { balance } = json_body(body)?;
    if balance < 0 {
        return Err(ApiError::Invalid("balance must not be negative"));
    }
    let id = bank::open_account(&state.pool, balance).await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/accounts/{id}")) {
        headers.insert(header::LOCATION, location);
    }
    let account = Account {
        id,
        balance,
        sent: 0,
        received: 0,
    };
    Ok((StatusCode::CREATED, headers, Json(account)))
}

async fn account(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<Account>, ApiError> {
    Ok(Json(bank::account(&state.pool, id).await?))
}

/// `POST /transfers`: 201 when this request committed the transfer, 200 when an earlier request
/// with the same `Idempotency-Key` did.
async fn transfer(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<TransferOrder>, JsonRejection>,
) -> Result<(StatusCode, Json<Transfer>), ApiError> {
    let order = json_body(body)?;
    if order.amount < 1 {
        return Err(ApiError::Invalid("amount must be at least 1"));
    }
    if order.from == order.to {
        return Err(ApiError::Invalid("from and to must differ"));
    }
    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => Some(valid_key(value)?),
    };
    let applied = bank::transfer(&state.pool, &order, key).await?;
    let status = if applied.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(applied.transfer)))
}

fn valid_key(value: &HeaderValue) -> Result<&str, ApiError> {
    value
        .to_str()
        .ok()
        .filter(|key| !key.is_empty() && key.len() <= 128)
        .ok_or(ApiError::Invalid(
            "Idempotency-Key must be 1 to 128 visible ASCII characters",
        ))
}

async fn transfer_by_key(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<Transfer>, ApiError> {
    Ok(Json(bank::transfer_by_key(&state.pool, &key).await?))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
