//! The systems a run can load: kaskade (started here or already running) and Janus.
//! One enum so the run's phases do not care which it is.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::janus::{Janus, JanusProcess, JanusSpec};
use super::kaskade::{room_id, Kaskade};
use super::router::RouterProcess;
use super::session::{Joins, Publisher, Role};

/// What to run against.
#[derive(Debug, Clone)]
pub enum TargetSpec {
    /// Start `bin` with `workers` media workers.
    KaskadeSpawn {
        /// The router binary.
        bin: PathBuf,
        /// Media workers.
        workers: u32,
    },
    /// A router that is already running.
    KaskadeExisting {
        /// Its control API.
        control: SocketAddr,
        /// Its process id (for CPU figures).
        pid: Option<u32>,
        /// Its metrics address (for the forwarded-packet counter).
        metrics: Option<SocketAddr>,
    },
    /// Start Janus.
    Janus(JanusSpec),
}

impl TargetSpec {
    /// A short label for tables.
    pub fn label(&self) -> String {
        match self {
            TargetSpec::KaskadeSpawn { workers, .. } => format!("kaskade w{workers}"),
            TargetSpec::KaskadeExisting { control, .. } => format!("kaskade @{control}"),
            TargetSpec::Janus(_) => "janus".into(),
        }
    }
}

/// A started target: how to reach it and what keeps it alive.
pub struct Started {
    /// The control side.
    pub target: Target,
    /// Process id, for CPU figures.
    pub pid: Option<u32>,
    /// Prometheus address (kaskade).
    pub metrics: Option<SocketAddr>,
    /// What this run started (a router or Janus process): stopped when dropped.
    _guard: Option<Box<dyn std::any::Any>>,
}

impl Started {
    /// Starts (or connects to) the target; logs go to `log_dir`.
    pub async fn start(
        spec: &TargetSpec,
        log_dir: &Path,
        file_tag: &str,
        tag: &str,
    ) -> Result<Started, String> {
        match spec {
            TargetSpec::KaskadeSpawn { bin, workers } => {
                let log = log_dir.join(format!("{file_tag}.log"));
                let p = RouterProcess::start(bin, *workers, &log)?;
                let k = Kaskade::connect(p.ready.control).await?;
                Ok(Started {
                    target: Target::Kaskade(Box::new(k), tag.into()),
                    pid: Some(p.pid()),
                    metrics: p.ready.metrics,
                    _guard: Some(Box::new(p)),
                })
            }
            TargetSpec::KaskadeExisting {
                control,
                pid,
                metrics,
            } => Ok(Started {
                target: Target::Kaskade(Box::new(Kaskade::connect(*control).await?), tag.into()),
                pid: *pid,
                metrics: *metrics,
                _guard: None,
            }),
            TargetSpec::Janus(j) => {
                let p = JanusProcess::start(j, log_dir, file_tag).await?;
                let janus = Janus::new(p.http, tag);
                Ok(Started {
                    target: Target::Janus(janus),
                    pid: Some(p.pid()),
                    metrics: None,
                    _guard: Some(Box::new(p)),
                })
            }
        }
    }
}

/// The control side of a target.
#[derive(Debug, Clone)]
pub enum Target {
    /// kaskade over gRPC, with the run's room-id tag.
    Kaskade(Box<Kaskade>, String),
    /// Janus VideoRoom over HTTP.
    Janus(Janus),
}

impl Target {
    /// Creates room `r`.
    pub async fn create_room(&self, r: u32, publishers: u32) -> Result<(), String> {
        match self {
            Target::Kaskade(k, tag) => k.create_room(&room_id(tag, r)).await,
            Target::Janus(j) => j.create_room(r, publishers).await,
        }
    }

    /// Publisher `index` of room `r` joins.
    pub async fn publish(
        &self,
        joins: &Arc<Joins>,
        r: u32,
        index: u32,
        role: Role,
    ) -> Result<Publisher, String> {
        match self {
            Target::Kaskade(k, tag) => k.publish(joins, r, &room_id(tag, r), index, role).await,
            Target::Janus(j) => j.publish(joins, r, index, role).await,
        }
    }

    /// Receive-only subscriber `index` of room `r` joins and subscribes to `pubs`.
    pub async fn subscriber(
        &self,
        joins: &Arc<Joins>,
        r: u32,
        index: u32,
        pubs: &[Publisher],
    ) -> Result<(), String> {
        match self {
            Target::Kaskade(k, tag) => {
                let tracks: Vec<_> = pubs.iter().flat_map(|p| p.tracks.clone()).collect();
                k.subscriber(joins, r, &room_id(tag, r), index, &tracks)
                    .await
            }
            Target::Janus(j) => j.subscriber(joins, r, index, pubs, Role::Subscriber).await,
        }
    }

    /// Meeting participant `me` subscribes to the other publishers of its room.
    pub async fn participant(
        &self,
        joins: &Arc<Joins>,
        me: &Publisher,
        r: u32,
        index: u32,
        others: &[Publisher],
    ) -> Result<(), String> {
        match self {
            Target::Kaskade(k, _) => {
                let tracks: Vec<_> = others.iter().flat_map(|p| p.tracks.clone()).collect();
                k.participant_subscribes(joins, me, r, index, &tracks).await
            }
            Target::Janus(j) => {
                j.subscriber(joins, r, index, others, Role::Participant)
                    .await
            }
        }
    }

    /// Removes what the run created on a shared target (best effort).
    pub async fn cleanup(&self, rooms: u32) {
        match self {
            Target::Kaskade(k, tag) => {
                for r in 0..rooms {
                    k.delete_room(&room_id(tag, r)).await;
                }
            }
            Target::Janus(j) => j.cleanup().await,
        }
    }
}
