//! Event streams: the router-wide channel beside each room's, the kind
//! filter of `WatchEvents`, and the stream a watcher reads (bounded: a
//! watcher that falls behind is told how many events it missed, never
//! buffered without end and never allowed to slow the router down).

use super::error::ApiError;
use super::registry::unix_ms;
use kaskade_protocol::v1 as pb;
use pb::event::Kind;
use tokio::sync::broadcast;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

/// Events buffered for router-wide watchers (webhooks among them). A
/// watcher further behind than this misses events and gets an
/// `events_dropped` marker.
pub const ROUTER_EVENT_BUFFER: usize = 4096;

/// The router-wide event channel: every room's events.
#[derive(Debug)]
pub struct RouterEvents {
    tx: broadcast::Sender<pb::Event>,
}

impl Default for RouterEvents {
    fn default() -> Self {
        Self {
            tx: broadcast::channel(ROUTER_EVENT_BUFFER).0,
        }
    }
}

impl RouterEvents {
    /// Sends an event to every router-wide watcher (none is fine).
    pub fn send(&self, ev: &pb::Event) {
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(ev.clone());
        }
    }

    /// A new router-wide watcher.
    pub fn subscribe(&self) -> broadcast::Receiver<pb::Event> {
        self.tx.subscribe()
    }
}

/// Every kind of event, by its name in the API (the `Event.kind` field).
pub const KIND_NAMES: &[&str] = &[
    "watching",
    "session_connected",
    "session_closed",
    "track_published",
    "track_unpublished",
    "renegotiation_needed",
    "layer_changed",
    "layer_demand",
    "link_changed",
    "link_refused",
    "active_speakers_changed",
    "events_dropped",
];

/// The API name of an event's kind.
pub fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Watching(_) => "watching",
        Kind::SessionConnected(_) => "session_connected",
        Kind::SessionClosed(_) => "session_closed",
        Kind::TrackPublished(_) => "track_published",
        Kind::TrackUnpublished(_) => "track_unpublished",
        Kind::RenegotiationNeeded(_) => "renegotiation_needed",
        Kind::LayerChanged(_) => "layer_changed",
        Kind::LayerDemand(_) => "layer_demand",
        Kind::LinkChanged(_) => "link_changed",
        Kind::LinkRefused(_) => "link_refused",
        Kind::ActiveSpeakersChanged(_) => "active_speakers_changed",
        Kind::EventsDropped(_) => "events_dropped",
    }
}

/// Which kinds of event a watcher wants (bit per entry of [`KIND_NAMES`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventFilter(u32);

/// Most kinds a filter may list (more than there are is a client bug).
const MAX_FILTER_KINDS: usize = 64;

impl EventFilter {
    /// Every kind.
    pub const ALL: EventFilter = EventFilter(u32::MAX);

    /// The filter of `WatchEvents(kinds)`: empty is every kind; an unknown
    /// name is an error naming it.
    pub fn parse<S: AsRef<str>>(kinds: &[S]) -> Result<Self, ApiError> {
        if kinds.is_empty() {
            return Ok(Self::ALL);
        }
        if kinds.len() > MAX_FILTER_KINDS {
            return Err(ApiError::InvalidArgument(format!(
                "more than {MAX_FILTER_KINDS} kinds"
            )));
        }
        let mut bits = 0u32;
        for k in kinds {
            let k = k.as_ref();
            let i = KIND_NAMES.iter().position(|n| *n == k).ok_or_else(|| {
                ApiError::InvalidArgument(format!(
                    "kinds: unknown event kind {k:?}; known: {}",
                    KIND_NAMES.join(", ")
                ))
            })?;
            bits |= 1 << i;
        }
        Ok(Self(bits))
    }

    /// Whether `ev` passes. Markers about the stream itself always do.
    pub fn matches(&self, ev: &pb::Event) -> bool {
        let Some(kind) = &ev.kind else {
            return false;
        };
        if matches!(kind, Kind::Watching(_) | Kind::EventsDropped(_)) {
            return true;
        }
        let name = kind_name(kind);
        KIND_NAMES
            .iter()
            .position(|n| *n == name)
            .is_some_and(|i| self.0 & (1 << i) != 0)
    }
}

/// An event of `room_id` (empty: router-wide) happening now.
pub fn event(room_id: &str, kind: Kind) -> pb::Event {
    pb::Event {
        room_id: room_id.to_string(),
        at_unix_ms: unix_ms(),
        kind: Some(kind),
    }
}

/// What a watcher reads: the `watching` marker, then the events `filter`
/// lets through; missed events (the watcher fell more than the buffer
/// behind) become one `events_dropped` marker with their count.
pub fn watch_stream(
    room_id: &str,
    rx: broadcast::Receiver<pb::Event>,
    filter: EventFilter,
) -> impl Stream<Item = pb::Event> + Send + 'static {
    let first = event(room_id, Kind::Watching(pb::Watching {}));
    let room = room_id.to_string();
    let rest = BroadcastStream::new(rx).filter_map(move |r| match r {
        Ok(ev) => filter.matches(&ev).then_some(ev),
        Err(BroadcastStreamRecvError::Lagged(n)) => Some(event(
            &room,
            Kind::EventsDropped(pb::EventsDropped { count: n }),
        )),
    });
    tokio_stream::once(first).chain(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn closed() -> pb::Event {
        event(
            "r",
            Kind::SessionClosed(pb::SessionClosed {
                session_id: "SE1".into(),
                ..Default::default()
            }),
        )
    }

    #[test]
    fn filter_passes_listed_kinds_and_stream_markers() {
        let f = EventFilter::parse(&["session_connected", "track_published"]).unwrap();
        assert!(!f.matches(&closed()));
        assert!(f.matches(&event("r", Kind::Watching(pb::Watching {}))));
        assert!(f.matches(&event(
            "r",
            Kind::EventsDropped(pb::EventsDropped { count: 3 })
        )));
        assert!(EventFilter::ALL.matches(&closed()));
        assert!(EventFilter::parse::<&str>(&[]).unwrap().matches(&closed()));
    }

    #[test]
    fn unknown_kind_is_named() {
        let e = EventFilter::parse(&["session_closed", "sesion_connected"]).unwrap_err();
        assert!(e.to_string().contains("\"sesion_connected\""), "{e}");
    }

    #[test]
    fn every_kind_has_a_name_in_the_list() {
        assert!(KIND_NAMES.len() <= 32, "the filter is a u32 bit set");
        for n in KIND_NAMES {
            assert!(EventFilter::parse(&[*n]).is_ok());
        }
    }

    #[tokio::test]
    async fn a_lagging_watcher_is_told_what_it_missed() {
        let (tx, rx) = broadcast::channel(4);
        for _ in 0..10 {
            tx.send(closed()).unwrap();
        }
        drop(tx);
        let got: Vec<pb::Event> = watch_stream("r", rx, EventFilter::ALL).collect().await;
        let kinds: Vec<&str> = got
            .iter()
            .map(|e| kind_name(e.kind.as_ref().unwrap()))
            .collect();
        assert_eq!(kinds[0], "watching");
        assert_eq!(kinds[1], "events_dropped");
        assert_eq!(
            got[1].kind,
            Some(Kind::EventsDropped(pb::EventsDropped { count: 6 }))
        );
        assert_eq!(kinds.len(), 2 + 4, "the last 4 events still come");
    }
}
