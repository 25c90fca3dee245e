//! The systems a run can load: kaskade (started here or already running) and Janus.
//! One enum so the run's phases do not care which it is.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::cascade::{node_id, CascadeProcesses, CascadeTarget};
use super::http::HttpApi;
use super::janus::{Janus, JanusProcess, JanusSpec};
use super::kaskade::{room_id, Kaskade};
use super::limits::{raises, Needs};
use super::prom;
use super::router::{bin_version, RouterProcess};
use super::scenario::{Scenario, Transport};
use super::session::{Joins, Publisher, Role};

/// What to run against.
#[derive(Debug, Clone)]
pub(crate) enum TargetSpec {
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
    /// Start a cascade of kaskade routers (the scenario's `cascade`).
    KaskadeCascade {
        /// The router binary.
        bin: PathBuf,
        /// Media workers of each router.
        workers: u32,
    },
}

impl TargetSpec {
    /// A short label for tables.
    pub(crate) fn label(&self) -> String {
        match self {
            TargetSpec::KaskadeSpawn { workers, .. } => format!("kaskade w{workers}"),
            TargetSpec::KaskadeExisting { control, .. } => format!("kaskade @{control}"),
            TargetSpec::Janus(_) => "janus".into(),
            TargetSpec::KaskadeCascade { workers, .. } => format!("kaskade cascade w{workers}"),
        }
    }
}

/// Which build the target is (for the report).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct TargetInfo {
    /// Version, e.g. `0.1.0` (kaskade) or `1.1.2` (Janus).
    pub version: Option<String>,
    /// Commit the router was built from.
    pub commit: Option<String>,
    /// Where the two came from.
    pub source: String,
}

/// One router of the target, for per-router figures.
#[derive(Debug, Clone)]
pub(crate) struct RouterRef {
    /// Node id (cascade) or the target label.
    pub name: String,
    /// Process id, for CPU and memory figures.
    pub pid: Option<u32>,
    /// Its metrics endpoint.
    pub metrics: Option<HttpApi>,
}

/// The short commit of the working tree the tool runs in, else of the source
/// tree it was built from (`git rev-parse`).
fn working_tree_commit() -> Option<String> {
    let at = |dir: &Path| -> Option<String> {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["rev-parse", "--short", "HEAD"])
            .output()
            .ok()?;
        let c = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !c.is_empty()).then_some(c)
    };
    at(Path::new(".")).or_else(|| at(Path::new(env!("CARGO_MANIFEST_DIR"))))
}

/// What a kaskade router says about its build: `kaskade_build_info` when it
/// exports it, else the binary's `--version` and the working tree's commit.
async fn kaskade_info(metrics: Option<&HttpApi>, bin: Option<&Path>) -> TargetInfo {
    if let Some(m) = metrics {
        if let Some((version, commit)) = prom::scrape(m)
            .await
            .ok()
            .and_then(|e| prom::build_info(&e))
        {
            return TargetInfo {
                version: Some(version),
                commit: Some(commit),
                source: "the router's kaskade_build_info metric".into(),
            };
        }
    }
    let version = bin.and_then(bin_version);
    let commit = working_tree_commit();
    TargetInfo {
        source: format!(
            "{}; commit of the working tree the tool ran in or was built from (this router \
             exports no kaskade_build_info)",
            if version.is_some() {
                "`kaskade --version`"
            } else {
                "version unknown"
            }
        ),
        version,
        commit,
    }
}

/// A started target: how to reach it and what keeps it alive.
pub(crate) struct Started {
    /// The control side.
    pub target: Target,
    /// Process id, for CPU figures (a cascade: the publishers' router).
    pub pid: Option<u32>,
    /// Every router of the target.
    pub routers: Vec<RouterRef>,
    /// Its build.
    pub info: TargetInfo,
    /// What the tool changed or found before the run (raised limits).
    pub notes: Vec<String>,
    /// What this run started (a router or Janus process): stopped when dropped.
    _guard: Option<Box<dyn std::any::Any>>,
}

impl Started {
    /// Starts (or connects to) the target for `scn`; logs go to `log_dir`. A
    /// router started here gets the limits the scenario needs raised.
    pub(crate) async fn start(
        spec: &TargetSpec,
        scn: &Scenario,
        log_dir: &Path,
        file_tag: &str,
        tag: &str,
    ) -> Result<Started, String> {
        let raised = raises(&Needs::of(scn), |k| std::env::var(k).ok());
        let env: Vec<(&str, String)> = raised.iter().map(|r| r.env()).collect();
        let notes: Vec<String> = raised.iter().map(|r| r.message()).collect();
        match spec {
            TargetSpec::KaskadeSpawn { bin, workers } => {
                let log = log_dir.join(format!("{file_tag}.log"));
                // ICE-TCP clients need the router's passive TCP candidate.
                let args: Vec<String> = match scn.transport {
                    Transport::Udp => vec![],
                    Transport::Tcp => vec!["--media-tcp-listen".into(), "127.0.0.1:0".into()],
                };
                let p = RouterProcess::start(bin, *workers, &log, &args, &env)?;
                let k = Kaskade::connect(p.ready.control).await?;
                let metrics = p.ready.metrics.map(HttpApi::new);
                let info = kaskade_info(metrics.as_ref(), Some(bin)).await;
                Ok(Started {
                    target: Target::Kaskade(Box::new(k), tag.into()),
                    pid: Some(p.pid()),
                    routers: vec![RouterRef {
                        name: spec.label(),
                        pid: Some(p.pid()),
                        metrics,
                    }],
                    info,
                    notes,
                    _guard: Some(Box::new(p)),
                })
            }
            TargetSpec::KaskadeExisting {
                control,
                pid,
                metrics,
            } => {
                let api = metrics.map(HttpApi::new);
                Ok(Started {
                    target: Target::Kaskade(
                        Box::new(Kaskade::connect(*control).await?),
                        tag.into(),
                    ),
                    pid: *pid,
                    info: kaskade_info(api.as_ref(), None).await,
                    routers: vec![RouterRef {
                        name: spec.label(),
                        pid: *pid,
                        metrics: api,
                    }],
                    notes: super::limits::unknown_router_warnings(&Needs::of(scn)),
                    _guard: None,
                })
            }
            TargetSpec::Janus(j) => {
                let p = JanusProcess::start(j, log_dir, file_tag).await?;
                let janus = Janus::new(p.http, tag);
                let info = TargetInfo {
                    version: bin_version(&j.bin),
                    commit: None,
                    source: "`janus --version`".into(),
                };
                Ok(Started {
                    target: Target::Janus(Box::new(janus)),
                    pid: Some(p.pid()),
                    routers: vec![RouterRef {
                        name: "janus".into(),
                        pid: Some(p.pid()),
                        metrics: None,
                    }],
                    info,
                    notes: vec![],
                    _guard: Some(Box::new(p)),
                })
            }
            TargetSpec::KaskadeCascade { bin, workers } => {
                let c = &scn.cascade;
                let procs = CascadeProcesses::start(
                    bin,
                    *workers,
                    c.edge_routers,
                    &c.link,
                    log_dir,
                    file_tag,
                    &env,
                )?;
                let controls: Vec<SocketAddr> =
                    procs.routers.iter().map(|r| r.ready.control).collect();
                let target = CascadeTarget::connect(&controls, tag).await?;
                let routers: Vec<RouterRef> = procs
                    .routers
                    .iter()
                    .enumerate()
                    .map(|(i, r)| RouterRef {
                        name: node_id(i),
                        pid: Some(r.pid()),
                        metrics: r.ready.metrics.map(HttpApi::new),
                    })
                    .collect();
                let info = kaskade_info(routers[0].metrics.as_ref(), Some(bin)).await;
                Ok(Started {
                    target: Target::Cascade(Arc::new(target)),
                    pid: Some(procs.routers[0].pid()),
                    routers,
                    info,
                    notes,
                    _guard: Some(Box::new(procs)),
                })
            }
        }
    }
}

/// The control side of a target.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// kaskade over gRPC, with the run's room-id tag.
    Kaskade(Box<Kaskade>, String),
    /// Janus VideoRoom over HTTP.
    Janus(Box<Janus>),
    /// Several kaskade routers, linked.
    Cascade(Arc<CascadeTarget>),
}

impl Target {
    /// Creates room `r`; returns its name and session limit on each router
    /// (empty when the target does not say).
    pub(crate) async fn create_room(
        &self,
        r: u32,
        publishers: u32,
    ) -> Result<Vec<(String, u32)>, String> {
        match self {
            Target::Kaskade(k, tag) => {
                let room = room_id(tag, r);
                Ok(vec![(room.clone(), k.create_room(&room).await?)])
            }
            Target::Janus(j) => j.create_room(r, publishers).await.map(|()| vec![]),
            Target::Cascade(c) => {
                let room = room_id(&c.tag, r);
                let limits = c.create_room(r).await?;
                Ok(limits
                    .into_iter()
                    .enumerate()
                    .map(|(i, l)| (format!("{room} on {}", node_id(i)), l))
                    .collect())
            }
        }
    }

    /// Publisher `index` of room `r` joins.
    pub(crate) async fn publish(
        &self,
        joins: &Arc<Joins>,
        r: u32,
        index: u32,
        role: Role,
    ) -> Result<Publisher, String> {
        match self {
            Target::Kaskade(k, tag) => k.publish(joins, r, &room_id(tag, r), index, role).await,
            Target::Janus(j) => j.publish(joins, r, index, role).await,
            Target::Cascade(c) => {
                c.routers[0]
                    .publish(joins, r, &room_id(&c.tag, r), index, role)
                    .await
            }
        }
    }

    /// Receive-only subscriber `index` of room `r` joins and subscribes to `pubs`.
    pub(crate) async fn subscriber(
        &self,
        joins: &Arc<Joins>,
        r: u32,
        index: u32,
        pubs: &[Publisher],
    ) -> Result<(), String> {
        match self {
            Target::Kaskade(k, tag) => {
                let tracks: Vec<_> = pubs.iter().flat_map(|p| p.tracks.clone()).collect();
                let name = format!("sub-{index}");
                k.subscriber(joins, r, &room_id(tag, r), index, 0, &name, &tracks)
                    .await
                    .1
                    .map(|_| ())
            }
            Target::Janus(j) => j.subscriber(joins, r, index, pubs, Role::Subscriber).await,
            Target::Cascade(c) => {
                let s = &joins.scenario;
                let k = s.cascade.router_of(index, s.subscribers) as usize;
                let tracks = match c.tracks_on(joins, k, r, pubs).await {
                    Ok(t) => t,
                    Err(e) => {
                        joins.note(e.clone());
                        return Err(e);
                    }
                };
                let name = format!("sub-{index}");
                c.routers[k]
                    .subscriber(
                        joins,
                        r,
                        &room_id(&c.tag, r),
                        index,
                        k as u8,
                        &name,
                        &tracks,
                    )
                    .await
                    .1
                    .map(|_| ())
            }
        }
    }

    /// Meeting participant `me` subscribes to the other publishers of its room.
    pub(crate) async fn participant(
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
            Target::Cascade(_) => Err("a cascade runs no meeting".into()),
        }
    }

    /// Removes what the run created on a shared target (best effort).
    pub(crate) async fn cleanup(&self, rooms: u32) {
        match self {
            Target::Kaskade(k, tag) => {
                for r in 0..rooms {
                    k.delete_room(&room_id(tag, r)).await;
                }
            }
            Target::Janus(j) => j.cleanup().await,
            Target::Cascade(c) => c.cleanup(rooms).await,
        }
    }
}
