//! What a caller may make the router hold, and the checks that keep it
//! there. Every bound here is checked before the control plane does any
//! work for a request (before a lock, a worker command or an allocation
//! that grows with the input), and every refusal names the limit and is
//! counted in `kaskade_limit_refusals_total{limit}`.

use super::error::ApiError;
use crate::metrics::Metrics;

/// Largest SDP the API accepts.
pub const MAX_SDP_BYTES: usize = 256 * 1024;
/// Largest metadata blob the API accepts.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Most tracks in one Subscribe/Unsubscribe call.
pub const MAX_TRACKS_PER_CALL: usize = 256;
/// Most entries in a room's `allowed_regions`.
pub const MAX_ALLOWED_REGIONS: usize = 32;
/// Largest page `ListRooms` returns, in rooms.
pub const MAX_PAGE_SIZE: usize = 1000;
/// `ListRooms` page size when the caller gives none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Largest `ListRooms` page, in encoded bytes: well below a stock gRPC
/// client's 4 MiB default, whatever the rooms hold.
pub const MAX_PAGE_BYTES: usize = 1 << 20;

/// Limits from the configuration (`limits.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `limits.max_rooms`: rooms on this router.
    pub max_rooms: usize,
    /// `limits.max_sessions_per_room`: sessions per room when `CreateRoom`
    /// gives none (and the most it may give).
    pub max_sessions_per_room: usize,
    /// `limits.max_sessions`: sessions on this router.
    pub max_sessions: usize,
    /// `limits.max_pending_sessions`: sessions created but not yet
    /// connected (each holds a WebRTC stack for up to the connect timeout).
    pub max_pending_sessions: usize,
    /// `limits.max_tracks`: published tracks on this router, remote ones included.
    pub max_tracks: usize,
    /// `limits.max_tracks_per_session`: tracks one session may publish.
    pub max_tracks_per_session: usize,
    /// `limits.max_subscriptions_per_session`: tracks one session may receive.
    pub max_subscriptions_per_session: usize,
    /// `limits.max_media_lines`: media sections (`m=` lines) in one offer.
    pub max_media_lines: usize,
    /// `limits.max_watchers`: `WatchEvents` streams open at once.
    pub max_watchers: usize,
}

impl Default for Limits {
    /// The defaults of the `limits.*` keys.
    fn default() -> Self {
        Self::from(&crate::config::LimitsConfig::default())
    }
}

impl From<&crate::config::LimitsConfig> for Limits {
    fn from(c: &crate::config::LimitsConfig) -> Self {
        Self {
            max_rooms: c.max_rooms,
            max_sessions_per_room: c.max_sessions_per_room as usize,
            max_sessions: c.max_sessions,
            max_pending_sessions: c.max_pending_sessions,
            max_tracks: c.max_tracks,
            max_tracks_per_session: c.max_tracks_per_session,
            max_subscriptions_per_session: c.max_subscriptions_per_session,
            max_media_lines: c.max_media_lines,
            max_watchers: c.max_watchers,
        }
    }
}

/// Which limit refused a request (the `limit` label of
/// `kaskade_limit_refusals_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `limits.max_rooms`
    Rooms,
    /// The room's `max_sessions`.
    RoomSessions,
    /// `limits.max_sessions`
    Sessions,
    /// `limits.max_pending_sessions`
    PendingSessions,
    /// `limits.max_tracks`
    Tracks,
    /// `limits.max_tracks_per_session`
    TracksPerSession,
    /// `limits.max_subscriptions_per_session`
    SubscriptionsPerSession,
    /// `limits.max_media_lines`
    MediaLines,
    /// `limits.max_watchers`
    Watchers,
    /// A field larger than the API accepts (ids, SDP, metadata, lists).
    FieldSize,
    /// Every media worker is overloaded (placement).
    Overloaded,
    /// More simulcast layers in one section than
    /// [`crate::media::layer::MAX_LAYERS`].
    SimulcastLayers,
}

impl Limit {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Rooms => "rooms",
            Limit::RoomSessions => "room_sessions",
            Limit::Sessions => "sessions",
            Limit::PendingSessions => "pending_sessions",
            Limit::Tracks => "tracks",
            Limit::TracksPerSession => "tracks_per_session",
            Limit::SubscriptionsPerSession => "subscriptions_per_session",
            Limit::MediaLines => "media_lines",
            Limit::Watchers => "watchers",
            Limit::FieldSize => "field_size",
            Limit::Overloaded => "overloaded",
            Limit::SimulcastLayers => "simulcast_layers",
        }
    }

    /// Every limit, for pre-registering the metric's series.
    pub const ALL: [Limit; 12] = [
        Limit::Rooms,
        Limit::RoomSessions,
        Limit::Sessions,
        Limit::PendingSessions,
        Limit::Tracks,
        Limit::TracksPerSession,
        Limit::SubscriptionsPerSession,
        Limit::MediaLines,
        Limit::Watchers,
        Limit::FieldSize,
        Limit::Overloaded,
        Limit::SimulcastLayers,
    ];
}

/// Counts a refusal and makes its error.
pub fn refuse(metrics: &Metrics, limit: Limit, e: ApiError) -> ApiError {
    metrics
        .limit_refusals
        .with_label_values(&[limit.as_str()])
        .inc();
    e
}

/// The part of an offer the limits and the WHIP/WHEP endpoints look at:
/// its media sections, and how many of them may send media to the router
/// (each becomes a track) or receive media from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SdpShape {
    /// `m=` lines of any kind.
    pub media_lines: usize,
    /// Audio or video sections with a non-zero port whose direction lets
    /// the offerer send (`sendrecv`, `sendonly`, or no direction attribute,
    /// which means `sendrecv`).
    pub sending: usize,
    /// The same for receiving (`sendrecv`, `recvonly`, or none).
    pub receiving: usize,
    /// The most simulcast layers (`a=rid:` lines, of either direction) of
    /// one section.
    pub layers: usize,
}

/// Scans an SDP for its [`SdpShape`]: one pass over the lines, no
/// allocation. Meant for untrusted input of at most [`MAX_SDP_BYTES`].
/// Only an `m=` line's port field says whether the section is rejected
/// (`0`); payload type 0 (PCMU) in its format list does not.
pub fn sdp_shape(sdp: &str) -> SdpShape {
    /// An audio or video section with a port: (sends, receives).
    type Section = Option<(bool, bool)>;
    fn close(section: Section, shape: &mut SdpShape) {
        if let Some((sends, receives)) = section {
            shape.sending += usize::from(sends);
            shape.receiving += usize::from(receives);
        }
    }
    let mut shape = SdpShape::default();
    let mut section: Section = None;
    let mut rids = 0;
    for line in sdp.lines() {
        let line = line.trim_end();
        // Every rid counts, whatever its direction: str0m keeps them all.
        if line.starts_with("a=rid:") {
            rids += 1;
            shape.layers = shape.layers.max(rids);
        }
        if let Some(m) = line.strip_prefix("m=") {
            close(section, &mut shape);
            rids = 0;
            shape.media_lines += 1;
            let mut fields = m.split(' ');
            let kind = fields.next().unwrap_or("");
            let port = fields.next().unwrap_or("0");
            let av = kind == "audio" || kind == "video";
            section = (av && port != "0").then_some((true, true));
        } else if let Some(dir) = section.as_mut() {
            match line {
                "a=sendrecv" => *dir = (true, true),
                "a=sendonly" => *dir = (true, false),
                "a=recvonly" => *dir = (false, true),
                "a=inactive" => *dir = (false, false),
                _ => {}
            }
        }
    }
    close(section, &mut shape);
    shape
}

/// Most characters of a caller's value an error message repeats.
const ECHO_CHARS: usize = 40;

/// A caller's value as error messages quote it: in full when short,
/// otherwise its start and its size, so that an error never grows with
/// the input (a huge value once made responses too large to send).
pub fn echo(value: &str) -> String {
    if value.len() <= ECHO_CHARS {
        return format!("{value:?}");
    }
    let mut end = ECHO_CHARS;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &value[..end], value.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_shape_counts_sending_media_sections() {
        let sdp = "v=0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendrecv\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert_eq!(
            sdp_shape(sdp),
            SdpShape {
                media_lines: 6,
                // sendrecv, sendonly, and the one without a direction.
                sending: 3,
                // sendrecv, recvonly, and the one without a direction.
                receiving: 3,
                layers: 0,
            }
        );
        assert_eq!(sdp_shape(""), SdpShape::default());
        assert_eq!(sdp_shape("m=").media_lines, 1);
    }

    #[test]
    fn sdp_shape_counts_the_simulcast_layers_of_the_largest_section() {
        let sdp = "v=0\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n\
            a=rid:q send\r\na=rid:h send\r\na=rid:f send\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\n\
            a=rid:a send\r\na=rid:b send\r\na=rid:c recv\r\na=rid:d recv\r\n";
        assert_eq!(sdp_shape(sdp).layers, 4, "recv rids count too");
    }

    #[test]
    fn payload_type_zero_does_not_reject_a_section() {
        // Chromium's and Firefox's audio lines list PCMU (payload type 0).
        let sdp = "v=0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0 8 13 110 126\r\na=sendonly\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 109 9 0 8 101\r\na=recvonly\r\n";
        let shape = sdp_shape(sdp);
        assert_eq!((shape.sending, shape.receiving), (1, 1));
    }

    #[test]
    fn limits_come_from_the_limits_keys() {
        let c = crate::config::LimitsConfig {
            max_watchers: 3,
            max_sessions_per_room: 7,
            ..Default::default()
        };
        let l = Limits::from(&c);
        assert_eq!((l.max_watchers, l.max_sessions_per_room), (3, 7));
        assert_eq!(Limits::default().max_tracks_per_session, 16);
    }

    #[test]
    fn echo_never_grows_with_the_input() {
        assert_eq!(echo("room-1"), "\"room-1\"");
        let huge = "x".repeat(3_000_000);
        let e = echo(&huge);
        assert!(e.len() < 80, "{e}");
        assert!(e.contains("3000000 bytes"), "{e}");
        // Cut on a character boundary.
        let multi = "é".repeat(100);
        assert!(echo(&multi).contains("200 bytes"));
    }
}
