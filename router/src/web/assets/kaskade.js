// kaskade.js: the browser side of a kaskade session, without dependencies.
//
// It does what every integrator writes once: the offer/answer rounds with
// the router (through YOUR signalling: you pass a `signal` function that
// relays a call to your backend, which calls kaskade's SessionService),
// subscribing to other participants' tracks as the room's events announce
// them and unsubscribing when they go, renegotiation, layer preferences
// (UpdateSubscription) and per-track statistics.
//
//   import { KaskadeSession } from '/kaskade.js';
//   const session = new KaskadeSession({
//     // method: 'CreateSession' | 'Renegotiate' | 'Subscribe' | 'Unsubscribe' |
//     //         'SetAnswer' | 'UpdateSubscription' | 'CloseSession';
//     // request/response: the gRPC messages in the protobuf JSON mapping
//     // (camelCase). Your backend adds roomId/participantId to CreateSession.
//     signal: (method, request) => myBackend.call(method, request),
//   });
//   session.addEventListener('track', (e) => show(e.detail));   // a remote track arrived
//   session.addEventListener('trackended', (e) => hide(e.detail.trackId));
//   const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
//   await session.join(stream);          // publishes (video as simulcast), answers
//   session.addRoom(room);               // GetRoom's room: subscribes to what is there
//   events.onmessage = (m) => session.handleEvent(JSON.parse(m.data)); // WatchEvents, relayed
//
// Served by the router at /kaskade.js; documented in docs/api.md.

/** Simulcast layers, lowest first: what `join` sends for a camera. */
export const SIMULCAST_ENCODINGS = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', maxBitrate: 1_500_000 },
];

/** Layer preferences `setLayer` accepts besides a layer index. */
const LAYER_NAMES = { low: 0, mid: 1, high: 2, auto: 31 };

/** An error from the router, as the signalling reported it. */
export class KaskadeError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
  }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * A `signal` function that POSTs each call as JSON to `${url}/${method}`:
 * the router's demo endpoint (`/demo/api`), or a backend of yours that
 * takes calls the same way. With `token` (a room token) every call carries
 * `Authorization: Bearer <token>`; `extend(method, request)` may add fields
 * (the demo adds roomId and participantId to CreateSession). Errors are
 * KaskadeErrors with the router's code (`HTTP_<status>` for plain text).
 */
export function httpSignal(url, { token = null, extend = (method, request) => request } = {}) {
  return async (method, request) => {
    const headers = { 'content-type': 'application/json' };
    if (token) headers.authorization = `Bearer ${token}`;
    const resp = await fetch(`${url}/${method}`, {
      method: 'POST',
      headers,
      body: JSON.stringify(extend(method, request)),
      keepalive: method === 'CloseSession',
    });
    const text = await resp.text();
    if (!resp.ok) {
      let err = { code: `HTTP_${resp.status}`, message: text.trim() };
      try { err = JSON.parse(text); } catch { /* plain text */ }
      throw new KaskadeError(err.code, `${method}: ${err.message}`);
    }
    return JSON.parse(text);
  };
}

/**
 * One participant's session: one RTCPeerConnection to the router, which
 * publishes the local tracks and receives the subscribed ones.
 *
 * Events (CustomEvent, details below):
 * - `track`: {trackId, sessionId, participantId, kind, track, stream} a remote track arrived
 * - `trackended`: {trackId, sessionId, participantId, kind} it went away
 * - `participantleft`: {sessionId, participantId}
 * - `speakers`: {speakers: [{sessionId, participantId, trackId, level}]} loudest first
 * - `layer`: {trackId, layer, reason} the simulcast layer this session receives changed
 * - `connectionstatechange`: {state}
 * - `error`: {error} a background negotiation failed
 */
export class KaskadeSession extends EventTarget {
  /**
   * @param {object} opts
   * @param {(method: string, request: object) => Promise<object>} opts.signal
   *   relays a SessionService call to your backend and resolves with its
   *   response; rejects with an Error whose `code` is the gRPC code name
   *   (e.g. 'FAILED_PRECONDITION') when the router refused it.
   * @param {boolean} [opts.autoSubscribe=true] subscribe to every other
   *   participant's tracks as they are announced.
   * @param {boolean} [opts.simulcast=true] send camera video as three layers.
   * @param {RTCConfiguration} [opts.rtcConfig] extra RTCPeerConnection settings.
   */
  constructor({ signal, autoSubscribe = true, simulcast = true, rtcConfig = {} }) {
    super();
    if (typeof signal !== 'function') throw new TypeError('KaskadeSession needs a signal(method, request) function');
    this.signal = signal;
    this.autoSubscribe = autoSubscribe;
    this.simulcast = simulcast;
    this.rtcConfig = rtcConfig;
    this.pc = null;
    this.sessionId = null;
    /** trackId -> Track (protobuf JSON) of every track known in the room. */
    this.tracks = new Map();
    /** trackId -> {mid, receiver, track, stream, layer} of subscribed tracks. */
    this.subscriptions = new Map();
    /** Own published tracks (trackId -> Track). */
    this.published = new Map();
    this._midToTrack = new Map();
    this._queue = Promise.resolve();
    this._wantSub = new Set();
    this._wantUnsub = new Set();
    this._flushTimer = null;
    this._prevStats = new Map();
    this._closed = false;
  }

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  /** Runs negotiation steps one at a time (one offer/answer round in flight). */
  _serial(fn) {
    const run = this._queue.then(fn);
    this._queue = run.catch(() => {});
    return run;
  }

  /** A signalling call, retried while the router has another round in progress. */
  async _call(method, request) {
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.signal(method, request);
      } catch (e) {
        if (e && e.code === 'FAILED_PRECONDITION' && attempt < 5) {
          await sleep(100 * (attempt + 1));
          continue;
        }
        throw e;
      }
    }
  }

  /**
   * Creates the session: publishes `stream`'s tracks (none: receive only)
   * and completes the first offer/answer round. Resolves with CreateSession's
   * response ({sessionId, sdpAnswer, tracks}).
   */
  async join(stream = null, { encodings = SIMULCAST_ENCODINGS } = {}) {
    if (this.pc) throw new Error('join() was called already');
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require', ...this.rtcConfig });
    this.pc = pc;
    pc.addEventListener('connectionstatechange', () => this._emit('connectionstatechange', { state: pc.connectionState }));
    pc.addEventListener('track', (e) => this._onTrack(e));
    const tracks = stream ? stream.getTracks() : [];
    for (const track of tracks) {
      const init = { direction: 'sendonly', streams: [stream] };
      if (track.kind === 'video' && this.simulcast) init.sendEncodings = encodings.map((x) => ({ ...x }));
      pc.addTransceiver(track, init);
    }
    if (tracks.length === 0) {
      // Nothing to publish: a receive-only line gives the offer a transport
      // (cheaper for the router than a data channel).
      pc.addTransceiver('video', { direction: 'recvonly' });
    }
    return this._serial(async () => {
      await pc.setLocalDescription(await pc.createOffer());
      const resp = await this._call('CreateSession', { sdpOffer: pc.localDescription.sdp });
      this.sessionId = resp.sessionId;
      for (const t of resp.tracks || []) this.published.set(t.trackId, t);
      await pc.setRemoteDescription({ type: 'answer', sdp: resp.sdpAnswer });
      this._scheduleFlush();
      return resp;
    });
  }

  /** Publishes one more track (a new offer/answer round). */
  async publish(track, stream = null) {
    const init = { direction: 'sendonly', streams: stream ? [stream] : [] };
    if (track.kind === 'video' && this.simulcast) init.sendEncodings = SIMULCAST_ENCODINGS.map((x) => ({ ...x }));
    this.pc.addTransceiver(track, init);
    return this._renegotiate();
  }

  /** Stops publishing a track (a new offer/answer round). */
  async unpublish(track) {
    for (const t of this.pc.getTransceivers()) {
      if (t.sender.track === track) {
        t.sender.replaceTrack(null);
        t.stop();
      }
    }
    return this._renegotiate();
  }

  _renegotiate() {
    return this._serial(async () => {
      const pc = this.pc;
      await pc.setLocalDescription(await pc.createOffer());
      const resp = await this._call('Renegotiate', { sessionId: this.sessionId, sdpOffer: pc.localDescription.sdp });
      for (const t of resp.addedTracks || []) this.published.set(t.trackId, t);
      for (const id of resp.removedTrackIds || []) this.published.delete(id);
      await pc.setRemoteDescription({ type: 'answer', sdp: resp.sdpAnswer });
      return resp;
    });
  }

  /** The room as GetRoom returns it: learns its tracks (and subscribes to them). */
  addRoom(room) {
    for (const t of (room && room.tracks) || []) this._learnTrack(t);
  }

  /**
   * One event of the room (WatchEvents, relayed by your backend, in the
   * protobuf JSON mapping: {roomId, atUnixMs, trackPublished: {...}, ...}).
   */
  handleEvent(ev) {
    if (!ev || this._closed) return;
    if (ev.trackPublished && ev.trackPublished.track) {
      this._learnTrack(ev.trackPublished.track);
    } else if (ev.trackUnpublished) {
      this._forgetTrack(ev.trackUnpublished.trackId);
    } else if (ev.renegotiationNeeded) {
      const r = ev.renegotiationNeeded;
      if (r.sessionId === this.sessionId) {
        for (const id of r.trackIds || []) this._forgetTrack(id);
      }
    } else if (ev.sessionClosed) {
      const c = ev.sessionClosed;
      for (const [id, t] of this.tracks) if (t.sessionId === c.sessionId) this._forgetTrack(id);
      if (c.sessionId !== this.sessionId) this._emit('participantleft', { sessionId: c.sessionId, participantId: c.participantId });
    } else if (ev.layerChanged) {
      const l = ev.layerChanged;
      const sub = this.subscriptions.get(l.trackId);
      if (l.sessionId === this.sessionId && sub) {
        sub.layer = l.newLayer;
        this._emit('layer', { trackId: l.trackId, layer: l.newLayer, reason: l.reason });
      }
    } else if (ev.activeSpeakersChanged) {
      this._emit('speakers', { speakers: ev.activeSpeakersChanged.speakers || [] });
    }
  }

  _learnTrack(t) {
    if (!t || !t.trackId || this.tracks.has(t.trackId)) return;
    this.tracks.set(t.trackId, t);
    if (this.autoSubscribe && !this._isOwn(t)) this.subscribe([t.trackId]);
  }

  _isOwn(t) {
    return this.published.has(t.trackId) || (this.sessionId !== null && t.sessionId === this.sessionId);
  }

  _forgetTrack(trackId) {
    const t = this.tracks.get(trackId);
    this.tracks.delete(trackId);
    this._wantSub.delete(trackId);
    if (this.subscriptions.has(trackId)) {
      const sub = this.subscriptions.get(trackId);
      this._emit('trackended', { trackId, sessionId: t && t.sessionId, participantId: t && t.participantId, kind: sub.kind });
      this._wantUnsub.add(trackId);
      this._scheduleFlush();
    }
  }

  /** Subscribes to tracks (batched into one round with others asked for meanwhile). */
  subscribe(trackIds) {
    for (const id of trackIds) {
      if (!this.subscriptions.has(id)) this._wantSub.add(id);
    }
    this._scheduleFlush();
  }

  /** Unsubscribes from tracks. */
  unsubscribe(trackIds) {
    for (const id of trackIds) {
      this._wantSub.delete(id);
      if (this.subscriptions.has(id)) this._wantUnsub.add(id);
    }
    this._scheduleFlush();
  }

  _scheduleFlush() {
    if (this._flushTimer || this._closed) return;
    // Tracks announced together (a participant's audio and video) go in one round.
    this._flushTimer = setTimeout(() => {
      this._flushTimer = null;
      this._serial(() => this._flush()).catch((error) => this._emit('error', { error }));
    }, 20);
  }

  async _flush() {
    if (!this.sessionId || this._closed) return;
    const unsub = [...this._wantUnsub].filter((id) => this.subscriptions.has(id));
    this._wantUnsub.clear();
    if (unsub.length) {
      const resp = await this._call('Unsubscribe', { sessionId: this.sessionId, trackIds: unsub });
      for (const id of unsub) {
        const sub = this.subscriptions.get(id);
        if (sub) this._midToTrack.delete(sub.mid);
        this.subscriptions.delete(id);
        this._prevStats.delete(id);
      }
      await this._answer(resp.sdpOffer);
    }
    // Own tracks may have been announced before CreateSession answered.
    const sub = [...this._wantSub].filter((id) => this.tracks.has(id) && !this.subscriptions.has(id) && !this._isOwn(this.tracks.get(id)));
    this._wantSub.clear();
    if (sub.length) {
      let resp;
      try {
        resp = await this._call('Subscribe', { sessionId: this.sessionId, trackIds: sub });
      } catch (e) {
        // A track that went away meanwhile fails the whole call (the router
        // names it): forget it and subscribe to the others.
        const gone = e && e.code === 'NOT_FOUND' && /track (TR[0-9A-Fa-f]+)/.exec(e.message || '');
        if (gone && sub.includes(gone[1])) {
          this.tracks.delete(gone[1]);
          for (const id of sub) if (id !== gone[1]) this._wantSub.add(id);
          return this._flush();
        }
        throw e;
      }
      for (const s of resp.subscriptions || []) {
        const t = this.tracks.get(s.trackId);
        this._midToTrack.set(s.mid, s.trackId);
        this.subscriptions.set(s.trackId, { mid: s.mid, kind: t ? kindName(t.kind) : undefined, receiver: null, track: null, stream: null, layer: null, pref: 'auto' });
      }
      await this._answer(resp.sdpOffer);
    }
  }

  async _answer(sdpOffer) {
    const pc = this.pc;
    await pc.setRemoteDescription({ type: 'offer', sdp: sdpOffer });
    await pc.setLocalDescription(await pc.createAnswer());
    await this._call('SetAnswer', { sessionId: this.sessionId, sdpAnswer: pc.localDescription.sdp });
  }

  _onTrack(e) {
    const mid = e.transceiver && e.transceiver.mid;
    const trackId = this._midToTrack.get(mid);
    const sub = trackId && this.subscriptions.get(trackId);
    if (!sub) return; // the bootstrap line, or a subscription already gone
    const t = this.tracks.get(trackId) || {};
    sub.receiver = e.receiver;
    sub.track = e.track;
    sub.stream = new MediaStream([e.track]);
    sub.kind = e.track.kind;
    this._emit('track', {
      trackId, sessionId: t.sessionId, participantId: t.participantId, kind: e.track.kind,
      track: e.track, stream: sub.stream,
    });
  }

  /**
   * The most a subscribed video track may be sent: 'auto' (the router
   * picks by bandwidth), 'low' | 'mid' | 'high' or a layer index (0 =
   * lowest), or 'off' (paused). Resolves with the subscription's state.
   */
  async setLayer(trackId, layer) {
    const req = { sessionId: this.sessionId, trackId };
    if (layer === 'off') {
      req.paused = true;
    } else {
      const n = typeof layer === 'number' ? layer : LAYER_NAMES[layer];
      if (n === undefined) throw new TypeError(`unknown layer ${layer}: use auto, low, mid, high, off or a number`);
      req.paused = false;
      req.maxSpatialLayer = n;
    }
    const resp = await this._call('UpdateSubscription', req);
    const sub = this.subscriptions.get(trackId);
    if (sub) sub.pref = layer;
    return resp.subscription;
  }

  /**
   * Per subscribed track: {trackId, participantId, kind, width, height, fps,
   * bitrate (bits/s since the last call), layer (the router's, -1: none),
   * packetsLost, rtt (seconds, the transport's), audioLevel}.
   */
  async stats() {
    const out = new Map();
    if (!this.pc) return out;
    let rtt = null;
    const report = await this.pc.getStats();
    report.forEach((s) => {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded' && s.currentRoundTripTime !== undefined) {
        rtt = s.currentRoundTripTime;
      }
    });
    const byMid = new Map();
    report.forEach((s) => {
      if (s.type === 'inbound-rtp' && s.mid !== undefined) byMid.set(s.mid, s);
    });
    for (const [trackId, sub] of this.subscriptions) {
      const t = this.tracks.get(trackId) || {};
      let s = byMid.get(sub.mid);
      if (!s && sub.receiver) {
        // Older browsers: no mid in inbound-rtp; ask the receiver.
        (await sub.receiver.getStats()).forEach((x) => { if (x.type === 'inbound-rtp') s = x; });
      }
      const prev = this._prevStats.get(trackId);
      let bitrate = null;
      if (s && prev && s.timestamp > prev.timestamp) {
        bitrate = Math.round(((s.bytesReceived - prev.bytesReceived) * 8 * 1000) / (s.timestamp - prev.timestamp));
      }
      if (s) this._prevStats.set(trackId, { bytesReceived: s.bytesReceived, timestamp: s.timestamp });
      out.set(trackId, {
        trackId,
        sessionId: t.sessionId,
        participantId: t.participantId,
        kind: sub.kind,
        width: s ? s.frameWidth : undefined,
        height: s ? s.frameHeight : undefined,
        fps: s ? s.framesPerSecond : undefined,
        framesDecoded: s ? s.framesDecoded : undefined,
        bitrate,
        packetsLost: s ? s.packetsLost : undefined,
        audioLevel: s ? s.audioLevel : undefined,
        layer: sub.layer,
        preference: sub.pref,
        rtt,
      });
    }
    return out;
  }

  /** Leaves: closes the session at the router and the peer connection. */
  async leave() {
    if (this._closed) return;
    this._closed = true;
    clearTimeout(this._flushTimer);
    const id = this.sessionId;
    if (this.pc) this.pc.close();
    if (id) {
      try {
        await this.signal('CloseSession', { sessionId: id });
      } catch {
        // Gone already: the router closes it on its own after an ICE timeout too.
      }
    }
  }
}

function kindName(kind) {
  if (kind === 'TRACK_KIND_AUDIO' || kind === 1) return 'audio';
  if (kind === 'TRACK_KIND_VIDEO' || kind === 2) return 'video';
  return undefined;
}
