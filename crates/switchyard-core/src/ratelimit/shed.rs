//! Load shedding under global overload: a cap on requests in flight, with priority classes.
//!
//! Each class may fill the gateway only up to its share of `max_in_flight`, so as load grows
//! low-priority requests are refused first, then normal ones, and the last tenth is kept for
//! high priority. A shed request gets a fast 503 instead of a slot in an ever longer queue.

use std::fmt;
use std::str::FromStr;

/// A key's priority class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Priority {
    /// Shed first (batch jobs, background work).
    Low,
    /// The default.
    #[default]
    Normal,
    /// Shed last.
    High,
}

impl Priority {
    /// Every class, lowest first.
    pub const ALL: [Priority; 3] = [Priority::Low, Priority::Normal, Priority::High];

    /// The config and label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }

    /// Percent of `max_in_flight` this class may fill.
    pub fn share_percent(self) -> u64 {
        match self {
            Priority::Low => 70,
            Priority::Normal => 90,
            Priority::High => 100,
        }
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "low" => Ok(Priority::Low),
            "normal" => Ok(Priority::Normal),
            "high" => Ok(Priority::High),
            other => Err(format!(
                "unknown priority `{other}` (expected low, normal or high)"
            )),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Most requests in flight a class may see when it is admitted (at least 1).
pub fn threshold(max_in_flight: u64, priority: Priority) -> u64 {
    (max_in_flight.saturating_mul(priority.share_percent()) / 100).max(1)
}

/// Whether a request of `priority` is admitted with `in_flight` requests already running.
pub fn admits(max_in_flight: u64, priority: Priority, in_flight: u64) -> bool {
    in_flight < threshold(max_in_flight, priority)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_priority_is_shed_first() {
        // 100 slots: low up to 70 in flight, normal up to 90, high up to 100.
        assert!(admits(100, Priority::Low, 69));
        assert!(!admits(100, Priority::Low, 70));
        assert!(admits(100, Priority::Normal, 70));
        assert!(admits(100, Priority::Normal, 89));
        assert!(!admits(100, Priority::Normal, 90));
        assert!(admits(100, Priority::High, 99));
        assert!(!admits(100, Priority::High, 100));
        // Every level of load sheds a lower class no later than a higher one.
        for in_flight in 0..200 {
            for pair in Priority::ALL.windows(2) {
                if admits(100, pair[0], in_flight) {
                    assert!(admits(100, pair[1], in_flight));
                }
            }
        }
    }

    #[test]
    fn a_tiny_cap_still_admits_one() {
        assert!(admits(1, Priority::Low, 0));
        assert!(!admits(1, Priority::High, 1));
        assert_eq!("low".parse::<Priority>(), Ok(Priority::Low));
        assert!("urgent".parse::<Priority>().is_err());
    }
}
