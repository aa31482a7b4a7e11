//! A query taken apart, so that its SQL can be looked at before it is sent
//! (commit detection, statement capture), then sent as it was.

use sqlx::postgres::PgStatement;
use sqlx::{Execute, Postgres};

/// The parts of a query, taken apart so that the SQL text can be looked at
/// before it is sent (commit detection, statement capture).
#[derive(Clone)]
pub(crate) struct OwnedQuery {
    pub(crate) sql: sqlx::SqlStr,
    statement: Option<PgStatement>,
    arguments: Option<sqlx::postgres::PgArguments>,
    persistent: bool,
}

impl OwnedQuery {
    pub(crate) fn take<'q, E: Execute<'q, Postgres>>(mut query: E) -> sqlx::Result<Self> {
        let statement = query.statement().cloned();
        let arguments = query.take_arguments().map_err(sqlx::Error::Encode)?;
        let persistent = query.persistent();
        let sql = query.sql();
        Ok(OwnedQuery {
            sql,
            statement,
            arguments,
            persistent,
        })
    }
}

impl<'q> Execute<'q, Postgres> for OwnedQuery {
    fn sql(self) -> sqlx::SqlStr {
        self.sql
    }
    fn statement(&self) -> Option<&PgStatement> {
        self.statement.as_ref()
    }
    fn take_arguments(
        &mut self,
    ) -> Result<Option<sqlx::postgres::PgArguments>, sqlx::error::BoxDynError> {
        Ok(self.arguments.take())
    }
    fn persistent(&self) -> bool {
        self.persistent
    }
}
