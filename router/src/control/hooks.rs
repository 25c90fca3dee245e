//! What the control plane tells the cascade (router-to-router links), so
//! that the control plane does not depend on how links work.

use crate::media::select::LayerState;
use crate::media::TrackInfo;
use kaskade_protocol::{RoomId, TrackId};
use std::sync::Arc;

/// Implemented by the cascade; every call returns at once.
pub trait CascadeHooks: Send + Sync {
    /// A room was created here with this residency policy (rooms that link themselves).
    fn room_created(&self, room: &RoomId, allowed_regions: &[String]);
    /// A track was published in `room` on this router (locally, or relayed
    /// here from another router).
    fn track_published(&self, room: &RoomId, track: &Arc<TrackInfo>);
    /// A track of `room` is no longer published here.
    fn track_unpublished(&self, room: &RoomId, track: TrackId);
    /// Subscribers on this router need these layers of a remote track.
    fn remote_demand(&self, track: TrackId, mask: u32);
    /// A keyframe of a remote track is needed.
    fn remote_keyframe(&self, track: TrackId, layer: u8);
    /// The layer state of a local track relayed to other routers.
    fn link_layers(&self, track: TrackId, layers: Arc<[LayerState]>);
    /// A room was deleted here.
    fn room_deleted(&self, room: &RoomId);
}
