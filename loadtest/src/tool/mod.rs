//! The `kaskade-loadtest` tool: scenarios, the multi-client driver, targets
//! (kaskade, Janus), measurement and reports.

pub mod cascade;
pub mod churn;
pub mod cli;
pub mod driver;
pub mod html;
pub mod http;
pub mod impair;
pub mod janus;
pub mod kaskade;
pub mod limits;
pub mod linkproxy;
pub mod measure;
pub mod output;
pub mod procfs;
pub mod progress;
pub mod prom;
pub mod report;
pub mod router;
pub mod run;
pub mod sampler;
pub mod scenario;
pub mod session;
pub mod soak;
pub mod svg;
pub mod target;
pub mod thresholds;
pub mod trend;
pub mod units;
