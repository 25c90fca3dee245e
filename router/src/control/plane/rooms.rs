//! Rooms: `CreateRoom`, `GetRoom`, `ListRooms`, `DeleteRoom` and
//! `WatchEvents`.

use super::Control;
use crate::control::error::{parse_id, ApiError};
use crate::control::limits::{
    echo, refuse, Limit, DEFAULT_PAGE_SIZE, MAX_ALLOWED_REGIONS, MAX_PAGE_BYTES, MAX_PAGE_SIZE,
};
use crate::control::registry::{region_allowed, Registry};
use crate::control::watch::{Watch, WatchSlot};
use kaskade_protocol::v1 as pb;
use kaskade_protocol::{RoomId, SessionId};

impl Control {
    /// `CreateRoom`
    pub fn create_room(
        &self,
        room_id: &str,
        max_sessions: u32,
        allowed_regions: &[String],
    ) -> Result<pb::Room, ApiError> {
        self.refuse_if_draining("room")?;
        let room = parse_id("room_id", room_id, RoomId::parse)?;
        if allowed_regions.len() > MAX_ALLOWED_REGIONS {
            return Err(refuse(
                &self.metrics,
                Limit::FieldSize,
                ApiError::InvalidArgument(format!(
                    "allowed_regions has {} entries; at most {MAX_ALLOWED_REGIONS}",
                    allowed_regions.len()
                )),
            ));
        }
        for r in allowed_regions {
            let name = r.strip_suffix('-').unwrap_or(r);
            if !crate::config::valid_name(name) {
                return Err(ApiError::InvalidArgument(format!(
                    "allowed_regions entry {} is not a region name or a prefix ending in '-'",
                    echo(r)
                )));
            }
        }
        if !region_allowed(allowed_regions, &self.identity.region) {
            return Err(ApiError::PermissionDenied(format!(
                "this router's region {:?} is outside the room's allowed regions",
                self.identity.region
            )));
        }
        let limit = self.limits.max_sessions_per_room;
        let max = if max_sessions == 0 {
            limit as u32
        } else if max_sessions as usize > limit {
            return Err(ApiError::InvalidArgument(format!(
                "max_sessions {max_sessions} is above this router's limit of {limit}"
            )));
        } else {
            max_sessions
        };
        let mut reg = self.reg();
        if reg.rooms.contains_key(&room) {
            return Err(ApiError::AlreadyExists(format!("room {room} exists")));
        }
        if reg.rooms.len() >= self.limits.max_rooms {
            return Err(refuse(
                &self.metrics,
                Limit::Rooms,
                ApiError::ResourceExhausted(format!(
                    "this router holds its limit of {} rooms (limits.max_rooms)",
                    self.limits.max_rooms
                )),
            ));
        }
        let mut state = Registry::new_room(max, allowed_regions.to_vec());
        state
            .reached
            .insert(self.identity.node_id.clone(), self.identity.region.clone());
        reg.rooms.insert(room.clone(), state);
        self.metrics.rooms.set(reg.rooms.len() as i64);
        if let Some(h) = self.hooks() {
            h.room_created(&room, allowed_regions);
        }
        reg.room_pb(&room)
            .ok_or_else(|| ApiError::Internal("room vanished".into()))
    }

    /// `GetRoom`
    pub fn get_room(&self, room_id: &str) -> Result<pb::Room, ApiError> {
        let room = parse_id("room_id", room_id, RoomId::parse)?;
        self.reg()
            .room_pb(&room)
            .ok_or_else(|| ApiError::NotFound(format!("room {room} not found")))
    }

    /// `ListRooms`
    pub fn list_rooms(
        &self,
        page_size: u32,
        page_token: &str,
    ) -> Result<pb::ListRoomsResponse, ApiError> {
        use prost::Message;
        let size = match page_size as usize {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(parse_id("page_token", page_token, RoomId::parse)?)
        };
        let reg = self.reg();
        let range = match &after {
            Some(a) => reg
                .rooms
                .range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => reg.rooms.range::<RoomId, _>(..),
        };
        let mut rooms = Vec::new();
        let mut bytes = 0;
        let mut more = false;
        for id in range.map(|(id, _)| id) {
            if rooms.len() == size {
                more = true;
                break;
            }
            let Some(room) = reg.room_pb(id) else {
                continue;
            };
            // Field tag, length prefix and the message.
            let len = room.encoded_len() + 8;
            if !rooms.is_empty() && bytes + len > MAX_PAGE_BYTES {
                more = true;
                break;
            }
            bytes += len;
            rooms.push(room);
        }
        let next_page_token = match rooms.last() {
            Some(last) if more => last.room_id.clone(),
            _ => String::new(),
        };
        Ok(pb::ListRoomsResponse {
            rooms,
            next_page_token,
        })
    }

    /// `DeleteRoom`: closes every session, then removes the room.
    pub async fn delete_room(&self, room_id: &str) -> Result<(), ApiError> {
        let room = parse_id("room_id", room_id, RoomId::parse)?;
        let sessions: Vec<SessionId> = {
            let mut reg = self.reg();
            let r = reg
                .rooms
                .get_mut(&room)
                .filter(|r| !r.deleting)
                .ok_or_else(|| ApiError::NotFound(format!("room {room} not found")))?;
            // From here no session joins (CreateSession checks under the same
            // lock), so these are all the sessions to close: one that joined
            // while they close would outlive its room.
            r.deleting = true;
            r.participants.values().copied().collect()
        };
        for sid in sessions {
            let _ = self.close_session_id(sid).await;
        }
        if let Some(h) = self.hooks() {
            h.room_deleted(&room);
        }
        let mut reg = self.reg();
        let remote = reg
            .rooms
            .get(&room)
            .map(|r| r.remote_tracks.clone())
            .unwrap_or_default();
        self.unpublish(&mut reg, &remote);
        reg.speakers.forget_room(&room);
        reg.rooms.remove(&room);
        self.metrics.rooms.set(reg.rooms.len() as i64);
        Ok(())
    }

    /// `WatchEvents`: a receiver of the room's events, or (empty
    /// `room_id`) of every room's, holding one of `limits.max_watchers`
    /// slots while it lives.
    pub fn watch(&self, room_id: &str) -> Result<Watch, ApiError> {
        let room = watched_room(room_id)?;
        let slot = self
            .watchers
            .enter(self.limits.max_watchers)
            .ok_or_else(|| {
                refuse(
                    &self.metrics,
                    Limit::Watchers,
                    ApiError::ResourceExhausted(format!(
                        "{} event streams are open, this router's limit (limits.max_watchers)",
                        self.limits.max_watchers
                    )),
                )
            })?;
        self.watch_with(room, slot)
    }

    /// The demo's event stream of a room: as [`Control::watch`], but on a
    /// slot apart from `limits.max_watchers` (the HTTP listener bounds its
    /// streams itself), so the demo cannot crowd out the backend's watchers.
    pub fn watch_demo(&self, room_id: &str) -> Result<Watch, ApiError> {
        let room = watched_room(room_id)?;
        let slot = self
            .demo_watchers
            .enter(usize::MAX)
            .ok_or_else(|| ApiError::ResourceExhausted("too many demo event streams".into()))?;
        self.watch_with(room, slot)
    }

    fn watch_with(&self, room: Option<RoomId>, slot: WatchSlot) -> Result<Watch, ApiError> {
        let events = match room {
            None => self.reg().router_events.subscribe(),
            Some(room) => self
                .reg()
                .watch(&room)
                .ok_or_else(|| ApiError::NotFound(format!("room {room} not found")))?,
        };
        Ok(Watch { events, slot })
    }
}

/// The room a watch names: `None` (every room) for an empty id.
fn watched_room(room_id: &str) -> Result<Option<RoomId>, ApiError> {
    if room_id.is_empty() {
        Ok(None)
    } else {
        parse_id("room_id", room_id, RoomId::parse).map(Some)
    }
}
