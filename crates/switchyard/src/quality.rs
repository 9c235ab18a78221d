//! Quality feedback: `POST /v1/feedback {request_id, score}` rates an answer from 0 (bad) to
//! 1 (good). The gateway remembers each request it served for an hour (at most
//! [`REMEMBERED`] of them; this instance only), so a score is filed under the route the
//! client asked for, the tier that served it and the model that answered, and only the key
//! that made the request may rate it.
//!
//! Scores feed `switchyard_feedback_score` (a histogram by route, tier and model) and a
//! rolling mean of the last [`WINDOW`] scores per route and tier, which `GET /admin/quality`
//! shows and which moves a tiered route's traffic to its strongest tier while the cheap
//! tier's mean is below the route's `min_quality` (once it has [`MIN_SCORES`] scores).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::Serialize;

/// Requests remembered for feedback.
pub const REMEMBERED: u64 = 20_000;

/// How long a request can be rated.
pub const RATE_WITHIN: Duration = Duration::from_secs(3_600);

/// Scores in a rolling mean.
pub const WINDOW: usize = 200;

/// Scores a tier needs before its mean moves traffic.
pub const MIN_SCORES: usize = 20;

/// Routes and tiers kept apart, at most. Tiered routes come from the config; untiered names
/// can be the client's (`provider/<anything>`): past this many, a new untiered one's scores
/// are filed under route and model `other`.
pub const MAX_ROUTES: usize = 1_000;

/// The route and model an untiered score is filed under past [`MAX_ROUTES`].
const OVERFLOW: &str = "other";

/// What feedback needs to know about a served request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The principal that made it.
    pub principal: String,
    /// The route the client asked for.
    pub route: String,
    /// The tier's route, when the route has tiers.
    pub tier: Option<String>,
    /// The model that answered.
    pub model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScoreLabels {
    route: String,
    tier: String,
    model: String,
}

/// A rolling mean of the last scores.
#[derive(Debug, Default)]
struct Rolling {
    scores: VecDeque<f64>,
    sum: f64,
    total: u64,
}

impl Rolling {
    fn push(&mut self, score: f64) {
        if self.scores.len() == WINDOW
            && let Some(old) = self.scores.pop_front()
        {
            self.sum -= old;
        }
        self.scores.push_back(score);
        self.sum += score;
        self.total += 1;
    }

    fn mean(&self) -> Option<f64> {
        (!self.scores.is_empty()).then(|| self.sum / self.scores.len() as f64)
    }
}

/// One route and tier's feedback, for `GET /admin/quality`.
#[derive(Debug, Serialize)]
pub struct QualityView {
    /// The route asked for.
    pub route: String,
    /// The tier that served (`null` for an untiered route).
    pub tier: Option<String>,
    /// Scores ever received (this instance).
    pub scores: u64,
    /// Mean of the last scores (up to 200).
    pub mean: Option<f64>,
}

/// Why feedback was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Not a request this instance served in the last hour for this key.
    Unknown,
}

/// The feedback series.
#[derive(Debug, Clone)]
pub struct QualityMetrics {
    histogram: Family<ScoreLabels, Histogram, fn() -> Histogram>,
}

fn score_histogram() -> Histogram {
    Histogram::new([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])
}

impl QualityMetrics {
    /// Registers the score histogram.
    pub fn register(registry: &mut Registry) -> Self {
        let histogram = Family::<ScoreLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            score_histogram,
        );
        registry.register(
            "switchyard_feedback_score",
            "Quality feedback scores (0 to 1) by route asked for, tier and model",
            histogram.clone(),
        );
        QualityMetrics { histogram }
    }
}

/// The feedback of one gateway.
pub struct Quality {
    served: moka::sync::Cache<String, Arc<Served>>,
    rolling: Mutex<HashMap<(String, Option<String>), Rolling>>,
    histogram: Family<ScoreLabels, Histogram, fn() -> Histogram>,
}

impl Quality {
    /// Feedback counted in `metrics`.
    pub fn new(metrics: QualityMetrics) -> Self {
        let histogram = metrics.histogram;
        Quality {
            served: moka::sync::Cache::builder()
                .max_capacity(REMEMBERED)
                .time_to_live(RATE_WITHIN)
                .build(),
            rolling: Mutex::new(HashMap::new()),
            histogram,
        }
    }

    /// Remembers a served request under its id.
    pub fn remember(&self, request_id: &str, served: Served) {
        self.served.insert(request_id.to_owned(), Arc::new(served));
    }

    /// Files `score` for `request_id`, made by `principal`.
    pub fn rate(
        &self,
        principal: &str,
        request_id: &str,
        score: f64,
    ) -> Result<Arc<Served>, Refused> {
        let served = self.lookup(principal, request_id)?;
        self.record(&served, score);
        Ok(served)
    }

    /// The request `principal` made under `request_id`, if it can be rated.
    pub fn lookup(&self, principal: &str, request_id: &str) -> Result<Arc<Served>, Refused> {
        self.served
            .get(request_id)
            .filter(|served| served.principal == principal)
            .ok_or(Refused::Unknown)
    }

    /// Counts `score` for `served` (metrics and rolling means).
    pub fn record(&self, served: &Served, score: f64) {
        let mut rolling = self
            .rolling
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (served.route.clone(), served.tier.clone());
        let folded =
            served.tier.is_none() && rolling.len() >= MAX_ROUTES && !rolling.contains_key(&key);
        let (key, model) = if folded {
            ((OVERFLOW.to_owned(), None), OVERFLOW.to_owned())
        } else {
            (key, served.model.clone())
        };
        self.histogram
            .get_or_create(&ScoreLabels {
                route: key.0.clone(),
                tier: key.1.clone().unwrap_or_default(),
                model,
            })
            .observe(score);
        rolling.entry(key).or_default().push(score);
    }

    /// The mean of `tier`'s recent scores under `route`, once it has enough of them.
    pub fn mean(&self, route: &str, tier: &str) -> Option<f64> {
        let rolling = self
            .rolling
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        rolling
            .get(&(route.to_owned(), Some(tier.to_owned())))
            .filter(|rolling| rolling.scores.len() >= MIN_SCORES)
            .and_then(Rolling::mean)
    }

    /// Every route and tier with feedback.
    pub fn snapshot(&self) -> Vec<QualityView> {
        let rolling = self
            .rolling
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut views: Vec<QualityView> = rolling
            .iter()
            .map(|((route, tier), rolling)| QualityView {
                route: route.clone(),
                tier: tier.clone(),
                scores: rolling.total,
                mean: rolling.mean(),
            })
            .collect();
        views.sort_by(|a, b| (&a.route, &a.tier).cmp(&(&b.route, &b.tier)));
        views
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(tier: &str) -> Served {
        Served {
            principal: "key_a".to_owned(),
            route: "assistant".to_owned(),
            tier: Some(tier.to_owned()),
            model: "small".to_owned(),
        }
    }

    #[test]
    fn scores_are_filed_by_route_and_tier_for_the_key_that_asked() {
        let quality = Quality::new(QualityMetrics::register(&mut Registry::default()));
        quality.remember("req-1", served("cheap"));
        assert_eq!(quality.rate("key_b", "req-1", 1.0), Err(Refused::Unknown));
        assert_eq!(quality.rate("key_a", "req-2", 1.0), Err(Refused::Unknown));
        assert!(quality.rate("key_a", "req-1", 0.25).is_ok());
        assert_eq!(
            quality.mean("assistant", "cheap"),
            None,
            "too few to act on"
        );
        for i in 0..MIN_SCORES {
            let id = format!("r{i}");
            quality.remember(&id, served("cheap"));
            quality.rate("key_a", &id, 0.5).unwrap();
        }
        let mean = quality.mean("assistant", "cheap").unwrap();
        assert!((mean - (0.25 + 0.5 * MIN_SCORES as f64) / (MIN_SCORES + 1) as f64).abs() < 1e-9);
        let views = quality.snapshot();
        assert_eq!(views.len(), 1);
        assert_eq!(views[0].scores, MIN_SCORES as u64 + 1);
    }

    #[test]
    fn client_chosen_names_past_the_cap_share_one_entry_and_tiers_are_kept() {
        let quality = Quality::new(QualityMetrics::register(&mut Registry::default()));
        for i in 0..MAX_ROUTES + 5 {
            let route = format!("p/model-{i}");
            quality.record(
                &Served {
                    principal: "key_a".to_owned(),
                    route: route.clone(),
                    tier: None,
                    model: route,
                },
                1.0,
            );
        }
        for _ in 0..MIN_SCORES {
            quality.record(&served("cheap"), 0.5);
        }
        let views = quality.snapshot();
        assert_eq!(
            views.len(),
            MAX_ROUTES + 2,
            "the names, `other` and the tier"
        );
        let other = views.iter().find(|v| v.route == OVERFLOW).unwrap();
        assert_eq!(other.scores, 5);
        assert_eq!(quality.mean("assistant", "cheap"), Some(0.5));
    }

    #[test]
    fn the_mean_rolls_over_the_last_window() {
        let mut rolling = Rolling::default();
        for _ in 0..WINDOW {
            rolling.push(0.0);
        }
        for _ in 0..WINDOW {
            rolling.push(1.0);
        }
        assert!((rolling.mean().unwrap() - 1.0).abs() < 1e-9);
        assert_eq!(rolling.total, 2 * WINDOW as u64);
    }
}
