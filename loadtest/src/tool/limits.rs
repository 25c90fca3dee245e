//! The router limits a scenario runs into, planned before the run: a router this
//! tool starts gets them raised (and the tool says so); for a router it did not
//! start, the tool says which limit will refuse joins before any join is made.
//!
//! Pure: the scenario's needs and the limits in force in, messages and
//! environment variables out.

use super::scenario::Scenario;

/// A router limit the load tester knows about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// The configuration key (docs/operations.md).
    pub key: &'static str,
    /// Its environment variable.
    pub env: &'static str,
    /// The router's embedded default.
    pub default: u64,
}

/// `limits.max_sessions_per_room`.
pub const SESSIONS_PER_ROOM: Limit = Limit {
    key: "limits.max_sessions_per_room",
    env: "KASKADE_LIMITS_MAX_SESSIONS_PER_ROOM",
    default: 100,
};

/// `limits.max_rooms`.
pub const ROOMS: Limit = Limit {
    key: "limits.max_rooms",
    env: "KASKADE_LIMITS_MAX_ROOMS",
    default: 10_000,
};

/// What a scenario needs of one router at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// Sessions in the fullest room (a meeting participant is one session).
    pub sessions_per_room: u64,
    /// Rooms.
    pub rooms: u64,
}

impl Needs {
    /// The needs of a scenario run on one router.
    pub fn of(s: &Scenario) -> Needs {
        Needs {
            sessions_per_room: u64::from(s.publishers) + u64::from(s.subscribers),
            rooms: u64::from(s.rooms),
        }
    }

    fn of_limit(&self, l: &Limit) -> u64 {
        if l == &SESSIONS_PER_ROOM {
            self.sessions_per_room
        } else {
            self.rooms
        }
    }
}

/// A limit raised for a router the tool starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raise {
    /// Which limit.
    pub limit: Limit,
    /// The value it would have had.
    pub from: u64,
    /// The value it gets.
    pub to: u64,
}

impl Raise {
    /// The environment variable to set on the router process.
    pub fn env(&self) -> (&'static str, String) {
        (self.limit.env, self.to.to_string())
    }

    /// What the tool says about it.
    pub fn message(&self) -> String {
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
pub fn raises(needs: &Needs, inherited: impl Fn(&str) -> Option<String>) -> Vec<Raise> {
    [SESSIONS_PER_ROOM, ROOMS]
        .into_iter()
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
pub fn room_refusal(room: &str, room_max: u64, need: u64) -> Option<String> {
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

/// The warning for a router the tool did not start, before the run: limits it
/// cannot read back (it only learns a room's session limit once the room exists).
pub fn unknown_router_warnings(needs: &Needs) -> Vec<String> {
    let mut v = vec![];
    if needs.rooms > ROOMS.default {
        v.push(format!(
            "the scenario creates {} rooms; a router at the default {} = {} refuses the rest \
             (RESOURCE_EXHAUSTED)",
            needs.rooms, ROOMS.key, ROOMS.default
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(sessions: u64, rooms: u64) -> Needs {
        Needs {
            sessions_per_room: sessions,
            rooms,
        }
    }

    #[test]
    fn a_scenario_within_the_defaults_raises_nothing() {
        let s1 = Scenario::preset("s1").unwrap();
        assert_eq!(Needs::of(&s1), needs(51, 1));
        assert!(raises(&Needs::of(&s1), |_| None).is_empty());
        let s2 = Scenario::preset("s2").unwrap();
        assert_eq!(Needs::of(&s2), needs(5, 5));
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
}
