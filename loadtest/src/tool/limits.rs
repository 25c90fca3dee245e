//! The router limits a scenario runs into, planned before the run: a router this
//! tool starts gets them raised (and the tool says so); for a router it did not
//! start, the tool says which limit will refuse joins before any join is made.
//!
//! Pure: the scenario's needs and the limits in force in, messages and
//! environment variables out.

use super::scenario::Scenario;

/// A router limit the load tester knows about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limit {
    /// The configuration key (docs/operations.md).
    pub key: &'static str,
    /// Its environment variable.
    pub env: &'static str,
    /// The router's embedded default.
    pub default: u64,
}

/// `limits.max_sessions_per_room`.
pub(crate) const SESSIONS_PER_ROOM: Limit = Limit {
    key: "limits.max_sessions_per_room",
    env: "KASKADE_LIMITS_MAX_SESSIONS_PER_ROOM",
    default: 100,
};

/// `limits.max_rooms`.
pub(crate) const ROOMS: Limit = Limit {
    key: "limits.max_rooms",
    env: "KASKADE_LIMITS_MAX_ROOMS",
    default: 10_000,
};

/// `limits.max_sessions` (sessions on the router).
pub(crate) const SESSIONS: Limit = Limit {
    key: "limits.max_sessions",
    env: "KASKADE_LIMITS_MAX_SESSIONS",
    default: 10_000,
};

/// `limits.max_tracks` (published tracks on the router, relayed ones included).
pub(crate) const TRACKS: Limit = Limit {
    key: "limits.max_tracks",
    env: "KASKADE_LIMITS_MAX_TRACKS",
    default: 20_000,
};

/// `limits.max_subscriptions_per_session`.
pub(crate) const SUBSCRIPTIONS_PER_SESSION: Limit = Limit {
    key: "limits.max_subscriptions_per_session",
    env: "KASKADE_LIMITS_MAX_SUBSCRIPTIONS_PER_SESSION",
    default: 512,
};

/// Every limit the tool plans for. A variable is only ever set when a scenario
/// needs more than the default, so a router that predates a key never sees it.
pub(crate) const ALL: [Limit; 5] = [
    SESSIONS_PER_ROOM,
    ROOMS,
    SESSIONS,
    TRACKS,
    SUBSCRIPTIONS_PER_SESSION,
];

/// What a scenario needs of one router at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Needs {
    /// Sessions in the fullest room (a meeting participant is one session).
    pub sessions_per_room: u64,
    /// Rooms.
    pub rooms: u64,
    /// Sessions on the router.
    pub sessions: u64,
    /// Published tracks on the router.
    pub tracks: u64,
    /// Tracks one session subscribes to.
    pub subscriptions_per_session: u64,
}

impl Needs {
    /// The needs of a scenario run on one router (a cascade's routers need at
    /// most as much each).
    pub(crate) fn of(s: &Scenario) -> Needs {
        let per_room = u64::from(s.publishers) + u64::from(s.subscribers);
        let tracks = u64::from(s.tracks_per_publisher());
        let others = if s.subscribers > 0 {
            u64::from(s.publishers)
        } else {
            u64::from(s.publishers.saturating_sub(1))
        };
        Needs {
            sessions_per_room: per_room,
            rooms: u64::from(s.rooms),
            sessions: u64::from(s.rooms) * per_room,
            tracks: u64::from(s.rooms) * u64::from(s.publishers) * tracks,
            subscriptions_per_session: others * tracks,
        }
    }

    fn of_limit(&self, l: &Limit) -> u64 {
        match l.key {
            "limits.max_sessions_per_room" => self.sessions_per_room,
            "limits.max_rooms" => self.rooms,
            "limits.max_sessions" => self.sessions,
            "limits.max_tracks" => self.tracks,
            _ => self.subscriptions_per_session,
        }
    }
}

/// A limit raised for a router the tool starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Raise {
    /// Which limit.
    pub limit: Limit,
    /// The value it would have had.
    pub from: u64,
    /// The value it gets.
    pub to: u64,
}

impl Raise {
    /// The environment variable to set on the router process.
    pub(crate) fn env(&self) -> (&'static str, String) {
        (self.limit.env, self.to.to_string())
    }

    /// What the tool says about it.
    pub(crate) fn message(&self) -> String {
        format!(
            "the scenario needs {} where the router allows {}: the router this tool starts \
             gets {} = {} ({}={})",
            self.to, self.from, self.limit.key, self.to, self.limit.env, self.to
        )
    }
}

/// The limits to raise on a router this tool starts. `inherited` reads the
/// environment the router would inherit (a limit set there counts instead of
/// the default; one set higher than needed is left alone).
pub(crate) fn raises(needs: &Needs, inherited: impl Fn(&str) -> Option<String>) -> Vec<Raise> {
    ALL.into_iter()
        .filter_map(|limit| {
            let from = inherited(limit.env)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(limit.default);
            let need = needs.of_limit(&limit);
            (need > from).then_some(Raise {
                limit,
                from,
                to: need,
            })
        })
        .collect()
}

/// The warning for a room the router created with `room_max` sessions at most
/// when `need` will join it (`None`: it fits).
pub(crate) fn room_refusal(room: &str, room_max: u64, need: u64) -> Option<String> {
    (need > room_max).then(|| {
        format!(
            "room {room} takes at most {room_max} sessions (the router's {}; raise it with {} \
             on that router): the scenario puts {need} in it, so {} joins will be refused \
             (RESOURCE_EXHAUSTED)",
            SESSIONS_PER_ROOM.key,
            SESSIONS_PER_ROOM.env,
            need - room_max
        )
    })
}

/// The warnings for a router the tool did not start, before the run: limits it
/// cannot read back (it only learns a room's session limit once the room
/// exists), named when the scenario needs more than their default.
pub(crate) fn unknown_router_warnings(needs: &Needs) -> Vec<String> {
    ALL.iter()
        .filter(|l| **l != SESSIONS_PER_ROOM && needs.of_limit(l) > l.default)
        .map(|l| {
            format!(
                "the scenario needs {} under {}; a router at its default of {} refuses the \
                 rest (RESOURCE_EXHAUSTED): raise it there with {}",
                needs.of_limit(l),
                l.key,
                l.default,
                l.env
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(sessions: u64, rooms: u64) -> Needs {
        Needs {
            sessions_per_room: sessions,
            rooms,
            ..Default::default()
        }
    }

    #[test]
    fn a_scenario_within_the_defaults_raises_nothing() {
        let s1 = Scenario::preset("s1").unwrap();
        assert_eq!(
            Needs::of(&s1),
            Needs {
                sessions_per_room: 51,
                rooms: 1,
                sessions: 51,
                tracks: 2,
                subscriptions_per_session: 2,
            }
        );
        assert!(raises(&Needs::of(&s1), |_| None).is_empty());
        let s2 = Scenario::preset("s2").unwrap();
        let n = Needs::of(&s2);
        assert_eq!((n.sessions_per_room, n.sessions, n.tracks), (5, 25, 50));
        // A meeting participant receives the other four's audio and video.
        assert_eq!(n.subscriptions_per_session, 8);
    }

    #[test]
    fn a_big_fan_out_raises_the_room_limit_and_says_how() {
        let r = raises(&needs(1001, 1), |_| None);
        assert_eq!(
            r,
            vec![Raise {
                limit: SESSIONS_PER_ROOM,
                from: 100,
                to: 1001
            }]
        );
        assert_eq!(
            r[0].env(),
            ("KASKADE_LIMITS_MAX_SESSIONS_PER_ROOM", "1001".to_string())
        );
        let m = r[0].message();
        assert!(
            m.contains("limits.max_sessions_per_room = 1001") && m.contains("allows 100"),
            "{m}"
        );
    }

    #[test]
    fn an_inherited_setting_counts_instead_of_the_default() {
        let env = |k: &str| (k == SESSIONS_PER_ROOM.env).then(|| "2000".to_string());
        assert!(raises(&needs(1001, 1), env).is_empty());
        let low = |k: &str| (k == SESSIONS_PER_ROOM.env).then(|| "10".to_string());
        assert_eq!(raises(&needs(51, 1), low)[0].from, 10);
        let rooms = raises(&needs(2, 20_000), |_| None);
        assert_eq!(rooms.len(), 1);
        assert_eq!(rooms[0].limit, ROOMS);
    }

    #[test]
    fn a_room_too_small_is_named_with_the_refused_joins() {
        assert_eq!(room_refusal("r", 100, 100), None);
        let w = room_refusal("lt-1-0", 100, 251).unwrap();
        assert!(w.contains("151 joins will be refused"), "{w}");
        assert!(w.contains("KASKADE_LIMITS_MAX_SESSIONS_PER_ROOM"), "{w}");
        assert!(unknown_router_warnings(&needs(10, 5)).is_empty());
        assert_eq!(unknown_router_warnings(&needs(10, 10_001)).len(), 1);
    }

    #[test]
    fn many_rooms_raise_the_router_wide_caps_too() {
        // 1,000 rooms of 1 → 20: 21,000 sessions and 2,000 tracks on one router.
        let s = Scenario {
            rooms: 1000,
            subscribers: 20,
            ..Scenario::default()
        };
        let r = raises(&Needs::of(&s), |_| None);
        let keys: Vec<&str> = r.iter().map(|r| r.limit.key).collect();
        assert_eq!(keys, vec!["limits.max_sessions"]);
        assert_eq!(r[0].to, 21_000);
        let w = unknown_router_warnings(&Needs::of(&s));
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("KASKADE_LIMITS_MAX_SESSIONS"), "{w:?}");
    }
}
