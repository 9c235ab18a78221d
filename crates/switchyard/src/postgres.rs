//! What the Postgres stores (analytics, virtual keys) share: reading `storage.postgres_url`
//! into a connection config, error messages that carry their causes but never the URL or
//! its password, and the bookkeeping of schema migrations.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::Config;

/// The server-side limit on one statement, unless the URL's `options` set their own: a
/// stalled server or a lock held elsewhere fails the statement (and the store retries)
/// rather than holding a writer forever. Migrations run without it; the analytics prune
/// allows [`PRUNE_STATEMENT_TIMEOUT`].
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The statement timeout of the analytics prune (deletes over a long backlog).
pub const PRUNE_STATEMENT_TIMEOUT: Duration = Duration::from_secs(600);

/// How long sent data may go unacknowledged before the connection is given up (Linux
/// `TCP_USER_TIMEOUT`), unless the URL sets `tcp_user_timeout`: a server that vanished
/// mid-query fails the query instead of leaving it waiting on TCP's retransmissions.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection config from `url` (`postgres://user:password@host:port/dbname?options`,
/// any option tokio-postgres takes), with the application name `switchyard`,
/// `connect_timeout`, [`TCP_USER_TIMEOUT`] and a [`STATEMENT_TIMEOUT`] when the URL sets
/// none of its own, and the password it carries (to scrub from messages). The error never
/// quotes the URL: the parser's messages do not.
pub fn connection_config(
    url: &str,
    connect_timeout: Duration,
) -> Result<(Config, Option<Arc<str>>), String> {
    let mut config = Config::from_str(url)
        .map_err(|error| format!("invalid postgres_url: {}", describe(None, &error)))?;
    if config.get_application_name().is_none() {
        config.application_name("switchyard");
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(connect_timeout);
    }
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
    let options = config.get_options().unwrap_or_default();
    if !sets(options, "statement_timeout") {
        let limit = format!("-c statement_timeout={}", STATEMENT_TIMEOUT.as_millis());
        let options = match options.trim() {
            "" => limit,
            given => format!("{given} {limit}"),
        };
        config.options(options);
    }
    let secret = config
        .get_password()
        .filter(|password| !password.is_empty())
        .map(|password| Arc::from(String::from_utf8_lossy(password).as_ref()));
    Ok((config, secret))
}

/// Whether the server `options` (`-c name=value`, `-cname=value` or `--name=value`, as the
/// server reads them) set the parameter `name`.
fn sets(options: &str, name: &str) -> bool {
    let mut words = options.split_whitespace();
    while let Some(word) = words.next() {
        let setting = match word {
            "-c" => words.next().unwrap_or_default(),
            _ => word
                .strip_prefix("--")
                .or_else(|| word.strip_prefix("-c"))
                .unwrap_or_default(),
        };
        if setting
            .split_once('=')
            .is_some_and(|(key, _)| key.replace('-', "_") == name)
        {
            return true;
        }
    }
    false
}

/// An error's message with its causes (tokio-postgres keeps the server's message in the
/// source), on one line, the password scrubbed.
pub fn describe(secret: Option<&str>, error: &(dyn std::error::Error + 'static)) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    let message = message.replace('\n', "; ");
    match secret {
        Some(secret) => message.replace(secret, "***"),
        None => message,
    }
}

/// A store's schema migrations: versions in order, each never edited once released.
pub struct Migrations<'m> {
    /// The table recording the applied versions.
    pub table: &'static str,
    /// The advisory lock taken while migrating (per schema).
    pub lock: i32,
    /// The store's name in logs.
    pub store: &'static str,
    /// `(version, SQL)`.
    pub steps: &'m [(i32, &'m str)],
}

impl<'m> Migrations<'m> {
    /// Takes the migration lock in `tx` (held until it commits, so instances starting
    /// together apply each step once), creates the record table if needed, and answers the
    /// steps not yet applied, in order; warns when the schema is newer than this build. On
    /// failure, says which step failed.
    pub async fn pending(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<Vec<(i32, &'m str)>, (&'static str, tokio_postgres::Error)> {
        // No statement timeout while migrating: waiting for another instance's migration,
        // or rewriting a large table, may take longer than the connections' usual limit.
        tx.batch_execute(&format!(
            "SET LOCAL statement_timeout = 0; \
             SELECT pg_advisory_xact_lock({}, hashtext(coalesce(current_schema(), ''))); \
             CREATE TABLE IF NOT EXISTS {} (\
             version INTEGER PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now());",
            self.lock, self.table
        ))
        .await
        .map_err(|error| ("preparing the migrations", error))?;
        let applied: std::collections::HashSet<i32> = tx
            .query(&format!("SELECT version FROM {}", self.table), &[])
            .await
            .and_then(|rows| rows.iter().map(|row| row.try_get(0)).collect())
            .map_err(|error| ("reading the applied migrations", error))?;
        let known = self.steps.iter().map(|&(version, _)| version).max();
        if let Some(newest) = applied.iter().max()
            && Some(*newest) > known
        {
            tracing::warn!(
                schema = newest,
                known,
                store = self.store,
                "the postgres schema is newer than this build"
            );
        }
        Ok(self
            .steps
            .iter()
            .copied()
            .filter(|(version, _)| !applied.contains(version))
            .collect())
    }

    /// Records `version` as applied, in `tx`.
    pub async fn record(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        version: i32,
    ) -> Result<(), tokio_postgres::Error> {
        tx.execute(
            &format!("INSERT INTO {} (version) VALUES ($1)", self.table),
            &[&version],
        )
        .await?;
        tracing::info!(version, store = self.store, "applied a postgres migration");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_reaches_a_message() {
        let (config, secret) = connection_config(
            "postgres://user:hunter2@127.0.0.1:1/db",
            Duration::from_secs(3),
        )
        .unwrap();
        assert_eq!(secret.as_deref(), Some("hunter2"));
        assert_eq!(config.get_application_name(), Some("switchyard"));
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(3)));
        assert_eq!(config.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        assert_eq!(config.get_options(), Some("-c statement_timeout=60000"));
        let error = std::io::Error::other("login as user:hunter2 failed");
        assert_eq!(
            describe(secret.as_deref(), &error),
            "login as user:*** failed"
        );
        // The URL's own settings stand.
        let (config, _) = connection_config(
            "postgres://u@h/db?options=-c%20search_path%3Dx&tcp_user_timeout=5",
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(
            config.get_options(),
            Some("-c search_path=x -c statement_timeout=60000")
        );
        assert_eq!(config.get_tcp_user_timeout(), Some(&Duration::from_secs(5)));
        let (config, _) = connection_config(
            "postgres://u@h/db?options=-c%20statement_timeout%3D5s",
            Duration::ZERO,
        )
        .unwrap();
        assert_eq!(config.get_options(), Some("-c statement_timeout=5s"));
        for given in [
            "-c statement_timeout=5s",
            "-cstatement_timeout=5s",
            "--statement-timeout=5s",
        ] {
            assert!(sets(given, "statement_timeout"), "{given}");
        }
        assert!(!sets(
            "-csearch_path=statement_timeout",
            "statement_timeout"
        ));
        let invalid = connection_config("postgres://user:hunter2@host:notaport/db", Duration::ZERO)
            .unwrap_err();
        assert!(invalid.starts_with("invalid postgres_url"), "{invalid}");
        assert!(!invalid.contains("hunter2"), "{invalid}");
    }
}
