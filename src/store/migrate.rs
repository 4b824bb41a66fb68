use anyhow::Context;
use tokio_postgres::{Client, Config};

use super::{Tls, connection};

mod embedded {
    refinery::embed_migrations!("db/migrations");
}

/// Any constant shared by every instance: it serialises concurrent start-ups
/// so two instances never race to apply the same migration.
const MIGRATION_LOCK: i64 = 0x6c69_7665_6665_6564; // "livefeed"

/// Creates the database if needed and applies every pending migration.
pub async fn migrate(database_url: &str) -> anyhow::Result<()> {
    create_database_if_missing(database_url).await?;
    let (config, tls) = connection(database_url).context("parsing the database URL")?;
    let mut client = connect(&config, tls).await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("taking the migration lock")?;
    let report = embedded::migrations::runner()
        .run_async(&mut client)
        .await
        .context("applying migrations");
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await
        .context("releasing the migration lock")?;
    for applied in report?.applied_migrations() {
        tracing::info!(migration = %applied, "applied migration");
    }
    Ok(())
}

/// Creates the database named in `database_url` when it does not exist yet,
/// connecting to the server's `postgres` database to do so.
pub async fn create_database_if_missing(database_url: &str) -> anyhow::Result<()> {
    let (config, tls) = connection(database_url).context("parsing the database URL")?;
    let name = config
        .get_dbname()
        .context("the database URL names no database")?
        .to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let client = connect(&admin, tls).await?;
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .context("looking up the database")?
        .is_some();
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match client
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
        {
            Ok(()) => tracing::info!(database = %name, "created database"),
            // Another instance created it between our check and our create.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(e) => return Err(e).context(format!("creating database {name}")),
        }
    }
    Ok(())
}

async fn connect(config: &Config, tls: Tls) -> anyhow::Result<Client> {
    let (client, connection) = config.connect(tls).await.with_context(|| {
        format!(
            "connecting to PostgreSQL at {:?} database {:?}",
            config.get_hosts(),
            config.get_dbname().unwrap_or_default()
        )
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "migration connection closed");
        }
    });
    Ok(client)
}
