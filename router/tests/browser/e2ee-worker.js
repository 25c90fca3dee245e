// End-to-end encryption of media frames, the way LiveKit and Jitsi do it,
// run by an RTCRtpScriptTransform in this worker: the publisher encrypts
// each encoded frame before it is packetised, the subscriber decrypts it
// after depacketising; the router in between forwards what it cannot read.
//
// Frame layout: [clear header][AES-GCM ciphertext + 16-byte tag][12-byte IV][0xE2]
// The clear header is the first 10 bytes of a VP8 keyframe (frame tag,
// start code, width and height: what a router may look at to tell
// keyframes and picture sizes apart), 3 bytes of a VP8 delta frame (the
// frame tag) and 1 byte of Opus (the TOC byte). It is authenticated as the
// cipher's additional data, so nobody on the way can change it either.
'use strict';

const MAGIC = 0xe2;
const IV_LEN = 12;
const TAG_LEN = 16;

let key = null; // the CryptoKey, from the page
const counts = { encrypted: 0, decrypted: 0, failed: 0, passedClear: 0 };
let ivCounter = 0;

function clearBytes(frame, kind) {
  if (kind === 'audio') return 1;
  return frame.type === 'key' ? 10 : 3;
}

function newIv(frame) {
  // SSRC, RTP timestamp and a counter: unique per key for this sender.
  const iv = new Uint8Array(IV_LEN);
  const v = new DataView(iv.buffer);
  const md = frame.getMetadata();
  v.setUint32(0, md.synchronizationSource >>> 0);
  v.setUint32(4, (frame.timestamp ?? md.rtpTimestamp ?? 0) >>> 0);
  v.setUint32(8, ivCounter++ >>> 0);
  return iv;
}

async function encrypt(frame, kind, controller) {
  const data = new Uint8Array(frame.data);
  const n = Math.min(clearBytes(frame, kind), data.length);
  const iv = newIv(frame);
  const sealed = new Uint8Array(await crypto.subtle.encrypt(
    { name: 'AES-GCM', iv, additionalData: data.subarray(0, n), tagLength: TAG_LEN * 8 },
    key, data.subarray(n)));
  const out = new Uint8Array(n + sealed.length + IV_LEN + 1);
  out.set(data.subarray(0, n), 0);
  out.set(sealed, n);
  out.set(iv, n + sealed.length);
  out[out.length - 1] = MAGIC;
  frame.data = out.buffer;
  counts.encrypted += 1;
  controller.enqueue(frame);
}

async function decrypt(frame, kind, controller) {
  const data = new Uint8Array(frame.data);
  if (data.length === 0) {
    // Nothing to decrypt (e.g. an empty frame on start-up).
    controller.enqueue(frame);
    return;
  }
  if (data[data.length - 1] !== MAGIC || data.length < 1 + TAG_LEN + IV_LEN + 1) {
    // A frame that did not come from an encrypting sender: never shown.
    counts.passedClear += 1;
    return;
  }
  const n = Math.min(clearBytes(frame, kind), data.length - TAG_LEN - IV_LEN - 1);
  const ivAt = data.length - 1 - IV_LEN;
  try {
    const plain = new Uint8Array(await crypto.subtle.decrypt(
      { name: 'AES-GCM', iv: data.subarray(ivAt, ivAt + IV_LEN), additionalData: data.subarray(0, n), tagLength: TAG_LEN * 8 },
      key, data.subarray(n, ivAt)));
    const out = new Uint8Array(n + plain.length);
    out.set(data.subarray(0, n), 0);
    out.set(plain, n);
    frame.data = out.buffer;
    counts.decrypted += 1;
    controller.enqueue(frame);
  } catch (e) {
    counts.failed += 1;
  }
}

function pipe(readable, writable, side, kind) {
  const work = side === 'send' ? encrypt : decrypt;
  readable
    .pipeThrough(new TransformStream({ transform: (frame, c) => work(frame, kind, c) }))
    .pipeTo(writable)
    .catch((e) => self.postMessage({ error: String(e) }));
}

self.onrtctransform = (event) => {
  const { side, kind } = event.transformer.options;
  pipe(event.transformer.readable, event.transformer.writable, side, kind);
};

self.onmessage = async (event) => {
  if (event.data && event.data.rawKey) {
    key = await crypto.subtle.importKey('raw', event.data.rawKey, 'AES-GCM', false, ['encrypt', 'decrypt']);
    self.postMessage({ ready: true });
  } else if (event.data && event.data.counts) {
    self.postMessage({ counts });
  }
};
