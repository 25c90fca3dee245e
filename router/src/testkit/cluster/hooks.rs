//! The control plane's cascade hooks in the cluster: what a router's control plane tells its
//! cascade is queued here and handed to its link-control machine by the cluster, as the real
//! manager task takes it from its command channel.

use crate::control::CascadeHooks;
use crate::media::select::LayerState;
use crate::media::TrackInfo;
use kaskade_protocol::{RoomId, TrackId};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// One hook call.
#[derive(Debug)]
pub(super) enum Hook {
    RoomCreated(RoomId, Vec<String>),
    RoomDeleted(RoomId),
    TrackPublished(Arc<TrackInfo>),
    TrackUnpublished(TrackId),
    RemoteDemand(TrackId, u32),
    RemoteKeyframe(TrackId, u8),
    LinkLayers(TrackId, Arc<[LayerState]>),
}

/// The queue of hook calls of one router (the control plane needs `Send + Sync` hooks; the
/// simulation runs in one thread, so the lock is never contended).
#[derive(Debug, Default)]
pub(super) struct HookQueue(Mutex<VecDeque<Hook>>);

impl HookQueue {
    fn push(&self, h: Hook) {
        // A poisoned lock means a test already panicked while holding it; the queue itself is
        // still whole.
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(h);
    }

    /// Every call queued so far, in order.
    pub(super) fn take(&self) -> VecDeque<Hook> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl CascadeHooks for HookQueue {
    fn room_created(&self, room: &RoomId, allowed_regions: &[String]) {
        self.push(Hook::RoomCreated(room.clone(), allowed_regions.to_vec()));
    }
    fn track_published(&self, _room: &RoomId, track: &Arc<TrackInfo>) {
        self.push(Hook::TrackPublished(track.clone()));
    }
    fn track_unpublished(&self, _room: &RoomId, track: TrackId) {
        self.push(Hook::TrackUnpublished(track));
    }
    fn remote_demand(&self, track: TrackId, mask: u32) {
        self.push(Hook::RemoteDemand(track, mask));
    }
    fn remote_keyframe(&self, track: TrackId, layer: u8) {
        self.push(Hook::RemoteKeyframe(track, layer));
    }
    fn link_layers(&self, track: TrackId, layers: Arc<[LayerState]>) {
        self.push(Hook::LinkLayers(track, layers));
    }
    fn room_deleted(&self, room: &RoomId) {
        self.push(Hook::RoomDeleted(room.clone()));
    }
}
