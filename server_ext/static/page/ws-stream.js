// One streaming session over a WebSocket, for when WebRTC's UDP cannot get through (an SSH
// tunnel, JupyterHub's proxy, a cloud notebook's proxy): the same interface as `ScopeStream`,
// with video as binary messages behind a 16-byte header and the data channel's messages as text.
// Output frames are H.264 (decoded with WebCodecs, where the browser has it) or JPEG, drawn on a
// canvas whose captured stream the page shows like a WebRTC track; each one drawn is
// acknowledged, which is what keeps the server from running ahead of a slow link.

import { api as pageApi, endSession } from "./api.js";

/** Header of every binary message: kind, flags, reserved, sequence number, wall-clock ms. */
const HEADER_BYTES = 16;
const OUTPUT_FRAME = 1;
const INPUT_FRAME = 2;
const KEY_FRAME = 1;

/** Input frames: at most this rate, JPEG at this quality, and none while this much is unsent. */
const MAX_INPUT_FPS = 30;
const INPUT_QUALITY = 0.8;
const MAX_BUFFERED_BYTES = 1024 * 1024;
const MAX_INPUT_SIDE = 4096;

/** How long a JPEG may take to become a bitmap before the view decodes with <img> elements instead. */
const BITMAP_TIMEOUT_MS = 2000;

/** `promise`'s value, or null when it takes longer than `ms`. */
function withTimeout(promise, ms) {
  let timer;
  const expired = new Promise((resolve) => (timer = setTimeout(() => resolve(null), ms)));
  return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
}

/** A JPEG decoded by an <img> element (every browser has one). */
async function decodeWithElement(blob) {
  const url = URL.createObjectURL(blob);
  try {
    const image = new Image();
    image.src = url;
    await image.decode();
    return image;
  } finally {
    URL.revokeObjectURL(url);
  }
}

/** A baseline H.264 codec string, to ask whether this browser decodes H.264 at all. */
const PROBE_CODEC = "avc1.42E01F";

/** The output encodings this browser can decode, in order of preference. */
export async function decodableEncodings() {
  if (typeof VideoDecoder === "undefined") return ["jpeg"];
  try {
    const { supported } = await VideoDecoder.isConfigSupported({ codec: PROBE_CODEC });
    return supported ? ["h264", "jpeg"] : ["jpeg"];
  } catch {
    return ["jpeg"];
  }
}

/** The NAL units of an Annex B access unit (start codes removed). */
function* nalUnits(bytes) {
  let start = -1;
  for (let i = 0; i + 2 < bytes.length; i++) {
    if (bytes[i] === 0 && bytes[i + 1] === 0 && bytes[i + 2] === 1) {
      if (start >= 0) yield bytes.subarray(start, bytes[i - 1] === 0 ? i - 1 : i);
      start = i + 3;
      i += 2;
    }
  }
  if (start >= 0 && start < bytes.length) yield bytes.subarray(start);
}

/** `avc1.PPCCLL` from the first SPS of an access unit (profile, constraints, level), or null. */
export function codecFromSps(bytes) {
  for (const nal of nalUnits(bytes)) {
    if ((nal[0] & 0x1f) === 7 && nal.length >= 4) {
      return "avc1." + [nal[1], nal[2], nal[3]].map((b) => b.toString(16).padStart(2, "0")).join("").toUpperCase();
    }
  }
  return null;
}

/** A binary message: the 16-byte header (big-endian) before `payload` (a Blob). */
function framed(kind, flags, seq, millis, payload) {
  const header = new DataView(new ArrayBuffer(HEADER_BYTES));
  header.setUint8(0, kind);
  header.setUint8(1, flags);
  header.setUint16(2, 0);
  header.setUint32(4, seq);
  header.setFloat64(8, millis);
  return new Blob([header.buffer, payload]);
}

/** The socket's URL: `path` below the base URL `api` calls, ws(s) as the page's http(s), its token kept. */
export function socketUrl(api, path) {
  const url = new URL((api.base ?? "") + path, location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  if (api.token) url.searchParams.set("token", api.token);
  return url.href;
}

export class WebSocketStream {
  /**
   * @param {object} handlers
   *   onVideo(MediaStream), onMessage(object), onState(string) -- all optional.
   * @param {Function} api  how to call the server (see `createApi`); the page's own by default.
   */
  constructor(handlers = {}, api = pageApi) {
    this.handlers = handlers;
    this.api = api;
    this.transport = "websocket";
    this.socket = null;
    this.sessionId = null;
    this.encoding = null;
    /** Output frames drawn so far, and the delay of the last one from the server's encoder to the canvas. */
    this.framesDecoded = 0;
    this.latencyMs = null;
    this.closed = false;
    this.opened = false;
    this.canvas = null;
    this.decoder = null;
    this.decoding = Promise.resolve();
    this.sentAt = new Map();
    /** The newest output frame received. */
    this.lastSeq = null;
    this.input = null;
    /** JPEGs are decoded by <img> elements (createImageBitmap stopped answering). */
    this.imageElements = false;
  }

  /**
   * Connect; `source` is a MediaStream to send (video-to-video) or null (text-to-video).
   * `pipeline` ({pipeline_id, load_params}) binds the session to that pipeline, whatever is
   * loaded later; null streams from the server's current pipeline.
   */
  async start(source, initialParameters, pipeline = null) {
    const offer = { initialParameters, sends_video: Boolean(source), encodings: await decodableEncodings() };
    if (pipeline) Object.assign(offer, { pipeline_id: pipeline.pipeline_id, load_params: pipeline.load_params });
    const answer = await this.api("POST", "api/v1/websocket/offer", offer);
    if (this.closed) {
      // Stopped while the offer was in flight: end the session the server just opened.
      endSession(this.api, answer.sessionId);
      return;
    }
    this.sessionId = answer.sessionId;
    this.encoding = answer.encoding;
    const socket = new WebSocket(socketUrl(this.api, answer.url));
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.onopen = () => {
      this.opened = true;
      this._state("connected");
      if (source) this._sendInput(source);
    };
    socket.onmessage = (event) => {
      if (typeof event.data === "string") this._text(event.data);
      else this._binary(event.data);
    };
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this._release();
      // Ended by the server (the session closed) or never opened (refused, unreachable).
      const clean = this.opened && (event.code === 1000 || event.code === 1001);
      this._state(clean ? "closed" : "failed");
    };
  }

  /** Send a parameters update on the socket; false when it is not open. */
  send(parameters) {
    if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return false;
    this.socket.send(JSON.stringify(parameters));
    return true;
  }

  /** End the session on the server (it frees the pipeline stream at once), then locally. */
  async stop() {
    const sessionId = this.sessionId;
    this.sessionId = null;
    this.closed = true;
    if (sessionId) await endSession(this.api, sessionId);
    this.close();
  }

  /** Close the socket locally (the server ends the session when it closes). */
  close() {
    this.closed = true;
    this.sessionId = null;
    const socket = this.socket;
    this.socket = null;
    this._release();
    if (socket) {
      socket.close(1000);
      this._state("closed");
    }
  }

  _release() {
    this.input?.stop();
    this.input = null;
    if (this.decoder && this.decoder.state !== "closed") this.decoder.close();
    this.decoder = null;
    this.sentAt.clear();
  }

  _text(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      message = { type: "unparsable", message: String(data) };
    }
    if (message.type === "session") {
      message = { type: "client_info", message: `WebSocket open: ${message.encoding ?? this.encoding} frames.` };
    }
    this.handlers.onMessage?.(message);
  }

  _binary(buffer) {
    if (buffer.byteLength < HEADER_BYTES) return;
    const header = new DataView(buffer, 0, HEADER_BYTES);
    if (header.getUint8(0) !== OUTPUT_FRAME) return;
    const frame = {
      key: (header.getUint8(1) & KEY_FRAME) !== 0,
      seq: header.getUint32(4),
      sentAt: header.getFloat64(8),
      data: new Uint8Array(buffer, HEADER_BYTES),
    };
    // One at a time, in order: frames are drawn as they were sent.
    this.lastSeq = frame.seq;
    this.decoding = this.decoding
      .then(() => (this.encoding === "h264" ? this._decodeH264(frame) : this._decodeJpeg(frame)))
      .catch((error) => {
        this._report(`A frame could not be shown: ${error.message}`);
        this._ack(frame.seq); // taken all the same: the server must not wait for it
      });
  }

  async _decodeJpeg({ seq, sentAt, data }) {
    const blob = new Blob([data], { type: "image/jpeg" });
    const image = this.imageElements ? await decodeWithElement(blob) : await withTimeout(createImageBitmap(blob), BITMAP_TIMEOUT_MS);
    if (!image) {
      // createImageBitmap did not answer (seen in a busy headless Chromium): <img> decoding from now on.
      this.imageElements = true;
      return this._decodeJpeg({ seq, sentAt, data });
    }
    if (!this.closed) this._draw(image, image.width, image.height, sentAt);
    image.close?.();
    if (!this.closed) this._ack(seq);
  }

  async _decodeH264({ key, seq, sentAt, data }) {
    if (!this.decoder) {
      if (!key) return this._ack(seq); // nothing to decode it against: wait for the next key frame
      const codec = codecFromSps(data);
      if (!codec) throw new Error("a key frame without an SPS");
      const { supported } = await VideoDecoder.isConfigSupported({ codec });
      if (!supported) throw new Error(`this browser cannot decode ${codec}`);
      if (this.closed) return;
      this.decoder = new VideoDecoder({
        output: (videoFrame) => this._decoded(videoFrame),
        error: (error) => {
          this.decoder = null; // the next key frame starts a new one
          this.sentAt.clear();
          this._report(`H.264 decoding failed: ${error.message}`);
          // The frames it held are lost: acknowledged, so the server sends on to the next key frame.
          if (this.lastSeq !== null) this._ack(this.lastSeq);
        },
      });
      this.decoder.configure({ codec, optimizeForLatency: true });
    }
    this.sentAt.set(seq, sentAt);
    this.decoder.decode(new EncodedVideoChunk({ type: key ? "key" : "delta", timestamp: seq, data }));
  }

  _decoded(videoFrame) {
    const seq = videoFrame.timestamp;
    const sentAt = this.sentAt.get(seq);
    this.sentAt.delete(seq);
    if (!this.closed) this._draw(videoFrame, videoFrame.displayWidth, videoFrame.displayHeight, sentAt);
    videoFrame.close();
    if (!this.closed) this._ack(seq);
  }

  /** Draw a decoded frame; the first one hands the canvas's captured stream to the page. */
  _draw(image, width, height, sentAt) {
    if (!this.canvas) {
      this.canvas = document.createElement("canvas");
      this.context = this.canvas.getContext("2d");
    }
    const canvas = this.canvas;
    if (canvas.width !== width || canvas.height !== height) {
      canvas.width = width;
      canvas.height = height;
    }
    this.context.drawImage(image, 0, 0, width, height);
    this.framesDecoded += 1;
    if (sentAt !== undefined) this.latencyMs = Math.max(0, Date.now() - sentAt);
    if (this.framesDecoded === 1) this.handlers.onVideo?.(canvas.captureStream());
  }

  _ack(seq) {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify({ type: "ack", seq }));
  }

  /** Send `source`'s video as JPEG frames at its rate (at most 30 fps), skipping while the link is behind. */
  _sendInput(source) {
    const [track] = source.getVideoTracks();
    if (!track) return;
    const video = document.createElement("video");
    video.muted = true;
    video.playsInline = true;
    video.srcObject = new MediaStream([track]);
    video.play().catch(() => {});
    const canvas = document.createElement("canvas");
    const context = canvas.getContext("2d");
    const fps = Math.min(track.getSettings().frameRate || MAX_INPUT_FPS, MAX_INPUT_FPS);
    let seq = 0;
    let encoding = false;
    const capture = () => {
      const socket = this.socket;
      if (encoding || !socket || socket.readyState !== WebSocket.OPEN || video.readyState < 2 || !video.videoWidth) return;
      if (socket.bufferedAmount > MAX_BUFFERED_BYTES) return; // the link is behind: this frame is skipped
      const scale = Math.min(1, MAX_INPUT_SIDE / Math.max(video.videoWidth, video.videoHeight));
      canvas.width = Math.round(video.videoWidth * scale);
      canvas.height = Math.round(video.videoHeight * scale);
      context.drawImage(video, 0, 0, canvas.width, canvas.height);
      const capturedAt = Date.now();
      encoding = true;
      canvas.toBlob((jpeg) => {
        encoding = false;
        if (!jpeg || this.socket !== socket || socket.readyState !== WebSocket.OPEN) return;
        socket.send(framed(INPUT_FRAME, KEY_FRAME, seq, capturedAt, jpeg));
        seq = (seq + 1) >>> 0;
      }, "image/jpeg", INPUT_QUALITY);
    };
    // A timer, not requestAnimationFrame: frames must keep going when the tab is hidden.
    const timer = setInterval(capture, 1000 / fps);
    this.input = {
      stop() {
        clearInterval(timer);
        video.pause();
        video.srcObject = null;
      },
    };
  }

  _report(text) {
    this.handlers.onMessage?.({ type: "client_error", message: text });
  }

  _state(state) {
    this.handlers.onState?.(state);
  }
}
