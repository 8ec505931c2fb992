// Server-side recording in the view: a Record / Stop button while a stream runs, the state of
// its session's recording, and links to the finished files.
//
// The server is the one state: Python, another client, the recording's maximum duration or the
// quota may start or stop it too, and the data channel says so (`recording_started`,
// `recording_stopped`), so the control follows those messages rather than its own clicks.

import { element } from "./dom.js";

/** How often a running recording's length is read (`GET api/v1/recordings`). */
const POLL_MS = 1000;

/** What `w.recording` reads before any recording. */
export const NO_RECORDING = {
  state: "idle", session_id: "", url: "", timeline_url: "", frames: 0, duration_s: 0, stop_reason: null, message: "",
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

export class RecordingControl {
  /**
   * `api` is the view's API helper (its auth and base URL); `base` the server's base URL, which
   * the download links are built from; `token` a `?token=` the page was opened with (a plain
   * link sends no Authorization header, so the links carry it); `report(recording)` sets
   * `w.recording`; `log(text, kind)` adds a message.
   */
  constructor({ api, base, token = null, report, log }) {
    this.api = api;
    this.base = base;
    this.token = token;
    this.report = report;
    this.log = log;
    /** The live stream's session (null while there is none). */
    this.sessionId = null;
    this.recording = { ...NO_RECORDING };
    this.busy = false;
    this.polls = 0;
    this.button = element("button", {
      type: "button", textContent: "● Record", className: "scope-record", hidden: true, onclick: () => this.toggle(),
    });
    this.state = element("span", { className: "scope-recording-state" });
    this.link = element("a", { className: "scope-recording-link", textContent: "Download recording (MP4)", hidden: true });
    this.timeline = element("a", { className: "scope-recording-timeline", textContent: "timeline", hidden: true });
    this.element = element("section", { className: "scope-row scope-recording" }, this.button, this.state, this.link, this.timeline);
  }

  /** The view's stream has a session (`sessionId`), or has ended (null). */
  streaming(sessionId) {
    const ended = !sessionId && this.recordingHere();
    this.sessionId = sessionId || null;
    if (ended) {
      // The session's end stopped it; its `recording_stopped` went with the closing connection.
      this.stopped({ reason: "session_ended" });
      this.refresh();
    }
    this.show();
  }

  recordingHere() {
    return this.recording.state === "recording" && this.recording.session_id === this.sessionId;
  }

  toggle() {
    return this.recordingHere() ? this.stop() : this.start();
  }

  // Both POSTs carry an (empty) JSON body: an open API refuses a POST without that type, which
  // any page could send without asking the browser first.
  async start() {
    const sessionId = this.sessionId;
    if (!sessionId) return this.log("Not recording: the stream has no session yet.", "warning");
    await this.call(async () => this.started(await this.api("POST", `api/v1/recordings/${sessionId}/start`, {})), "Recording refused");
  }

  async stop() {
    const sessionId = this.recording.session_id || this.sessionId;
    if (!sessionId) return;
    await this.call(async () => {
      const info = await this.api("POST", `api/v1/recordings/${sessionId}/stop`, {});
      this.stopped({ ...info, reason: info.stop_reason });
    }, "Recording not stopped");
  }

  /** One request at a time from the button; the server's refusal is shown in its words. */
  async call(request, failure) {
    this.busy = true;
    this.show();
    try {
      await request();
    } catch (error) {
      this.log(`${failure}: ${error.message}`, "error");
      await this.refresh(); // the refusal may mean another client changed it meanwhile
    } finally {
      this.busy = false;
      this.show();
    }
  }

  /** A recording started (a `recording_started` message, or the start's answer). */
  started({ session_id: sessionId, first_chunk: firstChunk, frames = 0, duration_s: duration = 0 }) {
    if (this.recording.state === "recording" && this.recording.session_id === sessionId) return;
    const url = this.fileUrl(sessionId, "");
    this.recording = {
      ...NO_RECORDING, state: "recording", session_id: sessionId, url, timeline_url: this.fileUrl(sessionId, "/timeline"),
      frames, duration_s: duration,
    };
    this.log(`Recording on the server from chunk ${firstChunk}.`);
    this.show();
    this.follow();
  }

  /**
   * A recording stopped: a `recording_stopped` message (its `message` says why: the maximum
   * duration, the quota...), the stop's answer, or the listing. Only the message is logged, so
   * a stop is told once however many of these arrive.
   */
  stopped({ reason = null, message = "", frames, duration_s: duration }) {
    if (!this.recording.session_id) return;
    this.polls += 1;
    this.recording = {
      ...this.recording,
      state: "stopped",
      stop_reason: reason ?? this.recording.stop_reason,
      message: message || this.recording.message,
      frames: frames ?? this.recording.frames,
      duration_s: duration ?? this.recording.duration_s,
    };
    if (message) {
      const figures = `${this.recording.frames} frames, ${this.recording.duration_s.toFixed(1)} s`;
      this.log(`Recording stopped: ${message} (${figures}).`, ["requested", "session_ended"].includes(reason) ? "info" : "warning");
    }
    this.show();
  }

  /** While it records, read its length from the server's listing. */
  async follow() {
    const poll = ++this.polls;
    while (poll === this.polls && this.recording.state === "recording") {
      await sleep(POLL_MS);
      if (poll !== this.polls) return;
      await this.refresh();
    }
  }

  /** The recording's entry in `GET api/v1/recordings`, shown (a stop there ends the polling). */
  async refresh() {
    const sessionId = this.recording.session_id;
    if (!sessionId) return;
    let info;
    try {
      info = (await this.api("GET", "api/v1/recordings")).recordings.find((r) => r.session_id === sessionId);
    } catch {
      return; // the next poll, or the next message, tells
    }
    if (!info || this.recording.session_id !== sessionId) return;
    if (info.state === "stopped") this.stopped({ ...info, reason: info.stop_reason, message: "" });
    else this.recording = { ...this.recording, frames: info.frames, duration_s: info.duration_s };
    this.show();
  }

  /** A file of `sessionId`'s recording, as a full URL below the view's server. */
  fileUrl(sessionId, suffix) {
    const url = new URL(`api/v1/recordings/${sessionId}${suffix}`, this.base);
    if (this.token) url.searchParams.set("token", this.token);
    return url.href;
  }

  show() {
    const recording = this.recording;
    const here = this.recordingHere();
    // A session records once: its finished recording stays as it is.
    const done = recording.state === "stopped" && recording.session_id === this.sessionId;
    this.button.hidden = !this.sessionId;
    this.button.textContent = here ? "■ Stop" : "● Record";
    this.button.disabled = this.busy || done;
    this.button.title = done ? "This stream's recording is finished: Stop and Start the stream to record again." : "";
    const seconds = `${recording.duration_s.toFixed(1)} s`;
    this.state.textContent = {
      idle: "",
      recording: `Recording… ${seconds}`,
      stopped: `Recorded ${seconds} (${recording.frames} frames)${recording.message ? `: ${recording.message}` : ""}`,
    }[recording.state];
    this.state.classList.toggle("scope-recording-live", here);
    const finished = recording.state === "stopped";
    this.link.hidden = this.timeline.hidden = !finished;
    this.link.href = recording.url;
    this.timeline.href = recording.timeline_url;
    this.link.download = `${recording.session_id}-recording.mp4`;
    this.report({ ...recording });
  }

  dispose() {
    this.polls += 1;
  }
}
