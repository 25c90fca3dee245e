//! Join/leave soak: subscribers join, subscribe to the room's publishers, wait
//! for their first media packet and leave again (`CloseSession`, client dropped), `subscribers` at a time, until
//! the scenario's `cycles` are done. The per-second sampler records the router's
//! memory and descriptors against the cycles done.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use super::driver::ClientId;
use super::kaskade::{room_id, Kaskade};
use super::measure::percentiles_of;
use super::report::{ChurnFigures, Sample};
use super::sampler::Snapshot;
use super::session::{Joins, Publisher};

/// What the cycles did.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cycles {
    /// Cycles done.
    pub done: u64,
    /// Of those, failed (the reason is in the join records).
    pub failed: u64,
    /// Join, subscribe and leave, per successful cycle.
    pub times: Vec<Duration>,
}

/// Runs the scenario's join/leave cycles on router `k` (rooms named with `tag`).
pub(crate) async fn churn(
    k: &Kaskade,
    tag: &str,
    joins: &Arc<Joins>,
    pubs: &[Vec<Publisher>],
) -> Cycles {
    let scn = &joins.scenario;
    let total = u64::from(scn.cycles);
    let next = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for _ in 0..scn.subscribers.max(1) {
        let (k, tag, joins, next) = (k.clone(), tag.to_string(), joins.clone(), next.clone());
        let pubs = pubs.to_vec();
        set.spawn(async move {
            let mut mine = Cycles::default();
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return mine;
                }
                let r = (n % pubs.len().max(1) as u64) as u32;
                let tracks: Vec<_> = pubs
                    .get(r as usize)
                    .map(|p| p.iter().flat_map(|p| p.tracks.clone()).collect())
                    .unwrap_or_default();
                let t0 = Instant::now();
                let room = room_id(&tag, r);
                let name = format!("churn-{n}");
                let index = u32::try_from(n).unwrap_or(u32::MAX);
                let (id, res) = k
                    .subscriber(&joins, r, &room, index, 0, &name, &tracks)
                    .await;
                let res = match (res, id) {
                    (Ok(session), Some(id)) => {
                        let media = first_media(&joins, id).await;
                        let closed = k.close_session(&session).await;
                        media.and(closed)
                    }
                    (Ok(_), None) => Err("no client".into()),
                    (Err(e), _) => Err(e),
                };
                if let Some(id) = id {
                    joins.driver.remove(id);
                }
                match res {
                    Ok(()) => mine.times.push(t0.elapsed()),
                    Err(e) => {
                        mine.failed += 1;
                        joins.note(format!("a join/leave cycle failed: {e}"));
                    }
                }
                mine.done += 1;
                joins.cycle_done();
            }
        });
    }
    let mut all = Cycles::default();
    while let Some(r) = set.join_next().await {
        if let Ok(c) = r {
            all.done += c.done;
            all.failed += c.failed;
            all.times.extend(c.times);
        }
    }
    all
}

/// Waits until client `id` received its first RTP packet (the media path of
/// the join works), within the join timeout.
async fn first_media(joins: &Joins, id: ClientId) -> Result<(), String> {
    let end = Instant::now() + joins.scenario.join_timeout.0;
    loop {
        let got = joins
            .driver
            .call(id, |s| s.client.received().iter().any(|r| r.packets > 0))
            .await
            .map_err(|e| e.to_string())?;
        if got {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(format!(
                "no media within {:?} of subscribing",
                joins.scenario.join_timeout.0
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The figures of a churn run: cycles, their time, and the router's memory and
/// descriptors before the first and after the last cycle.
pub(crate) fn churn_figures(
    c: &Cycles,
    before: &Snapshot,
    after: &Snapshot,
    series: &[Sample],
    secs: f64,
) -> ChurnFigures {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    ChurnFigures {
        cycles: c.done,
        failed: c.failed,
        cycles_per_sec: if secs > 0.0 {
            c.done as f64 / secs
        } else {
            0.0
        },
        cycle_time: percentiles_of(&c.times),
        rss_mb_before: before.rss().map(mib),
        rss_mb_after: after.rss().map(mib),
        fds_before: before.fds(),
        fds_after: after.fds(),
        fds_max: series.iter().filter_map(|s| s.router_fds).max(),
    }
}
