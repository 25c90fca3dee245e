#!/usr/bin/env python3
"""A WHIP publisher (or, with --play, a WHEP viewer) on aiortc, the Python
WebRTC stack (aioice ICE, cryptography/OpenSSL DTLS with an ECDSA certificate,
pylibsrtp, libvpx and Opus through PyAV): what a Python bot or agent that
joins a kaskade room through WHIP/WHEP runs.

    aiortc_whip.py URL [--play] [--seconds N] [--token T]

Publisher: 640x480 test frames as VP8 and a tone as Opus, one non-trickle
offer to URL (/whip/ROOM). Viewer: receive-only audio and video from URL
(/whep/ROOM), decoded; prints "decoded VIDEO_FRAMES WIDTHxHEIGHT AUDIO_FRAMES"
each second. Both print "answer 201 LOCATION" and "connected", and on
SIGTERM/SIGINT or after --seconds DELETE their resource ("deleted STATUS").
Exits 1 if not connected within 20 s. router/tests/browser/aiortc-whip.mjs
drives it; router/tests/interop/requirements.txt pins its packages.
"""

import argparse
import asyncio
import fractions
import math
import signal
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from av import AudioFrame, VideoFrame


def log(*args):
    print(*args, flush=True)


class Paced(MediaStreamTrack):
    """A source that yields its n-th frame n periods after it started."""

    def __init__(self, period):
        super().__init__()
        self.n = 0
        self.period = period
        self.start = time.monotonic()

    async def tick(self):
        self.n += 1
        wait = self.start + self.n * self.period - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)


class Pattern(Paced):
    """640x480 frames at 30 fps whose brightness moves, so every frame differs."""

    kind = "video"

    def __init__(self):
        super().__init__(1 / 30)

    async def recv(self):
        await self.tick()
        frame = VideoFrame(width=640, height=480, format="yuv420p")
        level = 16 + (self.n * 4) % 200
        frame.planes[0].update(bytes([level]) * frame.planes[0].buffer_size)
        frame.pts = self.n * 3000
        frame.time_base = fractions.Fraction(1, 90000)
        return frame


class Tone(Paced):
    """A 440 Hz tone, 20 ms frames of 48 kHz mono s16."""

    kind = "audio"

    def __init__(self):
        super().__init__(0.02)

    async def recv(self):
        await self.tick()
        samples = 960
        t0 = (self.n - 1) * samples
        pcm = bytearray()
        for i in range(samples):
            v = int(8000 * math.sin(2 * math.pi * 440 * (t0 + i) / 48000))
            pcm += v.to_bytes(2, "little", signed=True)
        frame = AudioFrame(format="s16", layout="mono", samples=samples)
        frame.planes[0].update(bytes(pcm))
        frame.sample_rate = 48000
        frame.pts = t0
        frame.time_base = fractions.Fraction(1, 48000)
        return frame


def http(method, url, headers, body=None):
    """One request: (status, headers, body text)."""
    req = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--play", action="store_true")
    ap.add_argument("--seconds", type=float, default=0)
    ap.add_argument("--token", default="")
    args = ap.parse_args()

    headers = {"content-type": "application/sdp"}
    if args.token:
        headers["authorization"] = f"Bearer {args.token}"
    pc = RTCPeerConnection()
    seen = {"video": 0, "audio": 0, "size": "0x0"}
    connected = asyncio.Event()
    failed = asyncio.Event()
    stop = asyncio.Event()

    @pc.on("connectionstatechange")
    def on_state():
        if pc.connectionState == "connected":
            connected.set()
        elif pc.connectionState == "failed":
            failed.set()

    async def consume(track):
        while True:
            try:
                frame = await track.recv()
            except Exception:  # the track ended
                return
            seen[track.kind] += 1
            if track.kind == "video":
                seen["size"] = f"{frame.width}x{frame.height}"

    if args.play:
        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        pc.on("track", lambda track: asyncio.ensure_future(consume(track)))
    else:
        pc.addTransceiver(Pattern(), direction="sendonly")
        pc.addTransceiver(Tone(), direction="sendonly")

    # aiortc gathers every candidate in setLocalDescription: no trickle.
    await pc.setLocalDescription(await pc.createOffer())
    status, hdrs, body = await asyncio.to_thread(
        http, "POST", args.url, headers, pc.localDescription.sdp.encode())
    location = hdrs.get("location") if hdrs else None
    if status != 201 or not location:
        log(f"error: POST {status} {body.strip()}")
        await pc.close()
        return 1
    log(f"answer {status} {location}")
    resource = urllib.parse.urljoin(args.url, location)
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    code = 0
    try:
        await asyncio.wait_for(asyncio.wait(
            [asyncio.ensure_future(connected.wait()), asyncio.ensure_future(failed.wait())],
            return_when=asyncio.FIRST_COMPLETED), 20)
    except asyncio.TimeoutError:
        pass
    if not connected.is_set():
        log("error: not connected within 20 s" if not failed.is_set() else "error: connection failed")
        code = 1
    else:
        log("connected")
        end = time.monotonic() + args.seconds if args.seconds else None
        while not stop.is_set() and not failed.is_set():
            if end and time.monotonic() > end:
                break
            try:
                await asyncio.wait_for(stop.wait(), 1)
            except asyncio.TimeoutError:
                pass
            if args.play:
                log(f"decoded {seen['video']} {seen['size']} {seen['audio']}")
    status, _, _ = await asyncio.to_thread(http, "DELETE", resource, headers)
    log(f"deleted {status}")
    await pc.close()
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
