//! The tables as they will be after `engine migrate`: pending migrations tried inside the table
//! check's transaction (rolled back at its end), and each problem they fix attributed to the
//! file that fixes it.
//!
//! ```text
//! stage 0  the tables as they are            -> problems P0
//! apply    V10__add_x.sql (to a savepoint)   -> stage 1 -> P1      ... one stage per pending file
//! report   P_last (what remains: errors and warnings as found)
//!          + each problem of P0 absent from P_last, as a warning naming the first file after
//!            which it is gone ("fixed by pending migration V10__add_x.sql")
//!          + a pending file that fails (an error at its line and column) or that cannot be
//!            tried (it commits itself), after which nothing more is applied
//! ```
//!
//! Written for the authoring loop: a user writes `V10__add_appointment_booked.sql` and runs
//! `engine migrate --check` before applying it; the check says the column arrives with V10
//! instead of asking for the migration just written.

use std::future::Future;
use std::path::Path;

use crate::diagnostics::Diagnostic;
use crate::yaml::Pos;

/// The problems of the tables after `pending` (applied in order), with what each pending file
/// fixes. `stage` checks the tables at the current point of the transaction on `client`.
pub(super) async fn judge<F, Fut>(
    pending: &[refinery::Migration],
    dir: &Path,
    client: &tokio_postgres::Client,
    stage: F,
) -> Result<Vec<Diagnostic>, super::CheckError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Vec<Diagnostic>, super::CheckError>>,
{
    let mut stages = vec![stage().await?];
    let mut notes = Vec::new();
    for m in pending {
        let file = dir.join(format!("V{}__{}.sql", m.version(), m.name()));
        let sql = m.sql().unwrap_or_default();
        if crate::migrate::controls_transaction(sql) {
            notes.push(
                Diagnostic::new(&file, Pos::START, "",
                    "the tables are judged without this pending migration and those after it: it opens or ends transactions itself (COMMIT, BEGIN), so it cannot be tried in one that is rolled back; `engine migrate` applies it, then run the check again"
                )
                .warning(),
            );
            break;
        }
        savepoint(client, "SAVEPOINT engine_pending").await?;
        if let Err(e) = client.batch_execute(sql).await {
            savepoint(client, "ROLLBACK TO SAVEPOINT engine_pending").await?;
            notes.push(Diagnostic::new(
                &file,
                error_pos(sql, &e),
                "",
                format!(
                    "this pending migration fails: {}; `engine migrate` would stop here: fix the file (the tables are judged without it and those after it)",
                    crate::db::describe(&e)
                ),
            ));
            break;
        }
        savepoint(client, "RELEASE SAVEPOINT engine_pending").await?;
        stages.push(stage().await?);
    }
    let tried = &pending[..stages.len() - 1];
    let mut out = stages.last().cloned().unwrap_or_default();
    let same = |a: &Diagnostic, b: &Diagnostic| a.file == b.file && a.message == b.message;
    for d in &stages[0] {
        if out.iter().any(|o| same(o, d)) {
            continue;
        }
        // the first stage without it: the file applied just before that stage fixes it
        let Some(i) = stages.iter().position(|s| !s.iter().any(|o| same(o, d))) else {
            continue;
        };
        let m = &tried[i - 1];
        let found = d.message.split("; ").next().unwrap_or(&d.message);
        out.push(
            Diagnostic {
                message: format!(
                    "fixed by pending migration V{}__{}.sql (`engine migrate` applies it): {found}",
                    m.version(),
                    m.name()
                ),
                ..d.clone()
            }
            .warning(),
        );
    }
    out.extend(notes);
    Ok(out)
}

async fn savepoint(client: &tokio_postgres::Client, sql: &str) -> Result<(), super::CheckError> {
    client
        .batch_execute(sql)
        .await
        .map_err(super::CheckError::Database)
}

/// Where in `sql` Postgres says a statement failed, as a line and column; the file's start when
/// it does not say.
fn error_pos(sql: &str, e: &tokio_postgres::Error) -> Pos {
    match e.as_db_error().and_then(|d| d.position()) {
        Some(tokio_postgres::error::ErrorPosition::Original(at)) => pos_at(sql, *at as usize),
        _ => Pos::START,
    }
}

/// The line and column of the `at`-th character of `sql` (1-based, as Postgres counts).
fn pos_at(sql: &str, at: usize) -> Pos {
    let before: String = sql.chars().take(at.saturating_sub(1)).collect();
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    Pos { line, col }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_characters_from_one() {
        let sql = "ALTER TABLE t ADD a int;\nALTER TABLE t ADD COLUMN b boolen;\n";
        // `boolen` starts at character 53 (1-based)
        assert_eq!(&sql[52..58], "boolen");
        assert_eq!(pos_at(sql, 53), Pos { line: 2, col: 28 });
        assert_eq!(pos_at(sql, 1), Pos::START);
        // characters, not bytes: a comment with an accent before the fault
        assert_eq!(pos_at("-- é\nX", 6), Pos { line: 2, col: 1 });
    }
}
