// WHIP and WHEP from a page with nothing but RTCPeerConnection and fetch,
// as docs/whip.md shows: run.mjs --scenario whip drives it. The page is
// served from another origin than the router's HTTP listener, so every
// request also goes through the router's CORS answers.
(() => {
  const state = { pc: null, location: null, etag: null };

  function waitForGathering(pc, timeoutMs) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve('complete');
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve('timeout'), timeoutMs);
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') {
          clearTimeout(timer);
          resolve('complete');
        }
      });
    });
  }

  // POSTs the offer, applies the answer, remembers the resource.
  async function exchange(pc, url) {
    await pc.setLocalDescription(await pc.createOffer());
    await waitForGathering(pc, 2000);
    const r = await fetch(url, {
      method: 'POST',
      headers: { 'content-type': 'application/sdp' },
      body: pc.localDescription.sdp,
    });
    const body = await r.text();
    if (r.status !== 201) throw new Error(`POST ${url}: ${r.status} ${body}`);
    const location = r.headers.get('location');
    if (!location) throw new Error('201 without a Location header (is it exposed to the page?)');
    state.location = new URL(location, url).href;
    state.etag = r.headers.get('etag');
    await pc.setRemoteDescription({ type: 'answer', sdp: body });
    return { location: state.location, etag: state.etag, offer: pc.localDescription.sdp, answer: body };
  }

  window.whip = {
    // The fake camera (as three simulcast layers) and microphone, via WHIP.
    async publish(url) {
      document.getElementById('role').textContent = 'WHIP publisher';
      const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 1280, height: 720 } });
      document.getElementById('local').srcObject = stream;
      const pc = new RTCPeerConnection();
      state.pc = pc;
      for (const track of stream.getTracks()) {
        const init = { direction: 'sendonly', streams: [stream] };
        if (track.kind === 'video') {
          init.sendEncodings = [
            { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
            { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
            { rid: 'f', maxBitrate: 1500000 },
          ];
        }
        pc.addTransceiver(track, init);
      }
      return exchange(pc, url);
    },

    // Receive-only audio and video, via WHEP.
    async play(url) {
      document.getElementById('role').textContent = 'WHEP viewer';
      const pc = new RTCPeerConnection();
      state.pc = pc;
      pc.addTransceiver('audio', { direction: 'recvonly' });
      pc.addTransceiver('video', { direction: 'recvonly' });
      const remote = new MediaStream();
      pc.ontrack = (e) => {
        remote.addTrack(e.track);
        document.getElementById('remote').srcObject = remote;
      };
      return exchange(pc, url);
    },

    async stats() {
      const pc = state.pc;
      if (!pc) return null;
      const out = { connectionState: pc.connectionState, video: {}, audio: {}, sent: 0 };
      (await pc.getStats()).forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video') {
          out.video = { framesDecoded: s.framesDecoded || 0, width: s.frameWidth || 0, height: s.frameHeight || 0 };
        }
        if (s.type === 'inbound-rtp' && s.kind === 'audio') out.audio = { packets: s.packetsReceived || 0 };
        if (s.type === 'outbound-rtp') out.sent += s.packetsSent || 0;
      });
      return out;
    },

    // A trickle ICE PATCH with the resource's ETag; returns the status.
    async trickle() {
      const ufrag = /a=ice-ufrag:(\S+)/.exec(state.pc.localDescription.sdp)[1];
      const pwd = /a=ice-pwd:(\S+)/.exec(state.pc.localDescription.sdp)[1];
      const frag = `a=ice-ufrag:${ufrag}\r\na=ice-pwd:${pwd}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\na=mid:0\r\na=end-of-candidates\r\n`;
      const r = await fetch(state.location, {
        method: 'PATCH',
        headers: { 'content-type': 'application/trickle-ice-sdpfrag', 'if-match': state.etag },
        body: frag,
      });
      return r.status;
    },

    // DELETE twice: the statuses.
    async leave() {
      const a = await fetch(state.location, { method: 'DELETE' });
      const b = await fetch(state.location, { method: 'DELETE' });
      state.pc.close();
      return [a.status, b.status];
    },
  };
})();
