//! `telegram.db`: the bot's own state in SQLite, in the data directory (or in memory): each
//! chat's conversation memory and chosen model, and each user's usage per UTC day (for
//! `/usage` and the per-user daily budget). Every call blocks; [`Memory`] runs them on the
//! blocking pool.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::{Connection, OptionalExtension, params};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS telegram_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    tokens INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS telegram_messages_chat ON telegram_messages (chat_id, seq);
CREATE TABLE IF NOT EXISTS telegram_chats (
    chat_id INTEGER PRIMARY KEY,
    model TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS telegram_usage (
    user_id INTEGER NOT NULL,
    day INTEGER NOT NULL,
    requests INTEGER NOT NULL,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    PRIMARY KEY (user_id, day)
);
";

/// One remembered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// `user` or `assistant`.
    pub role: String,
    /// Its text.
    pub content: String,
}

/// A user's usage over some days.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Answered requests.
    pub requests: u64,
    /// Input tokens.
    pub tokens_in: u64,
    /// Output tokens.
    pub tokens_out: u64,
    /// Cost in USD (requests whose price is unknown count as zero).
    pub cost_usd: f64,
}

/// The estimate of a text's tokens used to trim the memory: about four characters a token,
/// plus a few for the message's framing.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4) + 4
}

/// The bot's store. Cheap to clone.
#[derive(Clone)]
pub struct Memory {
    /// One connection: calls are a few per message. A std mutex, as calls run on the
    /// blocking pool.
    connection: Arc<Mutex<Connection>>,
}

fn store_error(what: &'static str) -> impl Fn(rusqlite::Error) -> String {
    move |error| format!("telegram.db: {what}: {error}")
}

impl Memory {
    /// Opens (creating it if needed) `telegram.db` in `data_dir`, or an in-memory store.
    pub fn open(data_dir: Option<&Path>) -> Result<Self, String> {
        let connection = match data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|error| format!("cannot create {}: {error}", dir.display()))?;
                Connection::open(dir.join("telegram.db"))
            }
            None => Connection::open_in_memory(),
        }
        .map_err(store_error("opening"))?;
        connection
            .execute_batch("PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 5000;")
            .map_err(store_error("configuring"))?;
        connection
            .execute_batch(SCHEMA)
            .map_err(store_error("creating the tables"))?;
        Ok(Memory {
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let connection = Arc::clone(&self.connection);
        tokio::task::spawn_blocking(move || {
            // A panic mid-call leaves at worst an open transaction, rolled back when dropped.
            let mut connection = connection.lock().unwrap_or_else(PoisonError::into_inner);
            work(&mut connection)
        })
        .await
        .map_err(|error| format!("telegram.db: the blocking task failed: {error}"))?
    }

    /// The chat's newest turns that fit in `budget` tokens, oldest first; older turns are
    /// forgotten for good.
    pub async fn history(&self, chat: i64, budget: u64) -> Result<Vec<Turn>, String> {
        self.run(move |connection| {
            let transaction = connection
                .transaction()
                .map_err(store_error("starting a transaction"))?;
            let mut kept = Vec::new();
            let mut oldest_kept = None;
            {
                let mut statement = transaction
                    .prepare(
                        "SELECT seq, role, content, tokens FROM telegram_messages \
                         WHERE chat_id = ?1 ORDER BY seq DESC",
                    )
                    .map_err(store_error("reading the memory"))?;
                let mut rows = statement
                    .query(params![chat])
                    .map_err(store_error("reading the memory"))?;
                let mut used = 0u64;
                while let Some(row) = rows.next().map_err(store_error("reading the memory"))? {
                    let tokens: i64 = row.get(3).map_err(store_error("reading the memory"))?;
                    used = used.saturating_add(u64::try_from(tokens).unwrap_or(0));
                    if used > budget {
                        break;
                    }
                    oldest_kept = Some(row.get::<_, i64>(0).map_err(store_error("reading"))?);
                    kept.push(Turn {
                        role: row.get(1).map_err(store_error("reading the memory"))?,
                        content: row.get(2).map_err(store_error("reading the memory"))?,
                    });
                }
            }
            // An answer without its question would confuse the model: start with a user turn.
            while kept.last().is_some_and(|turn| turn.role != "user") {
                kept.pop();
            }
            let forget_before = if kept.is_empty() {
                i64::MAX
            } else {
                oldest_kept.unwrap_or(i64::MAX)
            };
            transaction
                .execute(
                    "DELETE FROM telegram_messages WHERE chat_id = ?1 AND seq < ?2",
                    params![chat, forget_before],
                )
                .map_err(store_error("trimming the memory"))?;
            transaction
                .commit()
                .map_err(store_error("trimming the memory"))?;
            kept.reverse();
            Ok(kept)
        })
        .await
    }

    /// Remembers a question and its answer.
    pub async fn remember(
        &self,
        chat: i64,
        question: String,
        answer: String,
    ) -> Result<(), String> {
        self.run(move |connection| {
            let transaction = connection
                .transaction()
                .map_err(store_error("starting a transaction"))?;
            for (role, content) in [("user", question), ("assistant", answer)] {
                let tokens = i64::try_from(estimate_tokens(&content)).unwrap_or(i64::MAX);
                transaction
                    .execute(
                        "INSERT INTO telegram_messages (chat_id, role, content, tokens) \
                         VALUES (?1, ?2, ?3, ?4)",
                        params![chat, role, content, tokens],
                    )
                    .map_err(store_error("remembering a message"))?;
            }
            transaction
                .commit()
                .map_err(store_error("remembering a message"))
        })
        .await
    }

    /// Forgets the chat's conversation.
    pub async fn reset(&self, chat: i64) -> Result<(), String> {
        self.run(move |connection| {
            connection
                .execute(
                    "DELETE FROM telegram_messages WHERE chat_id = ?1",
                    params![chat],
                )
                .map(|_| ())
                .map_err(store_error("forgetting the conversation"))
        })
        .await
    }

    /// The model the chat chose, if it chose one.
    pub async fn model(&self, chat: i64) -> Result<Option<String>, String> {
        self.run(move |connection| {
            connection
                .query_row(
                    "SELECT model FROM telegram_chats WHERE chat_id = ?1",
                    params![chat],
                    |row| row.get(0),
                )
                .optional()
                .map_err(store_error("reading the chat's model"))
        })
        .await
    }

    /// Sets the chat's model.
    pub async fn set_model(&self, chat: i64, model: String) -> Result<(), String> {
        self.run(move |connection| {
            connection
                .execute(
                    "INSERT INTO telegram_chats (chat_id, model) VALUES (?1, ?2) \
                     ON CONFLICT (chat_id) DO UPDATE SET model = excluded.model",
                    params![chat, model],
                )
                .map(|_| ())
                .map_err(store_error("setting the chat's model"))
        })
        .await
    }

    /// Adds one answered request to the user's usage on `day` (days since the epoch, UTC).
    pub async fn add_usage(&self, user: i64, day: i64, usage: Usage) -> Result<(), String> {
        self.run(move |connection| {
            connection
                .execute(
                    "INSERT INTO telegram_usage VALUES (?1, ?2, 1, ?3, ?4, ?5) \
                     ON CONFLICT (user_id, day) DO UPDATE SET requests = requests + 1, \
                     tokens_in = tokens_in + excluded.tokens_in, \
                     tokens_out = tokens_out + excluded.tokens_out, \
                     cost_usd = cost_usd + excluded.cost_usd",
                    params![
                        user,
                        day,
                        i64::try_from(usage.tokens_in).unwrap_or(i64::MAX),
                        i64::try_from(usage.tokens_out).unwrap_or(i64::MAX),
                        usage.cost_usd
                    ],
                )
                .map(|_| ())
                .map_err(store_error("recording usage"))
        })
        .await
    }

    /// The user's usage from `since_day` on.
    pub async fn usage(&self, user: i64, since_day: i64) -> Result<Usage, String> {
        self.run(move |connection| {
            connection
                .query_row(
                    "SELECT COALESCE(SUM(requests), 0), COALESCE(SUM(tokens_in), 0), \
                     COALESCE(SUM(tokens_out), 0), COALESCE(SUM(cost_usd), 0.0) \
                     FROM telegram_usage WHERE user_id = ?1 AND day >= ?2",
                    params![user, since_day],
                    |row| {
                        Ok(Usage {
                            requests: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                            tokens_in: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                            tokens_out: u64::try_from(row.get::<_, i64>(2)?).unwrap_or(0),
                            cost_usd: row.get(3)?,
                        })
                    },
                )
                .map_err(store_error("reading usage"))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_is_trimmed_to_the_budget_and_persists() {
        let dir = tempfile::tempdir().unwrap();
        let memory = Memory::open(Some(dir.path())).unwrap();
        for n in 0..10 {
            memory
                .remember(
                    7,
                    format!("question {n} {}", "x".repeat(40)),
                    format!("answer {n}"),
                )
                .await
                .unwrap();
        }
        memory
            .remember(8, "other chat".into(), "yes".into())
            .await
            .unwrap();
        let all = memory.history(7, 10_000).await.unwrap();
        assert_eq!(all.len(), 20);
        let recent = memory.history(7, 60).await.unwrap();
        assert!(!recent.is_empty() && recent.len() < 20);
        assert_eq!(recent[0].role, "user", "starts with a question");
        assert_eq!(recent.last().unwrap().content, "answer 9");
        drop(memory);
        let reopened = Memory::open(Some(dir.path())).unwrap();
        assert_eq!(
            reopened.history(7, 10_000).await.unwrap(),
            recent,
            "older turns were forgotten for good; the rest persisted"
        );
        reopened.reset(7).await.unwrap();
        assert!(reopened.history(7, 10_000).await.unwrap().is_empty());
        assert_eq!(reopened.history(8, 10_000).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn models_and_usage() {
        let memory = Memory::open(None).unwrap();
        assert_eq!(memory.model(1).await.unwrap(), None);
        memory.set_model(1, "fast".into()).await.unwrap();
        memory.set_model(1, "smart".into()).await.unwrap();
        assert_eq!(memory.model(1).await.unwrap().as_deref(), Some("smart"));
        let one = Usage {
            requests: 1,
            tokens_in: 10,
            tokens_out: 5,
            cost_usd: 0.25,
        };
        memory.add_usage(1, 100, one).await.unwrap();
        memory.add_usage(1, 101, one).await.unwrap();
        memory.add_usage(1, 101, one).await.unwrap();
        let today = memory.usage(1, 101).await.unwrap();
        assert_eq!(today.requests, 2);
        assert_eq!(today.tokens_in, 20);
        assert!((today.cost_usd - 0.5).abs() < 1e-9);
        assert_eq!(memory.usage(1, 0).await.unwrap().requests, 3);
        assert_eq!(memory.usage(2, 0).await.unwrap(), Usage::default());
    }
}
