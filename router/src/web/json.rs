//! The API's messages as JSON, in the protobuf JSON mapping (lowerCamelCase
//! names, enums by name, 64-bit integers as strings, a oneof as the key of
//! its field): what `buf curl` and a stock gRPC client in JavaScript show,
//! so `kaskade.js` reads the demo endpoint, the example backend and webhook
//! bodies alike. Every field is written, defaults included.

use kaskade_protocol::v1 as pb;
use pb::event::Kind;
use serde_json::{json, Map, Value};

/// What an event may say about participants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Participants {
    /// Participant ids and metadata as the API has them.
    Include,
    /// Without participant ids and metadata (webhooks by default): sessions
    /// and tracks by their router-issued ids only.
    Omit,
}

/// A track.
pub fn track(t: &pb::Track) -> Value {
    json!({
        "trackId": t.track_id,
        "kind": pb::TrackKind::try_from(t.kind)
            .map(|k| k.as_str_name())
            .unwrap_or("TRACK_KIND_UNSPECIFIED"),
        "sessionId": t.session_id,
        "participantId": t.participant_id,
        "mid": t.mid,
        "rids": t.rids,
        "originNodeId": t.origin_node_id,
    })
}

fn router_ref(r: &pb::RouterRef) -> Value {
    json!({ "nodeId": r.node_id, "region": r.region })
}

/// A session as `GetRoom` lists it.
pub fn session_info(s: &pb::SessionInfo) -> Value {
    json!({
        "sessionId": s.session_id,
        "participantId": s.participant_id,
        "worker": s.worker,
        "connected": s.connected,
        "metadata": s.metadata,
    })
}

/// A room.
pub fn room(r: &pb::Room) -> Value {
    json!({
        "roomId": r.room_id,
        "maxSessions": r.max_sessions,
        "sessions": r.sessions.iter().map(session_info).collect::<Vec<_>>(),
        "tracks": r.tracks.iter().map(track).collect::<Vec<_>>(),
        "allowedRegions": r.allowed_regions,
        "reached": r.reached.iter().map(router_ref).collect::<Vec<_>>(),
        "linked": r.linked.iter().map(router_ref).collect::<Vec<_>>(),
    })
}

/// A subscription's state (`UpdateSubscription`).
pub fn subscription_state(s: &pb::SubscriptionState) -> Value {
    json!({
        "trackId": s.track_id,
        "mid": s.mid,
        "currentSpatialLayer": s.current_spatial_layer,
        "targetSpatialLayer": s.target_spatial_layer,
        "maxSpatialLayer": s.max_spatial_layer,
        "maxTemporalLayer": s.max_temporal_layer,
        "paused": s.paused,
        "priority": s.priority,
    })
}

/// The oneof field name of an event kind, lowerCamelCase.
fn camel(snake: &str) -> String {
    let mut out = String::with_capacity(snake.len());
    let mut up = false;
    for c in snake.chars() {
        if c == '_' {
            up = true;
        } else if up {
            out.extend(c.to_uppercase());
            up = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn kind_body(kind: &Kind) -> Value {
    match kind {
        Kind::Watching(_) => json!({}),
        Kind::SessionConnected(e) => json!({
            "sessionId": e.session_id,
            "participantId": e.participant_id,
            "metadata": e.metadata,
        }),
        Kind::SessionClosed(e) => json!({
            "sessionId": e.session_id,
            "reason": e.reason,
            "participantId": e.participant_id,
            "metadata": e.metadata,
        }),
        Kind::TrackPublished(e) => json!({
            "track": e.track.as_ref().map(track),
        }),
        Kind::TrackUnpublished(e) => json!({
            "trackId": e.track_id,
            "sessionId": e.session_id,
        }),
        Kind::RenegotiationNeeded(e) => json!({
            "sessionId": e.session_id,
            "reason": e.reason,
            "trackIds": e.track_ids,
        }),
        Kind::LayerChanged(e) => json!({
            "sessionId": e.session_id,
            "trackId": e.track_id,
            "oldLayer": e.old_layer,
            "newLayer": e.new_layer,
            "reason": e.reason,
        }),
        Kind::LayerDemand(e) => json!({
            "trackId": e.track_id,
            "rid": e.rid,
            "layer": e.layer,
            "wanted": e.wanted,
        }),
        Kind::LinkChanged(e) => json!({
            "peer": e.peer.as_ref().map(router_ref),
            "up": e.up,
        }),
        Kind::LinkRefused(e) => json!({
            "peer": e.peer.as_ref().map(router_ref),
            "reason": e.reason,
            "decidedBy": e.decided_by,
        }),
        Kind::ActiveSpeakersChanged(e) => json!({
            "speakers": e.speakers.iter().map(|s| json!({
                "sessionId": s.session_id,
                "participantId": s.participant_id,
                "trackId": s.track_id,
                "level": s.level,
            })).collect::<Vec<_>>(),
        }),
        Kind::EventsDropped(e) => json!({ "count": e.count.to_string() }),
    }
}

/// Removes participant ids and metadata wherever they appear.
fn strip_participants(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("participantId");
            m.remove("metadata");
            for x in m.values_mut() {
                strip_participants(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(strip_participants),
        _ => {}
    }
}

/// An event: `{roomId, atUnixMs, <kind>: {...}}`.
pub fn event(ev: &pb::Event, participants: Participants) -> Value {
    let mut m = Map::new();
    m.insert("roomId".into(), ev.room_id.clone().into());
    m.insert("atUnixMs".into(), ev.at_unix_ms.to_string().into());
    if let Some(kind) = &ev.kind {
        let name = crate::control::events::kind_name(kind);
        let mut body = kind_body(kind);
        if participants == Participants::Omit {
            strip_participants(&mut body);
        }
        m.insert(camel(name), body);
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn published() -> pb::Event {
        pb::Event {
            room_id: "r".into(),
            at_unix_ms: 1_700_000_000_123,
            kind: Some(Kind::TrackPublished(pb::TrackPublished {
                track: Some(pb::Track {
                    track_id: "TR1".into(),
                    kind: pb::TrackKind::Video as i32,
                    session_id: "SE1".into(),
                    participant_id: "alice".into(),
                    mid: "0".into(),
                    rids: vec!["q".into(), "h".into()],
                    origin_node_id: String::new(),
                }),
            })),
        }
    }

    #[test]
    fn events_follow_the_protobuf_json_mapping() {
        let v = event(&published(), Participants::Include);
        assert_eq!(v["roomId"], "r");
        assert_eq!(v["atUnixMs"], "1700000000123", "uint64 as a string");
        let t = &v["trackPublished"]["track"];
        assert_eq!(t["kind"], "TRACK_KIND_VIDEO");
        assert_eq!(t["participantId"], "alice");
        assert_eq!(t["rids"], json!(["q", "h"]));
        assert_eq!(camel("active_speakers_changed"), "activeSpeakersChanged");
    }

    #[test]
    fn participants_can_be_left_out() {
        let v = event(&published(), Participants::Omit);
        let t = &v["trackPublished"]["track"];
        assert_eq!(t["sessionId"], "SE1");
        assert!(t.get("participantId").is_none(), "{v}");
        let closed = pb::Event {
            room_id: "r".into(),
            at_unix_ms: 1,
            kind: Some(Kind::SessionConnected(pb::SessionConnected {
                session_id: "SE1".into(),
                participant_id: "alice".into(),
                metadata: "{\"name\":\"Alice\"}".into(),
            })),
        };
        let v = event(&closed, Participants::Omit);
        assert_eq!(v["sessionConnected"], json!({ "sessionId": "SE1" }));
    }
}
