//! What a viewer that cannot be told about tracks (WHEP) receives: the
//! tracks of one publisher of the room, chosen by participant id or, when
//! none is named, the first participant (in id order) that publishes and
//! has connected; if none has, the first that publishes.

use super::{ApiError, Control};
use crate::control::error::parse_id;
use kaskade_protocol::{ParticipantId, RoomId, TrackId};
use std::collections::BTreeMap;

/// The tracks chosen for a viewer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerTracks {
    /// The publisher's participant id.
    pub publisher: ParticipantId,
    /// Its tracks, in the order of its media lines.
    pub tracks: Vec<TrackId>,
}

impl Control {
    /// The tracks a viewer of `room` receives: those of `publisher`, or of
    /// the first participant (in id order) that publishes any and has
    /// connected (or, if none has, that publishes any).
    pub fn viewer_tracks(
        &self,
        room: &str,
        publisher: Option<&str>,
    ) -> Result<ViewerTracks, ApiError> {
        let room = parse_id("room_id", room, RoomId::parse)?;
        let wanted = publisher
            .map(|p| parse_id("publisher", p, ParticipantId::parse))
            .transpose()?;
        let reg = self.reg();
        if !reg.rooms.contains_key(&room) {
            return Err(ApiError::NotFound(format!("room {room} not found")));
        }
        // Publisher → its tracks (ordered by media line).
        let mut by: BTreeMap<&ParticipantId, Vec<(String, TrackId)>> = BTreeMap::new();
        for t in reg.tracks.values().filter(|t| t.room == room) {
            by.entry(&t.participant)
                .or_default()
                .push((t.mid.to_string(), t.id));
        }
        let chosen = match &wanted {
            Some(p) => by.remove_entry(p).ok_or_else(|| {
                ApiError::NotFound(format!("participant {p} publishes nothing in room {room}"))
            })?,
            None => {
                // A live publisher first: one whose session connected. A
                // publisher that never connected (or an encoder's earlier
                // session, not yet timed out) sends nothing to watch.
                let live = by.keys().copied().find(|p| {
                    reg.sessions
                        .values()
                        .any(|s| s.room == room && s.participant == **p && s.connected)
                });
                match live {
                    Some(p) => by.remove_entry(p),
                    None => by.pop_first(),
                }
                .ok_or_else(|| {
                    ApiError::FailedPrecondition(format!("nothing is published in room {room} yet"))
                })?
            }
        };
        let (p, mut tracks) = chosen;
        tracks.sort_by(|a, b| (a.0.len(), &a.0).cmp(&(b.0.len(), &b.0)));
        Ok(ViewerTracks {
            publisher: p.clone(),
            tracks: tracks.into_iter().map(|(_, t)| t).collect(),
        })
    }
}
