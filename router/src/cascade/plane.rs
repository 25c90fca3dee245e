//! The link machine's outputs that concern this router's control plane
//! (rooms, remote tracks, demand, keyframes, layers, link state), carried
//! out once for the cascade's manager task and for the test kit's
//! multi-router simulation, with the home worker of each remote track
//! that relayed packets are routed to.

use crate::cascade::link::{LinkControl, Output};
use crate::cascade::relay::RxRoute;
use crate::control::Control;
use crate::media::bus::{BusMsg, Outbox};
use crate::media::WorkerId;
use kaskade_protocol::TrackId;
use std::collections::HashMap;
use str0m::media::MediaKind;

/// The control-plane side of a link machine: the home worker of every
/// remote track the control plane took, and the layer reports a full
/// worker inbox refused (offered again first, under the bus's overload
/// policy: control messages are kept, not dropped).
#[derive(Debug, Default)]
pub struct PlaneSide {
    homes: HashMap<TrackId, WorkerId>,
    outbox: Option<Outbox>,
}

impl PlaneSide {
    /// The track is no longer published here.
    pub fn forget(&mut self, track: TrackId) {
        self.homes.remove(&track);
    }

    /// Where packets of a relayed track go: `Some(None)` clears the route,
    /// `None` means the control plane did not take the track (nothing to do).
    pub fn route(&self, route: Option<(TrackId, MediaKind)>) -> Option<Option<RxRoute>> {
        match route {
            Some((track, kind)) => self.homes.get(&track).map(|worker| {
                Some(RxRoute {
                    track,
                    worker: *worker,
                    kind,
                })
            }),
            None => Some(None),
        }
    }

    /// Offers again what a full inbox refused before.
    fn offer_again(&mut self, c: &Control) {
        let Some(outbox) = self.outbox.as_mut() else {
            return;
        };
        for i in 0..c.worker_count() {
            if outbox.waiting(i) > 0 {
                // Worker indexes fit a u16: there are at most as many as cores.
                let w = WorkerId(u16::try_from(i).unwrap_or(u16::MAX));
                c.ingest_batch(outbox, w, &mut Vec::new());
            }
        }
    }

    /// Carries out `out` if it is for the control plane; gives it back
    /// otherwise (transport, relay and replies are the driver's).
    pub fn apply(&mut self, c: &Control, machine: &mut LinkControl, out: Output) -> Option<Output> {
        self.offer_again(c);
        match out {
            Output::EnsureRoom { peer, room, policy } => {
                let r = c
                    .ensure_room_for_link(&room, &policy)
                    .map(|()| c.room_policy(&room).unwrap_or_default())
                    .map_err(|e| e.to_string());
                machine.room_ready(&peer, room, r);
            }
            Output::AddRemoteTrack(t) => {
                if let Some(info) = c.add_remote_track(t) {
                    self.homes.insert(info.id, info.worker);
                }
            }
            Output::RemoveRemoteTrack(track) => {
                self.homes.remove(&track);
                c.remove_remote_track(track);
            }
            Output::SetLinkDemand { track, link, mask } => c.set_link_demand(track, link, mask),
            Output::RequestKeyframe { track, layer } => c.request_keyframe(track, layer),
            Output::RemoteLayers { track, layers } => {
                if let Some(w) = self.homes.get(&track).copied() {
                    let outbox = self
                        .outbox
                        .get_or_insert_with(|| Outbox::new(c.worker_count()));
                    let mut batch = vec![BusMsg::RemoteLayers { track, layers }];
                    c.ingest_batch(outbox, w, &mut batch);
                }
            }
            Output::LinkChanged {
                room,
                peer,
                region,
                up,
            } => c.link_changed(&room, peer.as_str(), &region, up),
            Output::LinkRefused {
                room,
                peer,
                region,
                reason,
                decided_by,
            } => c.link_refused(&room, peer.as_str(), &region, &reason, decided_by.as_str()),
            Output::Reached { room, node } => c.reached(&room, node.as_str(), ""),
            other => return Some(other),
        }
        None
    }
}
