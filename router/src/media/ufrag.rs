//! The router's local ICE username fragments. Each names the worker that
//! hosts its session, so whoever receives a session's first STUN binding
//! request elsewhere (the ICE-TCP listener, or another worker in single-port
//! mode) can route it to that worker from the request alone, without a
//! lookup in shared state. Whether the session exists is for that worker to
//! say: a forged ufrag only reaches a worker that drops it.
//!
//! Format: `k`, the worker index (4 hex digits), the session id (16), 6
//! random hex digits. 27 characters, within ICE's 4-256.

use super::types::WorkerId;
use kaskade_protocol::SessionId;

/// The local ufrag of session `session` on worker `worker`.
pub fn make(worker: WorkerId, session: SessionId, random: u32) -> String {
    format!(
        "k{:04x}{:016x}{:06x}",
        worker.0,
        session.0,
        random & 0xff_ffff
    )
}

/// The worker a ufrag made by [`make`] names; `None` for any other string.
pub fn worker_of(ufrag: &str) -> Option<WorkerId> {
    let rest = ufrag.strip_prefix('k')?;
    if rest.len() != 26 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u16::from_str_radix(rest.get(..4)?, 16).ok().map(WorkerId)
}

/// The worker named by the local ufrag of a STUN binding request's
/// USERNAME (`local:remote`); `None` if `buf` is not a binding request
/// with a username of ours.
pub fn worker_of_binding_request(buf: &[u8]) -> Option<WorkerId> {
    let msg = str0m::ice::StunMessage::parse(buf).ok()?;
    if !msg.is_binding_request() {
        return None;
    }
    let (local, _remote) = msg.split_username()?;
    worker_of(local)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A STUN binding request with USERNAME `ufrag:remote` (no integrity).
    pub(crate) fn binding_request(ufrag: &str) -> Vec<u8> {
        use str0m::ice::{StunMessage, TransId};
        let user = format!("{ufrag}:peer");
        let msg = StunMessage::binding_request(&user, TransId::new(), true, 1, 1, false);
        let mut buf = vec![0u8; 512];
        let n = msg
            .to_bytes(Some(b"password"), &mut buf, |_, _| [7; 20])
            .expect("fits");
        buf.truncate(n);
        buf
    }

    #[test]
    fn a_binding_request_is_routed_by_its_username() {
        let u = make(WorkerId(5), SessionId(9), 1);
        assert_eq!(
            worker_of_binding_request(&binding_request(&u)),
            Some(WorkerId(5))
        );
        assert_eq!(worker_of_binding_request(&binding_request("abcd")), None);
    }

    #[test]
    fn a_ufrag_names_its_worker() {
        let u = make(WorkerId(3), SessionId(0x1234_5678_9abc_def0), 0xffff_ffff);
        assert_eq!(u.len(), 27);
        assert_eq!(worker_of(&u), Some(WorkerId(3)));
        let u = make(WorkerId(1023), SessionId(1), 7);
        assert_eq!(worker_of(&u), Some(WorkerId(1023)));
    }

    #[test]
    fn other_strings_name_no_worker() {
        for s in [
            "",
            "k",
            "abcd",
            "k0003",
            "x00031234567890abcdef0ffffff",
            "k0003123456789Zabcdef0ffffff",
        ] {
            assert_eq!(worker_of(s), None, "{s:?}");
        }
        assert_eq!(worker_of_binding_request(b"\x00\x01garbage"), None);
        assert_eq!(worker_of_binding_request(&[0x80; 40]), None);
    }
}
