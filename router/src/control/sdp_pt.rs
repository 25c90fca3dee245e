//! A sanity check of an SDP's payload types before str0m sees it. str0m
//! 0.25 panics ("Pt locked multiple times") on an `a=rtpmap` for a payload
//! type that its `m=` line does not list when another line maps that
//! payload type to another codec. The worker catches the panic and closes
//! the session, but the caller got `INTERNAL` for its own bad input. Such
//! an SDP breaks RFC 8866 (attributes name the line's formats) and, in a
//! bundle, RFC 8843 (one payload type, one codec), so it is refused here.

/// The first payload type an `a=rtpmap` line names that its `m=` line does
/// not list, or that another `a=rtpmap` maps to another codec. One pass,
/// no allocation; meant for untrusted input of a bounded size.
pub fn payload_type_conflict(sdp: &str) -> Option<u8> {
    // The codec each payload type was mapped to so far (`VP8/90000`).
    let mut codecs: [Option<&str>; 128] = [None; 128];
    // The payload types the current `m=` line lists.
    let mut listed: u128 = 0;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            listed = m
                .split(' ')
                .skip(3)
                .filter_map(|f| f.parse::<u8>().ok())
                .filter(|pt| *pt < 128)
                .fold(0, |set, pt| set | 1 << pt);
        } else if let Some(map) = line.strip_prefix("a=rtpmap:") {
            // A malformed line is str0m's parser's to refuse.
            let Some((pt, codec)) = map.split_once(' ') else {
                continue;
            };
            let pt: u8 = match pt.parse() {
                Ok(pt) if pt < 128 => pt,
                // Not a payload type str0m takes: its parser says so.
                _ => continue,
            };
            if listed & 1 << pt == 0 {
                return Some(pt);
            }
            let codec = codec.trim();
            match codecs[usize::from(pt)] {
                Some(seen) if !seen.eq_ignore_ascii_case(codec) => return Some(pt),
                _ => codecs[usize::from(pt)] = Some(codec),
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = "v=0\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:0 PCMU/8000\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:97 rtx/90000\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 vp8/90000\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";

    #[test]
    fn browsers_sdps_pass() {
        assert_eq!(payload_type_conflict(OK), None);
        assert_eq!(payload_type_conflict(""), None);
    }

    #[test]
    fn a_payload_type_the_line_does_not_list_or_mapped_twice_is_found() {
        let unlisted = OK.replacen(
            "a=rtpmap:111 opus",
            "a=rtpmap:96 H264/90000\r\na=rtpmap:111 opus",
            1,
        );
        assert_eq!(payload_type_conflict(&unlisted), Some(96));
        let twice = OK.replace("a=rtpmap:96 vp8/90000", "a=rtpmap:96 H264/90000");
        assert_eq!(payload_type_conflict(&twice), Some(96));
        // A malformed line earlier does not end the check.
        let late = format!("a=rtpmap:5\r\n{unlisted}");
        assert_eq!(payload_type_conflict(&late), Some(96));
    }
}
