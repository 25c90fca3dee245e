//! The `kaskade-loadtest` tool: scenarios, the multi-client driver, targets
//! (kaskade, Janus), measurement and reports.

pub(crate) mod cascade;
pub(crate) mod churn;
pub(crate) mod cli;
pub(crate) mod driver;
pub(crate) mod html;
pub(crate) mod http;
pub(crate) mod impair;
pub(crate) mod janus;
pub(crate) mod kaskade;
pub(crate) mod limits;
pub(crate) mod linkproxy;
pub(crate) mod measure;
pub(crate) mod output;
pub(crate) mod procfs;
pub(crate) mod progress;
pub(crate) mod prom;
pub(crate) mod report;
pub(crate) mod router;
pub(crate) mod run;
pub(crate) mod sampler;
pub(crate) mod scenario;
pub(crate) mod session;
pub(crate) mod soak;
pub(crate) mod svg;
pub(crate) mod target;
pub(crate) mod thresholds;
pub(crate) mod trend;
pub(crate) mod units;
