#!/usr/bin/python3
"""A WHIP publisher on GStreamer's webrtcbin (libnice ICE, OpenSSL DTLS,
libsrtp): the test pattern as H.264 (openh264, constrained baseline, as OBS
sends) or VP8, and a sine tone as Opus, POSTed to a WHIP URL without trickle
ICE (the offer waits for gathering, as RFC 9725 allows).

    gst_whip.py URL [--codec h264|vp8] [--token T] [--seconds N]

Prints one line per milestone ("offer", "answer 201 LOCATION", "connected",
"sent N"), and on SIGTERM/SIGINT or after --seconds DELETEs its resource and
prints "deleted STATUS". Exits 1 if it does not connect within 20 s.
router/tests/browser/gst-whip.mjs drives it; docs/whip.md shows the pipeline.
"""

import argparse
import signal
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


def log(*args):
    print(*args, flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--codec", choices=sorted(VIDEO), default="h264")
    ap.add_argument("--token", default="")
    ap.add_argument("--seconds", type=float, default=0)
    ap.add_argument("--pem", default="",
                    help="certificate and private key (PEM) for DTLS instead of GStreamer's RSA one")
    ap.add_argument("--local-ip", default="127.0.0.1",
                    help="gather host candidates on this address only (libnice skips loopback otherwise)")
    args = ap.parse_args()

    Gst.init(None)
    pipe = Gst.parse_launch(
        "webrtcbin name=w bundle-policy=max-bundle "
        "videotestsrc is-live=true pattern=ball "
        "! video/x-raw,width=640,height=360,framerate=30/1 ! videoconvert ! queue "
        f"! {VIDEO[args.codec]} ! w. "
        "audiotestsrc is-live=true wave=sine ! audioconvert ! audioresample ! opusenc "
        "! rtpopuspay pt=111 ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111,clock-rate=48000 ! w."
    )
    w = pipe.get_by_name("w")
    if args.pem:
        with open(args.pem) as f:
            pem = f.read()

        # webrtcbin makes its DTLS elements at negotiation; their "pem" is
        # the transport's certificate, whose fingerprint goes in the offer.
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
        log("offer")
        if __import__("os").environ.get("GST_WHIP_SDP"):
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
        if __import__("os").environ.get("GST_WHIP_SDP"):
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

    def report():
        def got(promise, _):
            stats = promise.get_reply()
            sent = 0
            if stats is not None:
                def each(_field, value, _):
                    nonlocal sent
                    if isinstance(value, Gst.Structure) and value.get_name() == "application/x-webrtc-stats":
                        ok, kind = value.get_enum("type", GstWebRTC.WebRTCStatsType.__gtype__)
                        if ok and kind == GstWebRTC.WebRTCStatsType.OUTBOUND_RTP:
                            ok, n = value.get_uint64("packets-sent")
                            sent += n if ok else 0
                    return True
                stats.foreach(each, None)
            log(f"sent {sent}")
        w.emit("get-stats", None, Gst.Promise.new_with_change_func(got, None))
        return True

    def stop(*_):
        loop.quit()
        return False

    def connect_deadline():
        if not state["connected"]:
            fail("not connected within 20 s")
        return False

    # Publish only: every line sendonly, as WHIP wants.
    w.connect(
        "on-new-transceiver",
        lambda _w, t: t.set_property("direction", GstWebRTC.WebRTCRTPTransceiverDirection.SENDONLY),
    )
    w.connect("on-negotiation-needed", on_negotiation_needed)
    w.connect("notify::ice-gathering-state", on_gathering)
    w.connect("notify::connection-state", on_connection)
    GLib.timeout_add_seconds(20, connect_deadline)
    GLib.timeout_add_seconds(2, report)
    if args.seconds:
        GLib.timeout_add(int(args.seconds * 1000), stop)
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, stop)

    bus = pipe.get_bus()
    bus.add_signal_watch()
    bus.connect("message::error", lambda _b, m: fail(f"pipeline: {m.parse_error()[0].message}"))
    pipe.set_state(Gst.State.PLAYING)
    loop.run()

    if state["location"]:
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
