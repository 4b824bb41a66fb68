use deadpool_postgres::PoolError;
use tokio_postgres::error::SqlState;

/// What can go wrong in the store, sorted by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or is refusing work right now; the
    /// request may succeed if retried later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("only the author may change a post")]
    NotAuthor,
    /// The caller's own row is missing (a write would attach to nobody).
    #[error("the calling user does not exist")]
    UnknownCaller,
    /// An idempotency key sent again with another request.
    #[error("this Idempotency-Key was used for a different request")]
    KeyReused,
    #[error("invalid database configuration: {0}")]
    Config(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A query failed for a reason that is a bug, not an outage.
    #[error("database error: {0}")]
    Query(#[source] tokio_postgres::Error),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        let outage = match e.code() {
            // No SQLSTATE means the failure was in the connection itself.
            None => true,
            Some(code) => {
                code.code().starts_with("08")
                    || [
                        SqlState::ADMIN_SHUTDOWN,
                        SqlState::CRASH_SHUTDOWN,
                        SqlState::CANNOT_CONNECT_NOW,
                        SqlState::TOO_MANY_CONNECTIONS,
                        SqlState::QUERY_CANCELED,
                    ]
                    .contains(code)
            }
        };
        if outage {
            Self::Unavailable(Box::new(e))
        } else {
            Self::Query(e)
        }
    }
}

impl From<PoolError> for StoreError {
    fn from(e: PoolError) -> Self {
        match e {
            PoolError::Backend(e) => e.into(),
            other => Self::Unavailable(Box::new(other)),
        }
    }
}

/// The foreign key `e` violated (the row it refers to does not exist), if
/// `e` is such a violation.
pub(super) fn missing_reference(e: &tokio_postgres::Error) -> Option<&str> {
    let db = e.as_db_error()?;
    (db.code() == &SqlState::FOREIGN_KEY_VIOLATION).then(|| db.constraint().unwrap_or_default())
}
