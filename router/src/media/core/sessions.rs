//! The sessions of one worker: stored in slots (a subscriber list holds a
//! slot key, so the fan-out reaches a session without hashing its id),
//! found by id, by remote address and by ICE username, with one deadline
//! each in a [`TimerQueue`]: a loop iteration touches only the sessions
//! whose deadline has come.

use crate::media::session::{Learned, Session};
use crate::media::timers::TimerQueue;
use kaskade_protocol::SessionId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

/// A session's slot. The generation tells a reused slot from the session
/// that held it before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) struct SessionKey {
    slot: u32,
    generation: u32,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    session: Option<Session>,
}

/// The sessions of one worker.
#[derive(Default)]
pub(super) struct SessionTable {
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_id: HashMap<SessionId, SessionKey>,
    by_addr: HashMap<SocketAddr, SessionKey>,
    /// ICE-TCP connections, by their remote address (a UDP and a TCP peer
    /// may share one).
    by_tcp: HashMap<SocketAddr, SessionKey>,
    by_ufrag: HashMap<String, SessionKey>,
    timers: TimerQueue,
}

impl SessionTable {
    /// An empty table.
    pub(super) fn new() -> Self {
        Self::default()
    }

    /// Number of sessions.
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Adds a session (its id must be new) with its deadline.
    pub(super) fn insert(&mut self, session: Session) -> SessionKey {
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(Slot::default());
                (self.slots.len() - 1) as u32
            }
        };
        let s = &mut self.slots[slot as usize];
        let key = SessionKey {
            slot,
            generation: s.generation,
        };
        self.by_id.insert(session.id(), key);
        self.by_ufrag.insert(session.ufrag().to_string(), key);
        self.timers.set(slot, session.deadline());
        s.session = Some(session);
        key
    }

    /// Removes a session and every way to find it.
    pub(super) fn remove(&mut self, key: SessionKey) -> Option<Session> {
        let s = self.slots.get_mut(key.slot as usize)?;
        if s.generation != key.generation {
            return None;
        }
        let session = s.session.take()?;
        s.generation = s.generation.wrapping_add(1);
        self.free.push(key.slot);
        self.timers.remove(key.slot);
        self.by_id.remove(&session.id());
        self.by_ufrag.remove(session.ufrag());
        for a in session.addrs() {
            self.by_addr.remove(a);
        }
        for a in session.tcp_addrs() {
            self.by_tcp.remove(a);
        }
        Some(session)
    }

    /// The session in `key`'s slot, if it is still that one.
    pub(super) fn get(&self, key: SessionKey) -> Option<&Session> {
        let s = self.slots.get(key.slot as usize)?;
        (s.generation == key.generation)
            .then_some(s.session.as_ref())
            .flatten()
    }

    /// As [`SessionTable::get`], to change.
    pub(super) fn get_mut(&mut self, key: SessionKey) -> Option<&mut Session> {
        let s = self.slots.get_mut(key.slot as usize)?;
        (s.generation == key.generation)
            .then_some(s.session.as_mut())
            .flatten()
    }

    /// The key of a session id.
    pub(super) fn key(&self, id: SessionId) -> Option<SessionKey> {
        self.by_id.get(&id).copied()
    }

    /// The session datagrams from `src` belong to.
    pub(super) fn by_addr(&self, src: SocketAddr) -> Option<SessionKey> {
        self.by_addr.get(&src).copied()
    }

    /// The session with this local ICE ufrag.
    pub(super) fn by_ufrag(&self, ufrag: &str) -> Option<SessionKey> {
        self.by_ufrag.get(ufrag).copied()
    }

    /// The session packets from ICE-TCP connection `src` belong to.
    pub(super) fn by_tcp(&self, src: SocketAddr) -> Option<SessionKey> {
        self.by_tcp.get(&src).copied()
    }

    /// Routes later packets from ICE-TCP connection `src` to `key`'s session.
    pub(super) fn learn_tcp_addr(&mut self, key: SessionKey, src: SocketAddr) {
        if self.get_mut(key).is_some_and(|s| s.learn_tcp_addr(src)) {
            self.by_tcp.insert(src, key);
        }
    }

    /// Forgets ICE-TCP connection `src` (it closed).
    pub(super) fn forget_tcp_addr(&mut self, src: SocketAddr) {
        if let Some(key) = self.by_tcp.remove(&src) {
            if let Some(s) = self.get_mut(key) {
                s.forget_tcp_addr(src);
            }
        }
    }

    /// Routes later datagrams from `src` to `key`'s session.
    pub(super) fn learn_addr(&mut self, key: SessionKey, src: SocketAddr) {
        let Some(learned) = self.get_mut(key).map(|s| s.learn_addr(src)) else {
            return;
        };
        if let Learned::Replaced(old) = learned {
            if self.by_addr.get(&old) == Some(&key) {
                self.by_addr.remove(&old);
            }
        }
        if learned != Learned::Known {
            self.by_addr.insert(src, key);
        }
    }

    /// Re-reads the session's deadline after str0m or its state changed.
    pub(super) fn reschedule(&mut self, key: SessionKey) {
        if let Some(at) = self.get(key).map(Session::deadline) {
            if self.timers.get(key.slot) != Some(at) {
                self.timers.set(key.slot, at);
            }
        }
    }

    /// The earliest deadline of any session.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// A session whose deadline has come, taken off the queue: the caller
    /// handles it and [`SessionTable::reschedule`]s it.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<SessionKey> {
        let slot = self.timers.pop_due(now)?;
        let generation = self.slots.get(slot as usize)?.generation;
        Some(SessionKey { slot, generation })
    }

    /// Every session's key, in slot order.
    pub(super) fn keys(&self) -> Vec<SessionKey> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.session.is_some())
            .map(|(i, s)| SessionKey {
                slot: i as u32,
                generation: s.generation,
            })
            .collect()
    }

    /// Every session, in slot order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (SessionKey, &Session)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.session.as_ref().map(|sess| {
                (
                    SessionKey {
                        slot: i as u32,
                        generation: s.generation,
                    },
                    sess,
                )
            })
        })
    }
}
