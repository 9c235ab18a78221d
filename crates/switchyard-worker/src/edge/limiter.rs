//! The `RateLimiter` Durable Object: one instance per counter (`limit|value`), so every
//! charge to a counter, from any location of the edge, goes through one place. It runs the
//! core's algorithm ([`Counter::decide`]) on its state, which it keeps in memory and
//! persists after each admission (a refusal changes nothing), so that an evicted object
//! resumes where it left off.

use std::cell::{Cell, RefCell};

use worker::{Date, DurableObject, Env, Request, Response, Result, State, durable_object};

use crate::limits::{Ask, Counter};

/// The storage key of the counter.
const COUNTER: &str = "counter";

/// One rate-limit counter.
#[durable_object]
pub struct RateLimiter {
    /// Storage and identity.
    state: State,
    /// The counter, once loaded from storage.
    counter: RefCell<Option<Counter>>,
    /// Whether storage was read (a new object has nothing there).
    loaded: Cell<bool>,
}

impl DurableObject for RateLimiter {
    fn new(state: State, _env: Env) -> Self {
        RateLimiter {
            state,
            counter: RefCell::new(None),
            loaded: Cell::new(false),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let ask: Ask = req.json().await?;
        if !self.loaded.get() {
            // Storage reads hold the object's input gate: no other charge interleaves.
            // Stored as JSON text: nanosecond times exceed JavaScript's safe integers.
            let saved: Option<String> = self.state.storage().get(COUNTER).await.unwrap_or(None);
            *self.counter.borrow_mut() =
                saved.and_then(|text| serde_json::from_str::<Counter>(&text).ok());
            self.loaded.set(true);
        }
        let now = Date::now().as_millis().saturating_mul(1_000_000);
        let (decision, snapshot) = {
            let mut counter = self.counter.borrow_mut();
            let decision = Counter::decide(&mut counter, &ask, now);
            (decision, counter.clone())
        };
        if decision.admitted
            && let Some(snapshot) = snapshot
        {
            let text = serde_json::to_string(&snapshot)
                .map_err(|error| worker::Error::RustError(error.to_string()))?;
            self.state.storage().put(COUNTER, text).await?;
        }
        Response::from_json(&decision)
    }
}
