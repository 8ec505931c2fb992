// One WebRTC streaming session with the Scope server, following the API's documented flow:
// ICE servers, a "parameters" data channel, an offer carrying `initialParameters`, and the
// browser's ICE candidates trickled to the session with PATCH.

import { api as pageApi, endSession } from "./api.js";

function candidateInit(candidate) {
  return { candidate: candidate.candidate, sdpMid: candidate.sdpMid, sdpMLineIndex: candidate.sdpMLineIndex };
}

function withoutNulls(server) {
  // The API answers `username: null` for STUN entries; the browser would read that as "null".
  return Object.fromEntries(Object.entries(server).filter(([, value]) => value !== null));
}

export class ScopeStream {
  /**
   * @param {object} handlers
   *   onVideo(MediaStream), onMessage(object), onState(string) -- all optional.
   * @param {Function} api  how to call the server (see `createApi`); the page's own by default.
   */
  constructor(handlers = {}, api = pageApi) {
    this.handlers = handlers;
    this.api = api;
    this.pc = null;
    this.channel = null;
    this.sessionId = null;
    this.queuedCandidates = [];
  }

  /**
   * Connect; `source` is a MediaStream to send (video-to-video) or null (text-to-video).
   * `pipeline` ({pipeline_id, load_params}) binds the session to that pipeline, whatever is
   * loaded later; null streams from the server's current pipeline.
   */
  async start(source, initialParameters, pipeline = null) {
    const { iceServers } = await this.api("GET", "api/v1/webrtc/ice-servers");
    const pc = new RTCPeerConnection({ iceServers: iceServers.map(withoutNulls) });
    this.pc = pc;

    this.channel = pc.createDataChannel("parameters", { ordered: true });
    this.channel.onopen = () => this.handlers.onMessage?.({ type: "client_info", message: "Data channel open." });
    this.channel.onmessage = (event) => this._message(event.data);

    if (source) {
      source.getVideoTracks().forEach((track) => pc.addTrack(track, source));
    } else {
      pc.addTransceiver("video");
    }

    pc.ontrack = (event) => {
      if (event.streams && event.streams[0]) this.handlers.onVideo?.(event.streams[0]);
    };
    pc.onconnectionstatechange = () => this._state(pc.connectionState);
    pc.onicecandidate = (event) => {
      if (!event.candidate) return;
      if (this.sessionId) this._sendCandidates(this.sessionId, [event.candidate]);
      else this.queuedCandidates.push(event.candidate);
    };

    await pc.setLocalDescription(await pc.createOffer());
    const offer = { sdp: pc.localDescription.sdp, type: pc.localDescription.type, initialParameters };
    if (pipeline) Object.assign(offer, { pipeline_id: pipeline.pipeline_id, load_params: pipeline.load_params });
    const answer = await this.api("POST", "api/v1/webrtc/offer", offer);
    if (this.pc !== pc) {
      // Stopped while the offer was in flight: end the session the server just opened.
      endSession(this.api, answer.sessionId);
      return;
    }
    this.sessionId = answer.sessionId;
    await pc.setRemoteDescription({ type: answer.type, sdp: answer.sdp });
    if (this.queuedCandidates.length) {
      this._sendCandidates(this.sessionId, this.queuedCandidates);
      this.queuedCandidates = [];
    }
  }

  /** Send a parameters update on the data channel; false when the channel is not open. */
  send(parameters) {
    if (!this.channel || this.channel.readyState !== "open") return false;
    this.channel.send(JSON.stringify(parameters));
    return true;
  }

  /** End the session on the server (it frees the pipeline stream at once), then locally. */
  async stop() {
    const sessionId = this.sessionId;
    this.sessionId = null;
    if (sessionId) await endSession(this.api, sessionId);
    this.close();
  }

  /** Close the connection locally (the server notices and ends its side). */
  close() {
    const pc = this.pc;
    this.pc = null;
    this.sessionId = null;
    if (pc) {
      pc.close();
      this._state("closed");
    }
  }

  async _sendCandidates(sessionId, candidates) {
    try {
      await this.api("PATCH", `api/v1/webrtc/offer/${sessionId}`, { candidates: candidates.map(candidateInit) });
    } catch (error) {
      if (this.sessionId !== sessionId) return; // the session ended meanwhile
      this.handlers.onMessage?.({ type: "client_error", message: `ICE candidate refused: ${error.message}` });
    }
  }

  _message(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      message = { type: "unparsable", message: String(data) };
    }
    this.handlers.onMessage?.(message);
  }

  _state(state) {
    this.handlers.onState?.(state);
  }
}
