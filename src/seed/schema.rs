//! Secondary indexes and foreign keys are dropped before the bulk load and
//! rebuilt after it, from the definitions the database itself reports, so
//! the migrations stay the only place where they are written down.
//!
//! All of it runs in the loading transaction: if the seed fails or is killed
//! half-way, the rollback brings the dropped indexes and keys back.

use std::time::Instant;

use anyhow::Context;
use tokio_postgres::Transaction;

/// The tables the seed fills.
pub const TABLES: [&str; 3] = ["users", "friends", "posts"];

/// Indexes of the seeded tables that back no constraint (the primary keys
/// stay: rows arrive in key order, so they are cheap to maintain).
const SECONDARY_INDEXES: &str = "\
    SELECT format('%I.%I', i.schemaname, i.indexname), i.tablename, i.indexdef \
    FROM pg_indexes i \
    WHERE i.schemaname = current_schema() AND i.tablename = ANY($1) \
      AND NOT EXISTS ( \
          SELECT 1 FROM pg_constraint c \
          WHERE c.conindid = format('%I.%I', i.schemaname, i.indexname)::regclass \
            AND c.contype IN ('p', 'u', 'x')) \
    ORDER BY i.tablename, i.indexname";

/// Foreign keys declared on the seeded tables: checked row by row during a
/// load they would cost an index probe and a row lock per reference, and
/// queue one trigger event per row for the whole transaction.
const FOREIGN_KEYS: &str = "\
    SELECT format('%I.%I', n.nspname, t.relname), format('%I', c.conname), \
           pg_get_constraintdef(c.oid) \
    FROM pg_constraint c \
    JOIN pg_class t ON t.oid = c.conrelid \
    JOIN pg_namespace n ON n.oid = t.relnamespace \
    WHERE c.contype = 'f' AND n.nspname = current_schema() AND t.relname = ANY($1) \
    ORDER BY 1, 2";

#[derive(Debug, Default)]
pub struct Deferred {
    /// (qualified index name, table, `CREATE INDEX ...`)
    pub indexes: Vec<(String, String, String)>,
    /// (qualified table, quoted constraint name, `FOREIGN KEY ...`)
    pub foreign_keys: Vec<(String, String, String)>,
}

/// Reads the definitions, then drops the indexes and foreign keys.
pub async fn defer(tx: &Transaction<'_>) -> anyhow::Result<Deferred> {
    let tables: Vec<&str> = TABLES.to_vec();
    let indexes = tx
        .query(SECONDARY_INDEXES, &[&tables])
        .await
        .context("reading the secondary index definitions")?
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect::<Vec<(String, String, String)>>();
    let foreign_keys = tx
        .query(FOREIGN_KEYS, &[&tables])
        .await
        .context("reading the foreign key definitions")?
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect::<Vec<(String, String, String)>>();
    for (table, name, _) in &foreign_keys {
        tx.batch_execute(&format!("ALTER TABLE {table} DROP CONSTRAINT {name}"))
            .await
            .with_context(|| format!("dropping foreign key {name} of {table}"))?;
    }
    for (name, _, _) in &indexes {
        tx.batch_execute(&format!("DROP INDEX {name}"))
            .await
            .with_context(|| format!("dropping index {name}"))?;
    }
    let names: Vec<&str> = indexes.iter().map(|(name, _, _)| name.as_str()).collect();
    eprintln!(
        "seed: dropped {} secondary index(es) [{}] and {} foreign key(s) until the data is in",
        indexes.len(),
        names.join(", "),
        foreign_keys.len()
    );
    Ok(Deferred {
        indexes,
        foreign_keys,
    })
}

/// Re-runs the saved definitions: the indexes, then the foreign keys (which
/// PostgreSQL validates against the loaded rows in one join each).
pub async fn restore(
    tx: &Transaction<'_>,
    deferred: &Deferred,
    seed_started: Instant,
) -> anyhow::Result<()> {
    for (name, table, definition) in &deferred.indexes {
        let started = Instant::now();
        tx.batch_execute(definition)
            .await
            .with_context(|| format!("rebuilding index {name}: {definition}"))?;
        eprintln!(
            "seed: index   {name} on {table} built in {:.1} s (total {:.1} s)",
            started.elapsed().as_secs_f64(),
            seed_started.elapsed().as_secs_f64()
        );
    }
    // PostgreSQL checks a new foreign key with one anti-join of the two
    // tables. Hashing the users and probing the hash with tens of millions
    // of follows in random order is about twice as slow as merging two
    // indexes that are already in key order (the primary key and the index
    // just rebuilt), so hash joins are off for these statements.
    tx.batch_execute("SET LOCAL enable_hashjoin = off").await?;
    for (table, name, definition) in &deferred.foreign_keys {
        let started = Instant::now();
        tx.batch_execute(&format!(
            "ALTER TABLE {table} ADD CONSTRAINT {name} {definition}"
        ))
        .await
        .with_context(|| format!("restoring foreign key {name} of {table}: {definition}"))?;
        eprintln!(
            "seed: foreign key {name} of {table} validated in {:.1} s (total {:.1} s)",
            started.elapsed().as_secs_f64(),
            seed_started.elapsed().as_secs_f64()
        );
    }
    tx.batch_execute("SET LOCAL enable_hashjoin = on").await?;
    Ok(())
}
