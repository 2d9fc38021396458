//! Organization plans and the API rate limits of each (spec: Rate Limiting).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Plan {
    Free,
    Starter,
    Growth,
    Enterprise,
}

/// A GCRA quota: `burst` requests at once, `per_minute` sustained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateQuota {
    pub burst: u32,
    pub per_minute: u32,
}

impl Plan {
    pub const ALL: [Plan; 4] = [Plan::Free, Plan::Starter, Plan::Growth, Plan::Enterprise];

    pub fn as_str(self) -> &'static str {
        match self {
            Plan::Free => "free",
            Plan::Starter => "starter",
            Plan::Growth => "growth",
            Plan::Enterprise => "enterprise",
        }
    }

    /// Unknown names fall back to the most restrictive plan.
    pub fn parse(s: &str) -> Plan {
        Plan::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .unwrap_or(Plan::Free)
    }

    pub fn rate_quota(self) -> RateQuota {
        match self {
            Plan::Free => RateQuota {
                burst: 20,
                per_minute: 100,
            },
            Plan::Starter => RateQuota {
                burst: 50,
                per_minute: 1_000,
            },
            Plan::Growth => RateQuota {
                burst: 100,
                per_minute: 5_000,
            },
            Plan::Enterprise => RateQuota {
                burst: 500,
                per_minute: 50_000,
            },
        }
    }

    /// (nodes, total memory bytes, total volume bytes) an organization may have.
    pub fn resource_limits(self) -> (u32, u64, u64) {
        const G: u64 = 1 << 30;
        match self {
            Plan::Free => (1, 2 * G, 10 * G),
            Plan::Starter => (5, 64 * G, 500 * G),
            Plan::Growth => (10, 1024 * G, 10 * 1024 * G),
            Plan::Enterprise => (1000, 64 * 1024 * G, 1024 * 1024 * G),
        }
    }

    /// How many apps an organization on this plan may have.
    pub fn apps_limit(self) -> u32 {
        match self {
            Plan::Free => 3,
            Plan::Starter => 20,
            Plan::Growth => 100,
            Plan::Enterprise => 10_000,
        }
    }
}
