//! # ratewall-core
//!
//! The sans-I/O rate limiting engine shared by the gateway plugin, the check service and the Envoy
//! filter: configuration ([`config`]), five algorithms as pure state transitions ([`algorithm`]),
//! the all-or-nothing multi-dimension [`decision`], the one header renderer ([`headers`]),
//! injective storage keys ([`key`]), an injected [`clock`], stores ([`store`]) and the one log
//! [`throttle`] for per-request failure lines.
//!
//! ```
//! use std::sync::Arc;
//! use ratewall_core::{clock::ManualClock, config::{LimiterConfig, RequestContext}, headers, store::Store};
//! use ratewall_core::store::memory::MemoryStore;
//!
//! let (cfg, _) = LimiterConfig::from_json_str(r#"{"by_user": "2/s", "by_tool": {"Echo": "5/m"}}"#, &[]).unwrap();
//! let clock = Arc::new(ManualClock::new(1_700_000_000_000_000_000));
//! let store = MemoryStore::new(cfg.memory_max_keys, clock.clone());
//! let ctx = RequestContext { user: Some("alice"), tool: Some("echo"), ..Default::default() };
//! let plan = cfg.policy.plan(&ctx).unwrap();
//! assert!(store.check(&plan).unwrap().allowed);
//! assert!(store.check(&plan).unwrap().allowed);
//! let third = store.check(&plan).unwrap();
//! assert!(!third.allowed);
//! assert_eq!(third.retry_after_secs, Some(1));
//! let h = headers::render(&third, cfg.headers);
//! assert_eq!(h[0], ("X-RateLimit-Limit", "2".to_string()));
//! ```

pub mod algorithm;
pub mod clock;
pub mod config;
pub mod decision;
pub mod headers;
pub mod key;
pub mod store;
pub mod throttle;

pub use algorithm::Algorithm;
pub use config::{normalize_name, ConfigError, LimiterConfig};
pub use decision::{Decision, DenyReason};
