//! The parts of Telegram's update types the bot reads (serde ignores the rest).

use serde::Deserialize;

/// An incoming update.
#[derive(Debug, Clone, Deserialize)]
pub struct Update {
    /// Increasing id; Telegram may deliver an update more than once.
    pub update_id: i64,
    /// A new message, when the update is one.
    pub message: Option<Message>,
}

/// A message.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// Its id in its chat.
    pub message_id: i64,
    /// The sender (absent for channel posts).
    pub from: Option<User>,
    /// Where it was sent.
    pub chat: Chat,
    /// Its text, when it is a text message.
    pub text: Option<String>,
    /// Mentions, commands and formatting in `text` (offsets in UTF-16 code units).
    #[serde(default)]
    pub entities: Vec<MessageEntity>,
    /// The message it answers.
    pub reply_to_message: Option<Box<Message>>,
}

/// A user or bot.
#[derive(Debug, Clone, Deserialize)]
pub struct User {
    /// Its id.
    pub id: i64,
    /// Whether it is a bot.
    #[serde(default)]
    pub is_bot: bool,
    /// Its first name.
    #[serde(default)]
    pub first_name: String,
    /// Its username, without `@`.
    pub username: Option<String>,
}

/// A chat.
#[derive(Debug, Clone, Deserialize)]
pub struct Chat {
    /// Its id (negative for groups).
    pub id: i64,
    /// `private`, `group`, `supergroup` or `channel`.
    #[serde(rename = "type")]
    pub kind: String,
}

impl Chat {
    /// A one-to-one chat with the bot.
    pub fn is_private(&self) -> bool {
        self.kind == "private"
    }
}

/// A special part of a message's text.
#[derive(Debug, Clone, Deserialize)]
pub struct MessageEntity {
    /// `mention`, `bot_command`, `bold`...
    #[serde(rename = "type")]
    pub kind: String,
    /// Start, in UTF-16 code units.
    pub offset: usize,
    /// Length, in UTF-16 code units.
    pub length: usize,
}
