//! What a run does: rooms × publishers × subscribers, media, pacing, layer preference
//! and impairments. Comes from a preset, a TOML file, or flags (applied in that order).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::units::{Dur, Frac, Rate};

/// Which simulcast layer subscribers ask for (`UpdateSubscription.max_spatial_layer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LayerPref {
    /// Leave it to the router (no `UpdateSubscription`).
    #[default]
    Auto,
    /// The lowest layer.
    Low,
    /// The middle layer (the lowest but one with two layers).
    Mid,
    /// The top layer.
    High,
}

impl LayerPref {
    /// The spatial layer index for `n` layers, `None` for [`LayerPref::Auto`].
    pub(crate) fn index(self, n: usize) -> Option<u32> {
        let top = n.saturating_sub(1) as u32;
        match self {
            LayerPref::Auto => None,
            LayerPref::Low => Some(0),
            LayerPref::Mid => Some(top.min(1)),
            LayerPref::High => Some(top),
        }
    }
}

impl std::str::FromStr for LayerPref {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "auto" | "none" => Ok(LayerPref::Auto),
            "low" | "l" | "0" => Ok(LayerPref::Low),
            "mid" | "middle" | "m" | "1" => Ok(LayerPref::Mid),
            "high" | "top" | "h" | "2" => Ok(LayerPref::High),
            _ => Err(format!("'{s}': expected auto, low, mid or high")),
        }
    }
}

/// What a kaskade subscriber's first offer carries to get a transport before
/// anything is subscribed (docs/api.md). Janus subscribers answer Janus's
/// offer and need neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Bootstrap {
    /// A data channel (the flow docs/api.md shows first).
    #[default]
    Datachannel,
    /// A receive-only video transceiver: no SCTP association.
    Recvonly,
}

impl std::str::FromStr for Bootstrap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "datachannel" | "dc" => Ok(Bootstrap::Datachannel),
            "recvonly" => Ok(Bootstrap::Recvonly),
            _ => Err(format!("'{s}': expected datachannel or recvonly")),
        }
    }
}

/// How the clients reach the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Transport {
    /// UDP, one socket per client.
    #[default]
    Udp,
    /// ICE-TCP: each client's only candidate is an active TCP one, paired
    /// with the router's passive candidate (`media.tcp_listen`), as a
    /// browser whose UDP is blocked. kaskade only.
    Tcp,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "udp" => Ok(Transport::Udp),
            "tcp" => Ok(Transport::Tcp),
            _ => Err(format!("'{s}': expected udp or tcp")),
        }
    }
}

/// Network impairment applied in user space to a share of the clients of one role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ImpairSpec {
    /// One-way delay added in each direction.
    pub delay: Dur,
    /// Extra delay, uniform in `[0, jitter]`, per packet (order kept).
    pub jitter: Dur,
    /// Random loss in each direction.
    pub loss: Frac,
    /// Bandwidth cap in each direction (0: none).
    pub rate: Rate,
    /// Queue of the bandwidth cap, as time at the cap rate.
    pub queue: Dur,
    /// Share of the role's clients impaired (spread evenly over them).
    pub fraction: Frac,
}

impl Default for ImpairSpec {
    fn default() -> Self {
        ImpairSpec {
            delay: Dur::default(),
            jitter: Dur::default(),
            loss: Frac(0.0),
            rate: Rate(0),
            queue: Dur(Duration::from_millis(250)),
            fraction: Frac(1.0),
        }
    }
}

impl ImpairSpec {
    /// Whether it changes anything.
    pub(crate) fn is_active(&self) -> bool {
        self.fraction.0 > 0.0
            && (!self.delay.0.is_zero()
                || !self.jitter.0.is_zero()
                || self.loss.0 > 0.0
                || self.rate.0 > 0)
    }
}

/// Publishers on one router, subscribers spread over others that the tool starts
/// and links (kaskade only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CascadeSpec {
    /// Routers besides the publishers' one that subscribers join (0: no cascade).
    pub edge_routers: u32,
    /// Share of the subscribers that join the publishers' router: the baseline
    /// for the latency a hop adds.
    pub origin_share: Frac,
    /// Impairment of every link between routers, each way (delay, jitter, loss;
    /// `fraction` is ignored).
    pub link: ImpairSpec,
}

impl Default for CascadeSpec {
    fn default() -> Self {
        CascadeSpec {
            edge_routers: 0,
            origin_share: Frac(0.2),
            link: ImpairSpec::default(),
        }
    }
}

impl CascadeSpec {
    /// Whether the scenario is a cascade.
    pub(crate) fn is_active(&self) -> bool {
        self.edge_routers > 0
    }

    /// The router (0: the publishers') subscriber `i` of `n` joins: the origin
    /// share spread evenly, the rest round-robin over the edge routers.
    pub(crate) fn router_of(&self, i: u32, n: u32) -> u32 {
        if !self.is_active() {
            return 0;
        }
        let f = self.origin_share.0;
        let before = (f64::from(i) * f).floor();
        let after = (f64::from(i + 1) * f).floor();
        if after > before || n == 0 {
            return 0;
        }
        let edge_index = i - after as u32;
        1 + edge_index % self.edge_routers
    }
}

/// A load-test scenario.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Scenario {
    /// A name for reports.
    pub name: String,
    /// Rooms.
    pub rooms: u32,
    /// Publishers per room.
    pub publishers: u32,
    /// Receive-only subscribers per room.
    pub subscribers: u32,
    /// Meeting: every publisher also subscribes to every other publisher of its room.
    pub meeting: bool,
    /// Publish Opus audio.
    pub audio: bool,
    /// Publish VP8 video.
    pub video: bool,
    /// Simulcast rids, lowest first (one entry: no simulcast).
    pub layers: Vec<String>,
    /// Layer subscribers ask for.
    pub subscriber_layer: LayerPref,
    /// What kaskade subscribers' first offer carries.
    pub subscriber_bootstrap: Bootstrap,
    /// Measured steady state, after every join and the warm-up.
    pub duration: Dur,
    /// Time between the last join and the start of measurement.
    pub warmup: Dur,
    /// Joins started per second.
    pub ramp_up: f64,
    /// Longest a join may take (offer to connected, and to subscribed).
    pub join_timeout: Dur,
    /// Seed of everything random the clients do.
    pub seed: u64,
    /// Impairment of subscribers (meeting participants count as publishers).
    pub subscriber_impairment: ImpairSpec,
    /// Impairment of publishers.
    pub publisher_impairment: ImpairSpec,
    /// Join/leave soak: subscribers join, subscribe and leave until this many
    /// cycles are done, `subscribers` at a time (0: a normal run).
    pub cycles: u32,
    /// Cascade: subscribers spread over routers linked to the publishers' one.
    pub cascade: CascadeSpec,
    /// How the clients reach the router (UDP, or ICE-TCP).
    pub transport: Transport,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "custom".into(),
            rooms: 1,
            publishers: 1,
            subscribers: 10,
            meeting: false,
            audio: true,
            video: true,
            layers: vec!["l".into(), "m".into(), "h".into()],
            subscriber_layer: LayerPref::High,
            subscriber_bootstrap: Bootstrap::Datachannel,
            duration: Dur(Duration::from_secs(20)),
            warmup: Dur(Duration::from_secs(5)),
            ramp_up: 20.0,
            join_timeout: Dur(Duration::from_secs(15)),
            seed: 1,
            subscriber_impairment: ImpairSpec::default(),
            publisher_impairment: ImpairSpec::default(),
            cycles: 0,
            cascade: CascadeSpec::default(),
            transport: Transport::Udp,
        }
    }
}

/// The canonical scenarios of `shared/PERFORMANCE.md`.
pub(crate) const PRESETS: &[&str] = &["s1", "s2", "s3", "s4", "soak-s2", "churn"];

impl Scenario {
    /// A canonical scenario by id (`s1`, `s2`, `s3`).
    pub(crate) fn preset(id: &str) -> Result<Scenario, String> {
        let base = Scenario::default();
        match id.to_ascii_lowercase().as_str() {
            "s1" => Ok(Scenario {
                name: "S1 fan-out 1→50".into(),
                rooms: 1,
                publishers: 1,
                subscribers: 50,
                subscriber_layer: LayerPref::High,
                ..base
            }),
            "s2" => Ok(Scenario {
                name: "S2 meeting 5×5".into(),
                rooms: 5,
                publishers: 5,
                subscribers: 0,
                meeting: true,
                subscriber_layer: LayerPref::Mid,
                ..base
            }),
            "s3" => Ok(Scenario {
                name: "S3 audio 10→200".into(),
                rooms: 1,
                publishers: 10,
                subscribers: 200,
                video: false,
                subscriber_layer: LayerPref::Auto,
                ..base
            }),
            "s4" => Ok(Scenario {
                name: "S4 cascade 1→50 over 3 routers".into(),
                rooms: 1,
                publishers: 1,
                subscribers: 50,
                subscriber_layer: LayerPref::High,
                cascade: CascadeSpec {
                    edge_routers: 2,
                    origin_share: Frac(0.2),
                    link: ImpairSpec {
                        delay: Dur(Duration::from_millis(20)),
                        jitter: Dur(Duration::from_millis(20)),
                        loss: Frac(0.02),
                        ..ImpairSpec::default()
                    },
                },
                ..base
            }),
            "soak-s2" => Ok(Scenario {
                name: "Soak: S2 meeting 5×5 for 30 min".into(),
                duration: Dur(Duration::from_secs(30 * 60)),
                warmup: Dur(Duration::from_secs(10)),
                ..Scenario::preset("s2")?
            }),
            "churn" => Ok(Scenario {
                name: "Soak: 10,000 join/leave cycles".into(),
                rooms: 1,
                publishers: 1,
                subscribers: 8,
                subscriber_layer: LayerPref::Low,
                subscriber_bootstrap: Bootstrap::Recvonly,
                cycles: 10_000,
                ramp_up: 200.0,
                ..base
            }),
            _ => Err(format!(
                "unknown preset '{id}' (known: {})",
                PRESETS.join(", ")
            )),
        }
    }

    /// Parses a TOML scenario file's contents (unknown keys are errors).
    pub(crate) fn from_toml(text: &str) -> Result<Scenario, String> {
        let s: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        s.validate()?;
        Ok(s)
    }

    /// Checks the scenario makes sense.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.rooms == 0 {
            return Err("rooms must be at least 1".into());
        }
        if self.publishers == 0 {
            return Err("publishers must be at least 1 per room".into());
        }
        if !self.audio && !self.video {
            return Err("publish audio, video or both".into());
        }
        if self.meeting && self.publishers < 2 {
            return Err("a meeting needs at least 2 publishers per room".into());
        }
        if !self.meeting && self.subscribers == 0 {
            return Err("no subscribers: set subscribers or meeting = true".into());
        }
        if self.video && (self.layers.is_empty() || self.layers.len() > 3) {
            return Err("layers: 1 to 3 simulcast rids".into());
        }
        if self.layers.iter().any(|r| r.is_empty() || r.len() > 8) {
            return Err("layers: rids are 1 to 8 characters".into());
        }
        if !(self.ramp_up.is_finite() && self.ramp_up > 0.0) {
            return Err("ramp_up must be a positive number of joins per second".into());
        }
        if self.duration.0.is_zero() {
            return Err("duration must be positive".into());
        }
        if self.join_timeout.0.is_zero() {
            return Err("join_timeout must be positive".into());
        }
        if self.cycles > 0 && (self.meeting || self.subscribers == 0 || self.cascade.is_active()) {
            return Err(
                "cycles: join/leave cycles need subscribers, no meeting, no cascade".into(),
            );
        }
        if self.transport == Transport::Tcp
            && (self.subscriber_impairment.is_active()
                || self.publisher_impairment.is_active()
                || self.cascade.is_active())
        {
            return Err(
                "transport tcp: no impairment (it works on datagrams) and no cascade".into(),
            );
        }
        if self.cascade.is_active() {
            if self.meeting {
                return Err(
                    "cascade: publishers on one router, subscribers on others: no meeting".into(),
                );
            }
            if self.cascade.edge_routers as usize + 1 > super::driver::MAX_GROUPS {
                return Err(format!(
                    "cascade: at most {} edge routers",
                    super::driver::MAX_GROUPS - 1
                ));
            }
        }
        Ok(())
    }

    /// Clients the run creates (a meeting participant is one kaskade session).
    pub(crate) fn participants(&self) -> u32 {
        self.rooms * (self.publishers + self.subscribers)
    }

    /// Tracks each publisher sends.
    pub(crate) fn tracks_per_publisher(&self) -> u32 {
        u32::from(self.audio) + u32::from(self.video)
    }

    /// Subscribed tracks in the whole run (what the router fans out to).
    pub(crate) fn subscriptions(&self) -> u32 {
        let per_room_receivers = |others: u32| others * self.tracks_per_publisher();
        let subs = self.subscribers * per_room_receivers(self.publishers);
        let meeting = if self.meeting {
            self.publishers * per_room_receivers(self.publishers - 1)
        } else {
            0
        };
        self.rooms * (subs + meeting)
    }

    /// One line describing the shape.
    pub(crate) fn shape(&self) -> String {
        let media = match (self.audio, self.video) {
            (true, true) => format!("audio+VP8 {}", self.layers.join("/")),
            (false, true) => format!("VP8 {}", self.layers.join("/")),
            _ => "audio".into(),
        };
        let who = if self.meeting {
            format!("{} meeting", self.publishers)
        } else {
            format!("{} pub → {} sub", self.publishers, self.subscribers)
        };
        let extra = if self.meeting && self.subscribers > 0 {
            format!(" + {} sub", self.subscribers)
        } else {
            String::new()
        };
        let bootstrap = match self.subscriber_bootstrap {
            Bootstrap::Datachannel => "",
            Bootstrap::Recvonly => ", subscribers bootstrap recvonly",
        };
        let transport = match self.transport {
            Transport::Udp => "",
            Transport::Tcp => ", over ICE-TCP",
        };
        let mode = if self.cycles > 0 {
            format!(
                ", {} join/leave cycles, {} at a time",
                self.cycles, self.subscribers
            )
        } else if self.cascade.is_active() {
            format!(
                ", cascade: publishers' router + {} linked ({}% of subscribers stay on the first)",
                self.cascade.edge_routers,
                (self.cascade.origin_share.0 * 100.0).round()
            )
        } else {
            String::new()
        };
        format!(
            "{} room(s) × {who}{extra}, {media}, layer {:?}{bootstrap}{transport}{mode}, {} measured",
            self.rooms, self.subscriber_layer, self.duration
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_transport_parses_and_refuses_what_works_on_datagrams() {
        assert_eq!("TCP".parse::<Transport>(), Ok(Transport::Tcp));
        assert!("quic".parse::<Transport>().is_err());
        let mut s = Scenario::from_toml("transport = \"tcp\"").unwrap();
        assert_eq!(s.transport, Transport::Tcp);
        s.validate().unwrap();
        assert!(s.shape().contains("ICE-TCP"));
        s.subscriber_impairment.loss = Frac(0.02);
        assert!(s.validate().unwrap_err().contains("transport tcp"));
    }

    #[test]
    fn presets_are_valid() {
        for p in PRESETS {
            let s = Scenario::preset(p).unwrap();
            s.validate().unwrap();
            assert_eq!(
                Scenario::from_toml(&toml::to_string(&s).unwrap()).unwrap(),
                s
            );
        }
        let s1 = Scenario::preset("S1").unwrap();
        assert_eq!(s1.participants(), 51);
        assert_eq!(s1.subscriptions(), 100);
        let s2 = Scenario::preset("s2").unwrap();
        assert_eq!(s2.participants(), 25);
        assert_eq!(s2.subscriptions(), 5 * 5 * 4 * 2);
        assert!(Scenario::preset("s9").is_err());
    }

    #[test]
    fn toml_with_units_and_defaults() {
        let s = Scenario::from_toml(
            r#"
            name = "flaky"
            rooms = 2
            publishers = 1
            subscribers = 20
            duration = "45s"
            ramp_up = 5
            subscriber_layer = "mid"
            [subscriber_impairment]
            delay = "40ms"
            jitter = "10ms"
            loss = "2%"
            rate = "1mbps"
            fraction = "25%"
            "#,
        )
        .unwrap();
        assert_eq!(s.rooms, 2);
        assert_eq!(s.duration.0, Duration::from_secs(45));
        assert_eq!(s.subscriber_layer, LayerPref::Mid);
        assert_eq!(s.layers, vec!["l", "m", "h"]);
        let i = &s.subscriber_impairment;
        assert_eq!(i.delay.0, Duration::from_millis(40));
        assert_eq!(i.loss.0, 0.02);
        assert_eq!(i.rate.0, 1_000_000);
        assert_eq!(i.fraction.0, 0.25);
        assert!(i.is_active());
        assert!(!s.publisher_impairment.is_active());
    }

    #[test]
    fn toml_errors_are_reported() {
        let e = Scenario::from_toml("roms = 3").unwrap_err();
        assert!(e.contains("roms"), "{e}");
        let e = Scenario::from_toml("duration = \"3 fortnights\"").unwrap_err();
        assert!(e.contains("fortnights"), "{e}");
        let e = Scenario::from_toml("meeting = true\npublishers = 1").unwrap_err();
        assert!(e.contains("meeting"), "{e}");
        let e = Scenario::from_toml("ramp_up = 0").unwrap_err();
        assert!(e.contains("ramp_up"), "{e}");
    }

    #[test]
    fn layer_indexes() {
        assert_eq!(LayerPref::High.index(3), Some(2));
        assert_eq!(LayerPref::Mid.index(3), Some(1));
        assert_eq!(LayerPref::Mid.index(1), Some(0));
        assert_eq!(LayerPref::Low.index(3), Some(0));
        assert_eq!(LayerPref::Auto.index(3), None);
        assert_eq!("top".parse::<LayerPref>().unwrap(), LayerPref::High);
    }

    #[test]
    fn cascade_spreads_subscribers_with_an_origin_share() {
        let s4 = Scenario::preset("s4").unwrap();
        let c = &s4.cascade;
        let routers: Vec<u32> = (0..10).map(|i| c.router_of(i, 10)).collect();
        // 20 % on the publishers' router, the rest alternating over 2 edges.
        assert_eq!(routers.iter().filter(|r| **r == 0).count(), 2);
        assert_eq!(routers.iter().filter(|r| **r == 1).count(), 4);
        assert_eq!(routers.iter().filter(|r| **r == 2).count(), 4);
        assert_eq!(CascadeSpec::default().router_of(3, 10), 0);
        let mut bad = s4.clone();
        bad.meeting = true;
        bad.publishers = 2;
        assert!(bad.validate().is_err());
    }

    #[test]
    fn soak_presets_are_opt_in_shapes() {
        let soak = Scenario::preset("soak-s2").unwrap();
        assert_eq!(soak.duration.0, Duration::from_secs(1800));
        assert!(soak.meeting && soak.rooms == 5);
        let churn = Scenario::preset("churn").unwrap();
        assert_eq!((churn.cycles, churn.subscribers), (10_000, 8));
        let mut bad = churn.clone();
        bad.meeting = true;
        bad.publishers = 2;
        assert!(bad.validate().unwrap_err().contains("cycles"));
    }

    #[test]
    fn round_trips_through_toml() {
        let s = Scenario::preset("s2").unwrap();
        let text = toml::to_string(&s).unwrap();
        assert_eq!(Scenario::from_toml(&text).unwrap(), s);
    }
}
