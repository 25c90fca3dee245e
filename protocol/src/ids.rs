//! Id newtypes. Room and participant ids are chosen by the integrator;
//! session and track ids are assigned by the router.

use std::fmt;

/// Longest id the API accepts, in bytes.
pub const MAX_ID_LEN: usize = 128;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdError {
    /// The id is empty.
    Empty,
    /// The id is longer than [`MAX_ID_LEN`] bytes.
    TooLong,
    /// The id holds a character other than letters, digits, `-`, `_`, `.`, `:`.
    BadChar,
    /// A router-assigned id does not have the router's format.
    Malformed,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdError::Empty => "must not be empty",
            IdError::TooLong => "must be at most 128 bytes",
            IdError::BadChar => "may hold only letters, digits, '-', '_', '.' and ':'",
            IdError::Malformed => "is not an id this router issued",
        })
    }
}

impl std::error::Error for IdError {}

fn check_name(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > MAX_ID_LEN {
        return Err(IdError::TooLong);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    {
        return Err(IdError::BadChar);
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an integrator-chosen id.
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_name(s)?;
                Ok(Self(s.to_string()))
            }

            /// The id as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_id!(
    /// A room, named by the integrator.
    RoomId
);
name_id!(
    /// A participant inside a room, named by the integrator.
    ParticipantId
);

macro_rules! numeric_id {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub u64);

        impl $name {
            /// Parses the router's string form (`
            #[doc = $prefix]
            /// ` followed by 16 hex digits).
            pub fn parse(s: &str) -> Result<Self, IdError> {
                if s.is_empty() {
                    return Err(IdError::Empty);
                }
                let hex = s.strip_prefix($prefix).ok_or(IdError::Malformed)?;
                if hex.len() != 16 {
                    return Err(IdError::Malformed);
                }
                u64::from_str_radix(hex, 16).map(Self).map_err(|_| IdError::Malformed)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{:016x}"), self.0)
            }
        }
    };
}

numeric_id!(
    /// A session (one peer connection), assigned by the router.
    SessionId,
    "SE"
);
numeric_id!(
    /// A published track, assigned by the router.
    TrackId,
    "TR"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert_eq!(
            RoomId::parse("team-42.eu:a_b").unwrap().as_str(),
            "team-42.eu:a_b"
        );
        assert_eq!(RoomId::parse(""), Err(IdError::Empty));
        assert_eq!(RoomId::parse("a b"), Err(IdError::BadChar));
        assert_eq!(
            ParticipantId::parse(&"x".repeat(129)),
            Err(IdError::TooLong)
        );
    }

    #[test]
    fn numeric_ids_round_trip() {
        let t = TrackId(0x0001_0000_0000_002a);
        assert_eq!(t.to_string(), "TR000100000000002a");
        assert_eq!(TrackId::parse(&t.to_string()), Ok(t));
        assert_eq!(
            TrackId::parse("SE000100000000002a"),
            Err(IdError::Malformed)
        );
        assert_eq!(SessionId::parse("SE12"), Err(IdError::Malformed));
        assert_eq!(
            SessionId::parse("SEzzzzzzzzzzzzzzzz"),
            Err(IdError::Malformed)
        );
    }
}
