// The in-browser half of the kaskade end-to-end test. run.mjs drives it
// through `page.evaluate(() => window.kaskade.<fn>(...))`; the page itself
// never talks to the router's API: SDP goes through run.mjs (the integrator),
// media goes straight from the browser to the router over UDP.
'use strict';

(() => {
  const state = {
    role: null,
    pc: null,
    dc: null,
    dcOpened: false,
    dcMessages: 0,
    localStream: null,
    remoteTracks: [],
    videoSizes: [], // {at (ms since the epoch), width, height} of the remote video
    // With prepareSubscriber({ frameLog: true }), see watchFrames:
    firstFrameAt: null, // Date.now() when the first remote video frame was decoded
    framesSeen: 0, // remote video frames read
    frameLog: [], // {hash, got, received} of each
  };

  function log(...args) {
    console.log(`[${state.role || 'page'}]`, ...args);
  }

  // End-to-end encryption (e2ee-worker.js): one worker per page holds the
  // key and runs the frame transforms of every sender or receiver.
  let e2ee = null;
  async function e2eeStart(rawKey) {
    const worker = new Worker('/e2ee-worker.js');
    const ready = new Promise((resolve, reject) => {
      worker.onmessage = (e) => (e.data && e.data.ready ? resolve() : log('e2ee worker', JSON.stringify(e.data)));
      worker.onerror = (e) => reject(new Error(`e2ee worker: ${e.message}`));
    });
    worker.postMessage({ rawKey: new Uint8Array(rawKey).buffer });
    await ready;
    e2ee = { worker };
    log('e2ee: frame transforms on, AES-GCM');
  }
  function e2eeAttach(senderOrReceiver, side, kind) {
    senderOrReceiver.transform = new RTCRtpScriptTransform(e2ee.worker, { side, kind });
  }
  function e2eeCounts() {
    if (!e2ee) return Promise.resolve(null);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(null), 2000);
      e2ee.worker.onmessage = (e) => {
        if (e.data && e.data.counts) {
          clearTimeout(timer);
          resolve(e.data.counts);
        } else if (e.data) {
          log('e2ee worker', JSON.stringify(e.data));
        }
      };
      e2ee.worker.postMessage({ counts: true });
    });
  }

  function newPeerConnection(role) {
    state.role = role;
    // No ICE servers: host candidates only; the router is ICE-lite.
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
    pc.addEventListener('icecandidate', (e) => {
      if (e.candidate && e.candidate.candidate) log('local candidate', e.candidate.candidate);
    });
    pc.addEventListener('icegatheringstatechange', () => log('iceGatheringState', pc.iceGatheringState));
    pc.addEventListener('iceconnectionstatechange', () => log('iceConnectionState', pc.iceConnectionState));
    pc.addEventListener('connectionstatechange', () => log('connectionState', pc.connectionState));
    pc.addEventListener('signalingstatechange', () => log('signalingState', pc.signalingState));
    state.pc = pc;
    return pc;
  }

  // The router is ICE-lite and puts its own candidate in its answer; our host
  // candidates go into the offer, so let gathering finish first (bounded).
  function waitForGathering(pc, timeoutMs) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve('complete');
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        pc.removeEventListener('icegatheringstatechange', onChange);
        resolve('timeout');
      }, timeoutMs);
      function onChange() {
        if (pc.iceGatheringState === 'complete') {
          clearTimeout(timer);
          pc.removeEventListener('icegatheringstatechange', onChange);
          resolve('complete');
        }
      }
      pc.addEventListener('icegatheringstatechange', onChange);
    });
  }

  function requirePc() {
    if (!state.pc) throw new Error('no RTCPeerConnection yet');
    return state.pc;
  }

  // Simulcast layers, lowest first (what run.mjs --scenario simulcast expects).
  const SIMULCAST_ENCODINGS = [
    { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150000 },
    { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500000 },
    { rid: 'f', maxBitrate: 1500000 },
  ];

  // opts.simulcast: the camera at 1280x720, sent as the three layers above
  // (with the microphone only if opts.audio). opts.e2eeKey: 16 key bytes,
  // every frame is encrypted end to end (e2ee-worker.js).
  async function publish(opts = {}) {
    const simulcast = !!opts.simulcast;
    if (opts.e2eeKey) await e2eeStart(opts.e2eeKey);
    const stream = await navigator.mediaDevices.getUserMedia(simulcast
      ? { audio: !!opts.audio, video: { width: 1280, height: 720 } }
      : { audio: true, video: { width: 320, height: 240, frameRate: 15 } });
    state.localStream = stream;
    document.getElementById('role').textContent = 'publisher';
    document.getElementById('local').srcObject = stream;
    const pc = newPeerConnection('pub');
    for (const track of stream.getTracks()) {
      log('publishing', track.kind, track.label, JSON.stringify(track.getSettings()));
      const t = simulcast && track.kind === 'video'
        ? pc.addTransceiver(track, {
          direction: 'sendonly',
          streams: [stream],
          sendEncodings: SIMULCAST_ENCODINGS.map((e) => ({ ...e })),
        })
        : pc.addTransceiver(track, { direction: 'sendonly', streams: [stream] });
      if (e2ee) e2eeAttach(t.sender, 'send', track.kind);
    }
    await pc.setLocalDescription(await pc.createOffer());
    const gathering = await waitForGathering(pc, opts.gatherTimeoutMs || 3000);
    log('offer ready, gathering', gathering);
    return {
      sdp: pc.localDescription.sdp,
      gathering,
      tracks: stream.getTracks().map((t) => {
        const s = t.getSettings();
        return { kind: t.kind, label: t.label, width: s.width, height: s.height, frameRate: s.frameRate };
      }),
      encodings: simulcast
        ? pc.getSenders().filter((x) => x.track && x.track.kind === 'video')
          .flatMap((x) => x.getParameters().encodings || [])
          .map((e) => ({ rid: e.rid, scaleResolutionDownBy: e.scaleResolutionDownBy, maxBitrate: e.maxBitrate }))
        : [],
    };
  }

  // Reads the decoded frames of a remote video track (a MediaStreamTrackProcessor,
  // which needs no rendering: in headless Chromium only some pages render
  // regularly). Records when the first one came (Date.now()). With
  // `hashFrames`, logs for each frame a hash of its luma plane and when the
  // page got it (and, if Chromium tells, when its last packet arrived), in ms
  // since the epoch on the browser's clock (performance.timeOrigin based,
  // comparable between pages): two subscribers of the same track decode the
  // same bitstream, so equal hashes are the same frame, and their times
  // compare the two paths.
  async function watchFrames(track, hashFrames) {
    if (typeof MediaStreamTrackProcessor !== 'function') {
      log('MediaStreamTrackProcessor is not available: no frame timing');
      return;
    }
    const reader = new MediaStreamTrackProcessor({ track }).readable.getReader();
    let buf = null;
    let hashFailed = !hashFrames;
    for (;;) {
      let r;
      try {
        r = await reader.read();
      } catch (e) {
        log('reading the remote video frames failed', String(e));
        return;
      }
      if (r.done) return;
      const frame = r.value;
      const got = performance.timeOrigin + performance.now();
      state.framesSeen += 1;
      if (state.firstFrameAt === null) {
        state.firstFrameAt = Date.now();
        log('first remote video frame', `${frame.displayWidth}x${frame.displayHeight}`, frame.format);
      }
      if (!hashFailed) {
        try {
          const size = frame.allocationSize();
          if (!buf || buf.length < size) buf = new Uint8Array(size);
          const layout = await frame.copyTo(buf);
          const { offset, stride } = layout[0]; // luma (I420, NV12, ...)
          let h = 0x811c9dc5; // FNV-1a over the luma plane
          for (let y = 0; y < frame.codedHeight; y += 2) {
            const row = offset + y * stride;
            for (let x = 0; x < frame.codedWidth; x += 2) h = Math.imul(h ^ buf[row + x], 16777619);
          }
          const md = typeof frame.metadata === 'function' ? frame.metadata() : {};
          state.frameLog.push({
            hash: (h >>> 0).toString(16),
            got,
            received: typeof md.receiveTime === 'number' ? performance.timeOrigin + md.receiveTime : null,
          });
          if (state.frameLog.length > 2000) state.frameLog.shift();
        } catch (e) {
          hashFailed = true;
          log('cannot hash the remote video frames', String(e));
        }
      }
      frame.close();
    }
  }

  function prepareDataChannel(pc) {
    const dc = pc.createDataChannel('kaskade');
    state.dc = dc;
    dc.addEventListener('open', () => {
      state.dcOpened = true;
      log('datachannel open');
      try {
        dc.send('hello from the subscriber');
      } catch (e) {
        log('datachannel send failed', String(e));
      }
    });
    dc.addEventListener('message', () => {
      state.dcMessages += 1;
    });
    dc.addEventListener('close', () => log('datachannel close'));
    dc.addEventListener('error', (e) => log('datachannel error', String(e.error || e)));
  }

  // opts.frameLog: hash every remote video frame (see watchFrames).
  // opts.bootstrap: 'datachannel' (default) or 'recvonly' (a receive-only
  // video transceiver gives the first offer its transport instead).
  // opts.e2eeKey: decrypt every received frame with this key.
  async function prepareSubscriber(opts = {}) {
    document.getElementById('role').textContent = 'subscriber';
    if (opts.e2eeKey) await e2eeStart(opts.e2eeKey);
    const pc = newPeerConnection('sub');
    if (opts.bootstrap === 'recvonly') {
      pc.addTransceiver('video', { direction: 'recvonly' });
      log('bootstrap: receive-only video transceiver, no data channel');
    } else {
      prepareDataChannel(pc);
    }
    pc.addEventListener('track', (e) => {
      const track = e.track;
      log('remote track', track.kind, 'mid', e.transceiver && e.transceiver.mid);
      if (e2ee) e2eeAttach(e.receiver, 'recv', track.kind);
      state.remoteTracks.push({ kind: track.kind, mid: e.transceiver ? e.transceiver.mid : null });
      // Give every remote track a sink so Chromium decodes and plays it out.
      const el = document.createElement(track.kind === 'video' ? 'video' : 'audio');
      if (track.kind === 'video') {
        // When each new picture size was first shown (simulcast layer switches).
        el.addEventListener('resize', () => {
          state.videoSizes.push({ at: Date.now(), width: el.videoWidth, height: el.videoHeight });
          if (state.videoSizes.length > 100) state.videoSizes.shift();
          log('remote video size', `${el.videoWidth}x${el.videoHeight}`);
        });
      }
      el.autoplay = true;
      el.muted = track.kind === 'video';
      el.playsInline = true;
      el.srcObject = new MediaStream([track]);
      document.body.appendChild(el);
      el.play().catch((err) => log('play() rejected for', track.kind, String(err)));
      if (track.kind === 'video' && opts.frameLog) watchFrames(track, true);
    });
    await pc.setLocalDescription(await pc.createOffer());
    const gathering = await waitForGathering(pc, opts.gatherTimeoutMs || 3000);
    log('offer ready, gathering', gathering);
    return { sdp: pc.localDescription.sdp, gathering };
  }

  async function acceptAnswer(sdp) {
    await requirePc().setRemoteDescription({ type: 'answer', sdp });
  }

  async function answerOffer(sdp) {
    const pc = requirePc();
    await pc.setRemoteDescription({ type: 'offer', sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    return pc.localDescription.sdp;
  }

  async function stats() {
    const pc = state.pc;
    if (!pc) return null;
    const report = await pc.getStats();
    const byId = new Map();
    report.forEach((s) => byId.set(s.id, s));
    const codecOf = (s) => {
      const c = s.codecId && byId.get(s.codecId);
      return c ? c.mimeType : undefined;
    };
    const add = (a, b) => (a || 0) + (b || 0);
    const out = {
      connectionState: pc.connectionState,
      iceConnectionState: pc.iceConnectionState,
      signalingState: pc.signalingState,
      dataChannel: state.dc ? state.dc.readyState : null,
      dataChannelOpened: state.dcOpened,
      remoteTracks: state.remoteTracks.length,
      inVideo: null,
      inAudio: null,
      outVideo: null,
      outAudio: null,
      transport: null,
      pair: null,
      videoSizes: state.videoSizes.slice(-20),
      e2ee: await e2eeCounts(),
    };
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        const v = out.inVideo || (out.inVideo = { streams: 0 });
        v.streams += 1;
        v.codec = codecOf(s) || v.codec;
        v.packetsReceived = add(v.packetsReceived, s.packetsReceived);
        v.packetsLost = add(v.packetsLost, s.packetsLost);
        v.bytesReceived = add(v.bytesReceived, s.bytesReceived);
        v.framesReceived = add(v.framesReceived, s.framesReceived);
        v.framesDecoded = add(v.framesDecoded, s.framesDecoded);
        v.keyFramesDecoded = add(v.keyFramesDecoded, s.keyFramesDecoded);
        v.framesDropped = add(v.framesDropped, s.framesDropped);
        v.nackCount = add(v.nackCount, s.nackCount);
        v.pliCount = add(v.pliCount, s.pliCount);
        v.firCount = add(v.firCount, s.firCount);
        if (s.frameWidth) v.size = `${s.frameWidth}x${s.frameHeight}`;
        if (s.frameWidth) v.frameWidth = s.frameWidth;
        if (s.frameHeight) v.frameHeight = s.frameHeight;
        if (s.framesPerSecond !== undefined) v.framesPerSecond = s.framesPerSecond;
      } else if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        const a = out.inAudio || (out.inAudio = { streams: 0 });
        a.streams += 1;
        a.codec = codecOf(s) || a.codec;
        a.packetsReceived = add(a.packetsReceived, s.packetsReceived);
        a.packetsLost = add(a.packetsLost, s.packetsLost);
        a.bytesReceived = add(a.bytesReceived, s.bytesReceived);
        a.totalSamplesReceived = add(a.totalSamplesReceived, s.totalSamplesReceived);
        a.concealedSamples = add(a.concealedSamples, s.concealedSamples);
      } else if (s.type === 'outbound-rtp' && s.kind === 'video') {
        const v = out.outVideo || (out.outVideo = { streams: 0 });
        v.streams += 1;
        v.codec = codecOf(s) || v.codec;
        v.packetsSent = add(v.packetsSent, s.packetsSent);
        v.bytesSent = add(v.bytesSent, s.bytesSent);
        v.framesEncoded = add(v.framesEncoded, s.framesEncoded);
        v.keyFramesEncoded = add(v.keyFramesEncoded, s.keyFramesEncoded);
        v.nackCount = add(v.nackCount, s.nackCount);
        v.pliCount = add(v.pliCount, s.pliCount);
        v.firCount = add(v.firCount, s.firCount);
        if (s.qualityLimitationReason) v.qualityLimitationReason = s.qualityLimitationReason;
        if (s.frameWidth) v.size = `${s.frameWidth}x${s.frameHeight}`;
        // One entry per simulcast layer (rid), in the order getStats lists them.
        (v.layers || (v.layers = [])).push({
          rid: s.rid,
          active: s.active,
          size: s.frameWidth ? `${s.frameWidth}x${s.frameHeight}` : undefined,
          frameWidth: s.frameWidth,
          framesPerSecond: s.framesPerSecond,
          bytesSent: s.bytesSent,
          framesEncoded: s.framesEncoded,
          keyFramesEncoded: s.keyFramesEncoded,
          pliCount: s.pliCount,
          targetBitrate: s.targetBitrate,
          qualityLimitationReason: s.qualityLimitationReason,
          encoderImplementation: s.encoderImplementation,
        });
      } else if (s.type === 'outbound-rtp' && s.kind === 'audio') {
        const a = out.outAudio || (out.outAudio = { streams: 0 });
        a.streams += 1;
        a.codec = codecOf(s) || a.codec;
        a.packetsSent = add(a.packetsSent, s.packetsSent);
        a.bytesSent = add(a.bytesSent, s.bytesSent);
      } else if (s.type === 'transport') {
        out.transport = {
          dtlsState: s.dtlsState,
          iceState: s.iceState,
          iceRole: s.iceRole,
          dtlsCipher: s.dtlsCipher,
          srtpCipher: s.srtpCipher,
          tlsVersion: s.tlsVersion,
          bytesSent: s.bytesSent,
          bytesReceived: s.bytesReceived,
        };
        const pair = s.selectedCandidatePairId && byId.get(s.selectedCandidatePairId);
        if (pair) {
          const l = byId.get(pair.localCandidateId);
          const r = byId.get(pair.remoteCandidateId);
          out.pair = {
            state: pair.state,
            nominated: pair.nominated,
            local: l ? `${l.address}:${l.port}/${l.protocol} ${l.candidateType}` : undefined,
            remote: r ? `${r.address}:${r.port}/${r.protocol} ${r.candidateType}` : undefined,
            // "udp" or "tcp" (with tcpType "active", "passive" or "so").
            localProtocol: l ? l.protocol : undefined,
            remoteProtocol: r ? r.protocol : undefined,
            localTcpType: l ? l.tcpType : undefined,
            rtt: pair.currentRoundTripTime,
            availableOutgoingBitrate: pair.availableOutgoingBitrate,
          };
        }
      }
    });
    return out;
  }

  // The remote video frames read so far (prepareSubscriber({ frameLog: true }));
  // `since`: only the log entries of frames read after it.
  function frames(since = 0) {
    return {
      firstFrameAt: state.firstFrameAt,
      seen: state.framesSeen,
      log: state.frameLog.filter((f) => f.got >= since),
    };
  }

  function close() {
    if (state.pc) state.pc.close();
    if (state.localStream) state.localStream.getTracks().forEach((t) => t.stop());
  }

  window.kaskade = { publish, prepareSubscriber, acceptAnswer, answerOffer, stats, frames, close };
  console.log('[page] kaskade test page loaded');
})();
