//! Codec parameters on the link: str0m's `PayloadParams` ↔ the typed `CodecParams` message of
//! the link protocol. The far router matches these against each subscriber's negotiated codecs
//! (`CodecConfig::match_params`), so the codec, clock rate, channels and the fmtp parameters
//! that matter for matching cross the link; nothing else does.

use kaskade_protocol::cascade as cpb;
use str0m::format::{Codec, CodecSpec, FormatParams, PayloadParams};
use str0m::media::{Frequency, Pt};

/// Why codec parameters from a peer cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The codec is not one the link carries.
    #[error("unsupported codec {0}")]
    Unsupported(i32),
    /// A payload type outside 0..=127.
    #[error("payload type {0} out of range")]
    PayloadType(u32),
    /// A clock rate of zero.
    #[error("clock rate 0")]
    ClockRate,
    /// A parameter outside its range.
    #[error("{0} out of range")]
    Range(&'static str),
    /// The message has no parameters.
    #[error("no codec parameters")]
    Missing,
}

fn codec_name(c: Codec) -> Option<cpb::CodecName> {
    use cpb::CodecName as N;
    Some(match c {
        Codec::Opus => N::Opus,
        Codec::PCMU => N::Pcmu,
        Codec::PCMA => N::Pcma,
        Codec::G722 => N::G722,
        Codec::Vp8 => N::Vp8,
        Codec::Vp9 => N::Vp9,
        Codec::H264 => N::H264,
        Codec::Av1 => N::Av1,
        _ => return None,
    })
}

fn codec_of(n: i32) -> Result<Codec, CodecError> {
    use cpb::CodecName as N;
    Ok(
        match N::try_from(n).map_err(|_| CodecError::Unsupported(n))? {
            N::Opus => Codec::Opus,
            N::Pcmu => Codec::PCMU,
            N::Pcma => Codec::PCMA,
            N::G722 => Codec::G722,
            N::Vp8 => Codec::Vp8,
            N::Vp9 => Codec::Vp9,
            N::H264 => Codec::H264,
            N::Av1 => Codec::Av1,
            N::Unspecified => return Err(CodecError::Unsupported(n)),
        },
    )
}

/// The link message for a publisher's payload parameters; `None` for a codec the link does not
/// carry (the router negotiates only Opus, VP8 and H.264 today).
pub fn to_wire(p: &PayloadParams) -> Option<cpb::CodecParams> {
    let spec = p.spec();
    let f = spec.format;
    Some(cpb::CodecParams {
        pt: u32::from(*p.pt()),
        resend_pt: p.resend().map(|r| u32::from(*r)),
        codec: codec_name(spec.codec)? as i32,
        clock_rate: spec.clock_rate.get(),
        channels: spec.channels.map(u32::from),
        format: Some(cpb::FormatParams {
            min_ptime: f.min_p_time.map(u32::from),
            stereo: f.stereo,
            sprop_stereo: f.sprop_stereo,
            use_inband_fec: f.use_inband_fec,
            use_dtx: f.use_dtx,
            level_asymmetry_allowed: f.level_asymmetry_allowed,
            packetization_mode: f.packetization_mode.map(u32::from),
            profile_level_id: f.profile_level_id,
            profile_id: f.profile_id,
            profile: f.profile.map(u32::from),
            level_idx: f.level_idx.map(u32::from),
            tier: f.tier.map(u32::from),
        }),
        fb_transport_cc: p.fb_transport_cc(),
        fb_nack: p.fb_nack(),
        fb_pli: p.fb_pli(),
        fb_fir: p.fb_fir(),
        fb_remb: p.fb_remb(),
    })
}

fn small(what: &'static str, v: Option<u32>) -> Result<Option<u8>, CodecError> {
    v.map(|v| u8::try_from(v).map_err(|_| CodecError::Range(what)))
        .transpose()
}

fn pt(v: u32) -> Result<Pt, CodecError> {
    match u8::try_from(v) {
        Ok(b) if b < 128 => Ok(Pt::from(b)),
        _ => Err(CodecError::PayloadType(v)),
    }
}

/// The payload parameters a peer sent; every field is checked (a peer's input never panics).
pub fn from_wire(c: &cpb::CodecParams) -> Result<PayloadParams, CodecError> {
    let codec = codec_of(c.codec)?;
    let clock_rate = Frequency::new(c.clock_rate).ok_or(CodecError::ClockRate)?;
    let w = c.format.unwrap_or_default();
    let format = FormatParams {
        min_p_time: small("min_ptime", w.min_ptime)?,
        stereo: w.stereo,
        sprop_stereo: w.sprop_stereo,
        use_inband_fec: w.use_inband_fec,
        use_dtx: w.use_dtx,
        level_asymmetry_allowed: w.level_asymmetry_allowed,
        packetization_mode: small("packetization_mode", w.packetization_mode)?,
        profile_level_id: w.profile_level_id,
        profile_id: w.profile_id,
        profile: small("profile", w.profile)?,
        level_idx: small("level_idx", w.level_idx)?,
        tier: small("tier", w.tier)?,
        ..FormatParams::default()
    };
    let spec = CodecSpec {
        codec,
        clock_rate,
        channels: small("channels", c.channels)?,
        format,
    };
    let mut p = PayloadParams::new(pt(c.pt)?, c.resend_pt.map(pt).transpose()?, spec);
    p.set_fb_transport_cc(c.fb_transport_cc);
    p.set_fb_nack(c.fb_nack);
    p.set_fb_pli(c.fb_pli);
    p.set_fb_fir(c.fb_fir);
    p.set_fb_remb(c.fb_remb);
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every codec the router negotiates crosses the link unchanged.
    #[test]
    fn negotiated_codecs_round_trip() {
        let rtc = crate::media::rtc::RtcFactory::new()
            .unwrap()
            .config()
            .build(std::time::Instant::now());
        let mut seen = 0;
        for p in rtc.codec_config().params() {
            let wire = to_wire(p).expect("a negotiated codec is carried");
            let back = from_wire(&wire).unwrap();
            assert_eq!(&back, p, "{:?}", p.spec().codec);
            seen += 1;
        }
        assert!(seen >= 3, "opus, vp8 and h264 at least");
    }

    #[test]
    fn bad_parameters_are_errors() {
        let rtc = crate::media::rtc::RtcFactory::new()
            .unwrap()
            .config()
            .build(std::time::Instant::now());
        let good = to_wire(&rtc.codec_config().params()[0]).unwrap();
        let bad = |f: &dyn Fn(&mut cpb::CodecParams)| {
            let mut c = good;
            f(&mut c);
            from_wire(&c).unwrap_err()
        };
        assert_eq!(bad(&|c| c.codec = 0), CodecError::Unsupported(0));
        assert_eq!(bad(&|c| c.codec = 99), CodecError::Unsupported(99));
        assert_eq!(bad(&|c| c.pt = 128), CodecError::PayloadType(128));
        assert_eq!(
            bad(&|c| c.resend_pt = Some(300)),
            CodecError::PayloadType(300)
        );
        assert_eq!(bad(&|c| c.clock_rate = 0), CodecError::ClockRate);
        assert_eq!(
            bad(&|c| c.channels = Some(256)),
            CodecError::Range("channels")
        );
    }
}
