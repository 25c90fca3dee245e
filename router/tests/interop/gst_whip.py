#!/usr/bin/python3
"""A WHIP publisher on GStreamer's webrtcbin (libnice ICE, OpenSSL DTLS,
libsrtp): the test pattern as H.264 (openh264, constrained baseline, as OBS
sends) or VP8, and a sine tone as Opus, POSTed to a WHIP URL without trickle
ICE (the offer waits for gathering, as RFC 9725 allows). With --play, a WHEP
viewer instead: receive-only lines, decodebin, "decoded" lines each second.

    gst_whip.py URL [--play] [--codec h264|vp8] [--cert ecdsa|gstreamer] [--token T] [--seconds N]

GStreamer (1.22 at least) gives webrtcbin an RSA certificate, which kaskade's
DTLS does not take (docs/whip.md): --cert ecdsa (the default) hands it an ECDSA
one instead. Prints one line per milestone ("offer", "answer 201 LOCATION",
"connected"), and on SIGTERM/SIGINT or after --seconds DELETEs its resource and
prints "deleted STATUS". Exits 1 if it does not connect within 20 s (or its
connection fails). GST_WHIP_SDP=1 prints the offer and the answer.
router/tests/browser/gst-whip.mjs drives it.
"""

import argparse
import hashlib
import os
import re
import signal
import ssl
import subprocess
import tempfile
import sys
import urllib.error
import urllib.parse
import urllib.request

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstWebRTC", "1.0")
gi.require_version("GstSdp", "1.0")
gi.require_version("Nice", "0.1")
from gi.repository import GLib, Gst, GstSdp, GstWebRTC, Nice  # noqa: E402

VIDEO = {
    "h264": "openh264enc bitrate=800000 rate-control=bitrate gop-size=60 complexity=low "
    "! h264parse ! rtph264pay config-interval=-1 aggregate-mode=zero-latency pt=102 "
    "! application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000",
    "vp8": "vp8enc deadline=1 target-bitrate=800000 keyframe-max-dist=60 "
    "! rtpvp8pay pt=96 ! application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000",
}


def ecdsa_pem():
    """A self-signed ECDSA P-256 certificate and its key, as one PEM."""
    with tempfile.TemporaryDirectory() as d:
        key, crt = os.path.join(d, "k.pem"), os.path.join(d, "c.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=gst-whip"],
            check=True, capture_output=True)
        with open(crt) as c, open(key) as k:
            return c.read() + k.read()


# What a viewer offers to receive: the codec of --codec, and Opus.
RECV_CAPS = {
    "h264": "application/x-rtp,media=video,encoding-name=H264,payload=102,clock-rate=90000,"
    "packetization-mode=(string)1,profile-level-id=(string)42e01f",
    "vp8": "application/x-rtp,media=video,encoding-name=VP8,payload=96,clock-rate=90000",
}
AUDIO_CAPS = "application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000,encoding-params=(string)2"


def viewer_pipeline(codec):
    """A webrtcbin with receive-only video and audio lines; what arrives is
    decoded (decodebin picks depayloader and decoder) into counting sinks.
    Every second it prints "decoded VIDEO_FRAMES WIDTHxHEIGHT AUDIO_BUFFERS"."""
    pipe = Gst.Pipeline.new("viewer")
    w = Gst.ElementFactory.make("webrtcbin", "w")
    w.set_property("bundle-policy", GstWebRTC.WebRTCBundlePolicy.MAX_BUNDLE)
    pipe.add(w)
    recv = GstWebRTC.WebRTCRTPTransceiverDirection.RECVONLY
    w.emit("add-transceiver", recv, Gst.Caps.from_string(RECV_CAPS[codec]))
    w.emit("add-transceiver", recv, Gst.Caps.from_string(AUDIO_CAPS))
    seen = {"video": 0, "audio": 0, "size": "0x0"}

    def on_decoded(_dec, pad):
        caps = pad.get_current_caps() or pad.query_caps(None)
        kind = "video" if caps.to_string().startswith("video/") else "audio"
        sink = Gst.ElementFactory.make("fakesink")
        sink.set_property("signal-handoffs", True)
        sink.set_property("sync", False)

        def handoff(_s, _buf, spad):
            seen[kind] += 1
            if kind == "video":
                st = spad.get_current_caps().get_structure(0)
                seen["size"] = f"{st.get_int('width')[1]}x{st.get_int('height')[1]}"

        sink.connect("handoff", handoff)
        pipe.add(sink)
        sink.sync_state_with_parent()
        pad.link(sink.get_static_pad("sink"))

    def on_pad(_w, pad):
        if pad.get_direction() != Gst.PadDirection.SRC:
            return
        dec = Gst.ElementFactory.make("decodebin")
        dec.connect("pad-added", on_decoded)
        pipe.add(dec)
        dec.sync_state_with_parent()
        pad.link(dec.get_static_pad("sink"))

    w.connect("pad-added", on_pad)

    def report():
        log(f"decoded {seen['video']} {seen['size']} {seen['audio']}")
        return True

    GLib.timeout_add_seconds(1, report)
    return pipe, w


def log(*args):
    print(*args, flush=True)


NEEDED = ["webrtcbin", "nicesrc", "dtlssrtpenc", "srtpenc", "videotestsrc", "openh264enc",
          "h264parse", "rtph264pay", "vp8enc", "rtpvp8pay", "audiotestsrc", "opusenc", "rtpopuspay",
          "decodebin", "rtph264depay", "openh264dec", "rtpvp8depay", "vp8dec", "rtpopusdepay", "opusdec"]


def check():
    """Whether everything the publisher needs is installed (exit status)."""
    Gst.init(None)
    missing = [e for e in NEEDED if Gst.ElementFactory.find(e) is None]
    try:
        subprocess.run(["openssl", "version"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        missing.append("the openssl command")
    if missing:
        sys.exit(f"missing: {', '.join(missing)}")
    log(f"{Gst.version_string()}: every element there")


def main():
    if sys.argv[1:] == ["--check"]:
        return check()
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--codec", choices=sorted(VIDEO), default="h264")
    ap.add_argument("--token", default="")
    ap.add_argument("--seconds", type=float, default=0)
    ap.add_argument("--cert", choices=["ecdsa", "gstreamer"], default="ecdsa",
                    help="DTLS certificate: a fresh ECDSA P-256 one (openssl), or GStreamer's own (RSA)")
    ap.add_argument("--play", action="store_true",
                    help="be a WHEP viewer instead: decode what URL (/whep/ROOM) sends, print \"decoded\" lines")
    ap.add_argument("--keep", action="store_true",
                    help="leave the resource when stopping (no DELETE): the router ends it itself")
    ap.add_argument("--local-ip", default="127.0.0.1",
                    help="gather host candidates on this address only (libnice skips loopback otherwise)")
    args = ap.parse_args()

    Gst.init(None)
    if args.play:
        pipe, w = viewer_pipeline(args.codec)
    else:
        pipe = Gst.parse_launch(
            "webrtcbin name=w bundle-policy=max-bundle "
            "videotestsrc is-live=true pattern=ball "
            "! video/x-raw,width=640,height=360,framerate=30/1 ! videoconvert ! queue "
            f"! {VIDEO[args.codec]} ! w. "
            "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc "
            "! rtpopuspay pt=111 ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! w."
        )
        w = pipe.get_by_name("w")
        # Publish only: both lines (video, audio) sendonly, as WHIP wants.
        for i in range(2):
            w.emit("get-transceiver", i).set_property(
                "direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY)
    fingerprint = None
    if args.cert == "ecdsa":
        pem = ecdsa_pem()
        cert = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", pem, re.S)
        if not cert:
            sys.exit("openssl made no certificate")
        digest = hashlib.sha256(ssl.PEM_cert_to_DER_cert(cert.group(0))).hexdigest().upper()
        fingerprint = ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))

        # webrtcbin makes its DTLS elements as it creates the offer, too
        # late for the offer's fingerprint: the handshake uses this
        # certificate, and post_offer() puts its fingerprint in the offer.
        def on_element(_bin, _sub, el):
            if el.get_factory() and el.get_factory().get_name() == "dtlssrtpdec":
                el.set_property("pem", pem)

        pipe.connect("deep-element-added", on_element)
    ice = w.get_property("ice-agent")
    ice.set_property("ice-tcp", False)
    local = Nice.Address.new()
    if not local.set_from_string(args.local_ip):
        sys.exit(f"--local-ip {args.local_ip}: not an address")
    ice.get_property("agent").add_local_address(local)
    loop = GLib.MainLoop()
    state = {"location": None, "connected": False, "offered": False}
    headers = {"content-type": "application/sdp"}
    if args.token:
        headers["authorization"] = f"Bearer {args.token}"

    def fail(msg):
        log(f"error: {msg}")
        state["failed"] = True
        loop.quit()

    def post_offer():
        sdp = w.get_property("local-description").sdp.as_text()
        if fingerprint:
            sdp = re.sub(r"a=fingerprint:\S+ \S+", f"a=fingerprint:sha-256 {fingerprint}", sdp)
        log("offer")
        if os.environ.get("GST_WHIP_SDP"):
            log(sdp)
        req = urllib.request.Request(args.url, data=sdp.encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                body, status = r.read().decode(), r.status
                loc = r.headers.get("location")
        except urllib.error.HTTPError as e:
            return fail(f"POST {e.code} {e.read().decode().strip()}")
        except OSError as e:
            return fail(f"POST failed: {e}")
        if status != 201 or not loc:
            return fail(f"POST answered {status} without a Location")
        state["location"] = urllib.parse.urljoin(args.url, loc)
        log(f"answer {status} {loc}")
        if os.environ.get("GST_WHIP_SDP"):
            log(body)
        ok, msg = GstSdp.SDPMessage.new_from_text(body)
        if ok != GstSdp.SDPResult.OK:
            return fail("the answer is not SDP")
        answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, msg)
        w.emit("set-remote-description", answer, Gst.Promise.new())

    def on_gathering(*_):
        done = w.get_property("ice-gathering-state") == GstWebRTC.WebRTCICEGatheringState.COMPLETE
        if done and state["offered"] and state["location"] is None:
            GLib.idle_add(lambda: post_offer() and False)

    def on_offer(promise, _):
        reply = promise.get_reply()
        offer = reply.get_value("offer")
        w.emit("set-local-description", offer, Gst.Promise.new())
        state["offered"] = True
        on_gathering()

    def on_negotiation_needed(_):
        w.emit("create-offer", None, Gst.Promise.new_with_change_func(on_offer, None))

    def on_connection(*_):
        s = w.get_property("connection-state")
        if s == GstWebRTC.WebRTCPeerConnectionState.CONNECTED and not state["connected"]:
            state["connected"] = True
            log("connected")
        elif s == GstWebRTC.WebRTCPeerConnectionState.FAILED:
            fail("connection failed")

    def stop(*_):
        loop.quit()
        return False

    def connect_deadline():
        if not state["connected"]:
            fail("not connected within 20 s")
        return False

    w.connect("on-negotiation-needed", on_negotiation_needed)
    w.connect("notify::ice-gathering-state", on_gathering)
    w.connect("notify::connection-state", on_connection)
    GLib.timeout_add_seconds(20, connect_deadline)
    if args.seconds:
        GLib.timeout_add(int(args.seconds * 1000), stop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, stop)

    bus = pipe.get_bus()
    bus.add_signal_watch()
    bus.connect("message::error", lambda _b, m: fail(f"pipeline: {m.parse_error()[0].message}"))
    pipe.set_state(Gst.State.PLAYING)
    loop.run()

    if state["location"] and not args.keep:
        req = urllib.request.Request(state["location"], headers=headers, method="DELETE")
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                log(f"deleted {r.status}")
        except urllib.error.HTTPError as e:
            log(f"deleted {e.code}")
        except OSError as e:
            log(f"delete failed: {e}")
    pipe.set_state(Gst.State.NULL)
    sys.exit(1 if state.get("failed") or not state["connected"] else 0)


if __name__ == "__main__":
    main()
