//! QUIC application close codes of cascade links: why a router closed a link connection.
//!
//! Both routers of a link log the code they receive; none of them is an error a router must
//! act on except [`CloseCode::Hello`] (a version mismatch: upgrade one side) and
//! [`CloseCode::Identity`] (a certificate issued for another node id).

use std::fmt;

/// Why a cascade link connection was closed (the QUIC application error code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum CloseCode {
    /// 0: an orderly close: the router stops, or no longer needs the link.
    Done = 0,
    /// 1: the peer's certificate carries no node identity, or not the node id that was dialled.
    Identity = 1,
    /// 2: a router reached itself (its own address is in `cascade.peers`).
    SelfLink = 2,
    /// 3: both routers dialled each other at once; this is the connection not kept. Both sides
    /// keep the one dialled by the smaller node id. Routine, not a fault.
    Duplicate = 3,
    /// 4: the first frame was not a `Hello`, or its version or node id does not match (the
    /// node id must be the one in the certificate; the version must be [`super::LINK_VERSION`]).
    Hello = 4,
    /// 5: the control stream carried something unreadable: a frame above the size limit or one
    /// that is not a `Frame` message.
    Protocol = 5,
    /// 6: the dialling router did not open its control stream in time.
    NoControlStream = 6,
    /// 7: the peer stopped reading its control stream: more frames waited for it than a
    /// working link ever queues. The link is dialled again and resynchronised.
    Stalled = 7,
}

impl CloseCode {
    /// Every code, in numeric order.
    pub const ALL: [CloseCode; 8] = [
        CloseCode::Done,
        CloseCode::Identity,
        CloseCode::SelfLink,
        CloseCode::Duplicate,
        CloseCode::Hello,
        CloseCode::Protocol,
        CloseCode::NoControlStream,
        CloseCode::Stalled,
    ];

    /// The numeric code sent in the QUIC `CONNECTION_CLOSE` frame.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// The code for a number received from a peer (`None`: unknown, e.g. a newer version's).
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL.into_iter().find(|c| u64::from(c.code()) == code)
    }

    /// The short reason phrase sent with the code (ASCII, no personal data).
    pub fn reason(self) -> &'static str {
        match self {
            CloseCode::Done => "done",
            CloseCode::Identity => "identity",
            CloseCode::SelfLink => "self",
            CloseCode::Duplicate => "duplicate",
            CloseCode::Hello => "hello",
            CloseCode::Protocol => "protocol",
            CloseCode::NoControlStream => "no control stream",
            CloseCode::Stalled => "stalled",
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code(), self.reason())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable_and_round_trip() {
        // The numbers are part of the wire protocol: changing one breaks mixed clusters.
        let numbers: Vec<u32> = CloseCode::ALL.iter().map(|c| c.code()).collect();
        assert_eq!(numbers, vec![0, 1, 2, 3, 4, 5, 6, 7]);
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(u64::from(c.code())), Some(c));
            assert!(c.reason().is_ascii() && !c.reason().is_empty());
        }
        assert_eq!(CloseCode::from_code(8), None);
        assert_eq!(CloseCode::Duplicate.to_string(), "3 (duplicate)");
    }
}
