// The notebook widget's view (`scope.widgets.ScopeWidget`), imported by its anywidget module
// from the server it streams from, so the widget always speaks that server's API. The server's
// own `/scope/` page mounts this same view over a model of its own (`page.js`).
//
// The model's traitlets are the one state: the controls set them, Python sets them, and a
// change of a stream parameter goes out on the data channel, taking effect on the next chunk.
// Each view opens its own streaming session.

import { createApi, describeErrors, holds, isLoadConflict, pipelineStatusText, poolEntry, refusedOrigin, sameValue } from "./api.js";
import { ScopeStream } from "./stream.js";
import { WebSocketStream } from "./ws-stream.js";
import { startTestPattern } from "./test-pattern.js";
import { schemaControl } from "./schema-form.js";
import { LoraPicker, LoraSliders } from "./lora-controls.js";
import { VACE_PARAMETERS, VacePanel } from "./vace-controls.js";
import { RecordingControl } from "./recording-controls.js";
import { element } from "./dom.js";

const POLL_MS = 500;
const STATS_MS = 1000;
const MAX_MESSAGES = 30;
/** Seconds a WebRTC stream has to connect before "auto" takes the WebSocket (the server's setting, when it says). */
const DEFAULT_FALLBACK_TIMEOUT = 5;
const NO_WEBRTC = "This browser offers no WebRTC, so the stream cannot be shown here.";
/** How the view names each transport. */
const TRANSPORT_NAMES = { webrtc: "WebRTC", websocket: "WebSocket" };

/** The transport a stream of the view runs on. */
const transportOf = (stream) => (stream instanceof WebSocketStream ? "websocket" : "webrtc");

/** Stream parameters with their own controls, or none: the rest are generated from the schema. */
const HAND_MADE = new Set([
  "input_mode", "prompts", "prompt_interpolation_method", "transition", "reset_cache", "paused",
  "lora_scales", "spout_sender", "spout_receiver", "prompt_embeds", "recording", ...VACE_PARAMETERS,
]);

/** Which schema flag a generated stream control depends on. */
const NEEDS_SUPPORT = {
  kv_cache_attention_bias: "supports_kv_cache_bias",
  manage_cache: "supports_cache_management",
};

/** Stream parameters whose null means "stop": a change to null goes out, where others' stays unsent. */
const NULL_STOPS = new Set(["vace_input_frames", "vace_input_masks"]);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Equal as JSON values (prompts, load parameters). */
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

/** The input a pipeline starts with: none for one that generates from text, else the webcam
 * (a test pattern stands in when there is none). */
export function defaultInput(schema) {
  return schema.default_mode === "text" ? "none" : "webcam";
}

/**
 * What a pipeline's `mode_defaults` (UI hints, named as in its configuration schema) set: a
 * stream parameter the stream starts with, or a load parameter the load form offers. A name not
 * listed here is not applied. docs/widgets.md shows this table.
 */
export const MODE_DEFAULT_TARGETS = {
  denoising_steps: { stream: "denoising_step_list" },
  noise_scale: { stream: "noise_scale" },
  noise_controller: { stream: "noise_controller" },
  height: { load: "height" },
  width: { load: "width" },
};

/** The mode a stream takes with input `source`: text when there is none and the pipeline takes text. */
export function inputMode(schema, source) {
  return source === "none" && schema.supported_modes.includes("text") ? "text" : "video";
}

/** A mode's hints, as the stream and load parameters they stand for (only those `schema` has). */
export function modeHints(schema, mode) {
  const hints = { stream: {}, load: {} };
  const known = {
    stream: schema.parameters_schema?.properties ?? {},
    load: schema.load_params_schema?.properties ?? {},
  };
  for (const [name, value] of Object.entries(schema.mode_defaults?.[mode] ?? {})) {
    for (const [kind, target] of Object.entries(MODE_DEFAULT_TARGETS[name] ?? {})) {
      if (target in known[kind]) hints[kind][target] = value;
    }
  }
  return hints;
}

/** Show a control's value; unset, the mode's hint for it, marked as a hint. */
function showValue(control, value, hint) {
  const hinted = (value === undefined || value === null) && hint !== undefined;
  control.set(hinted ? hint : value);
  control.element.classList.toggle("scope-hint", hinted);
}

/** A prompt in a message: quoted, a long one cut short (the editor holds the whole text). */
function quoted(text, limit = 160) {
  return text.length > limit ? `"${text.slice(0, limit)}..." (${text.length} characters)` : `"${text}"`;
}

const promptsText = (prompts) => prompts.map((p) => quoted(p.text)).join(" + ");

export function render({ model, el, base, sameOrigin, token = null }) {
  const view = new WidgetView(model, el, base, createApi({ base, sameOrigin, token }), token);
  view.init();
  return () => view.dispose();
}

class WidgetView {
  /** `token`: a `?token=` the page was opened with, which the view's download links carry. */
  constructor(model, el, base, api, token = null) {
    this.model = model;
    /** Traitlets that are stream parameters: Python names them (`ScopeWidget._stream_traits`). */
    this.streamTraits = model.get("_stream_traits");
    this.el = el;
    this.base = base;
    this.api = api;
    this.schemas = {};
    this.stream = null;
    this.source = null;
    this.transitionTarget = null;
    /** A transition asked for before the stream had a chunk: {transition, from} (see sendTransition). */
    this.pendingTransition = null;
    this.chunkSeen = false;
    /** Parameters asked for after a queued transition: sent right after it, in order. */
    this.heldSends = [];
    this.extraParameters = {};
    /** One-shot requests made with no stream: they go with the next stream's first chunk. */
    this.startOnce = {};
    this.controls = {};
    this.polls = { models: 0, pipeline: 0 };
    this.timers = [];
    this.disposed = false;
    this.lastFrames = null;
    /** What `GET api/v1/transports` answered (null: a server that offers WebRTC only). */
    this.transports = null;
    /** The WebRTC stream "auto" is trying, and how its trial ends early (connected or failed). */
    this.trial = null;
    this.trialEnded = null;
    /**
     * The pipeline this view streams from, {pipeline_id, load_params} as the server normalised
     * them: the one it loaded (or found loaded). Its streams name it in their offers, so another
     * view's load, which changes the server's current pipeline, never moves them.
     */
    this.mine = null;
    /** `mine`'s entry in the status's `pipelines` while it is loaded. */
    this.loaded = null;
    this.token = token;
    this.build();
  }

  // Layout --------------------------------------------------------------------------------

  build() {
    const b = (text, onClick, props = {}) => element("button", { type: "button", textContent: text, onclick: onClick, ...props });
    this.ui = {
      server: element("span", { className: "scope-server" }),
      transport: element("span", { className: "scope-transport scope-muted", hidden: true }),
      synthetic: element("span", {
        className: "scope-badge", hidden: true,
        textContent: "Synthetic weights: random, tiny models. The picture is noise-like by design.",
      }),
      pipeline: element("select", { className: "scope-pipeline" }),
      description: element("div", { className: "scope-muted" }),
      models: element("span", { className: "scope-models" }),
      download: b("Download models", () => this.download(false), { hidden: true }),
      writeSynthetic: b("Use synthetic weights", () => this.download(true), { hidden: true }),
      progress: element("progress", { className: "scope-progress", max: 100, hidden: true }),
      loadForm: element("div", { className: "scope-form" }),
      load: b("Load", () => this.load(), { className: "scope-load-pipeline" }),
      pipelineStatus: element("span", { className: "scope-pipeline-status" }),
      input: element("select", { className: "scope-input" }),
      start: b("Start", () => this.start(), { className: "scope-start" }),
      pause: b("Pause", () => this.setTrait("paused", !this.model.get("paused")), { className: "scope-pause" }),
      reset: b("Reset", () => this.send({ reset_cache: true })),
      stop: b("Stop", () => this.stop(), { className: "scope-stop" }),
      video: element("video", { autoplay: true, muted: true, playsInline: true, className: "scope-video" }),
      placeholder: element("div", { className: "scope-placeholder", textContent: "No stream yet." }),
      stats: element("div", { className: "scope-stats" }),
      prompts: element("div", { className: "scope-prompts" }),
      blend: element("select", { className: "scope-blend" }),
      transitionText: element("input", { type: "text", placeholder: "Prompt to move to", className: "scope-transition-text" }),
      transitionSteps: element("input", { type: "number", min: 0, max: 1000, value: 8, className: "scope-transition-steps" }),
      transitionMethod: element("select"),
      parameters: element("div", { className: "scope-form" }),
      messages: element("ul", { className: "scope-messages" }),
    };
    const ui = this.ui;
    this.loraPicker = new LoraPicker(this.api, (loras) => this.setLoadParam("loras", loras));
    this.loraSliders = new LoraSliders((path, scale) => this.setLoraScales([{ path, scale }]));
    ui.loras = this.loraPicker.element;
    ui.loraScales = this.loraSliders.element;
    this.vace = new VacePanel({
      api: this.api,
      base: this.base,
      get: (name) => this.model.get(name),
      set: (name, value) => this.setTrait(name, value),
      sendOnce: (parameters, what) => this.sendOnce(parameters, what),
      useInput: () => this.useInput(),
      log: (text, kind) => this.log(text, kind),
    });
    ui.vace = this.vace.element;
    this.recorder = new RecordingControl({
      api: this.api,
      base: this.base,
      token: this.token,
      report: (recording) => this.setTraits({ recording }),
      log: (text, kind) => this.log(text, kind),
    });
    ui.recording = this.recorder.element;
    ui.video.muted = true;
    for (const method of ["linear", "slerp"]) {
      ui.blend.append(new Option(method, method));
      ui.transitionMethod.append(new Option(method, method));
    }
    ui.blend.addEventListener("change", () => this.setTrait("prompt_interpolation_method", ui.blend.value));
    ui.input.addEventListener("change", () => this.setTrait("input_source", ui.input.value));
    ui.pipeline.addEventListener("change", () => {
      this.setTrait("input_source", ""); // the new pipeline's default input
      this.setTrait("load_params", {});
      this.setTrait("pipeline_id", ui.pipeline.value);
    });

    // Two columns: what is watched (video, figures, messages) and what is set. In a notebook both
    // fold into one column (the stylesheet orders their parts); a page lays them side by side.
    this.el.classList.add("scope-widget");
    this.el.replaceChildren(
      element("header", {}, element("strong", { className: "scope-title", textContent: "Scope" }), ui.server, ui.transport, ui.synthetic),
      element("div", { className: "scope-view" },
        element("div", { className: "scope-screen" }, ui.video, ui.placeholder),
        ui.stats,
        ui.recording,
        ui.messages),
      element("div", { className: "scope-controls" },
        element("div", { className: "scope-setup" },
          element("section", { className: "scope-row" },
            ui.pipeline, ui.models, ui.download, ui.writeSynthetic, ui.progress),
          ui.description,
          element("details", { className: "scope-load" }, element("summary", { textContent: "Load parameters" }), ui.loadForm),
          ui.loras,
          element("section", { className: "scope-row" }, ui.load, ui.pipelineStatus),
          element("section", { className: "scope-row" }, element("span", { textContent: "Input" }), ui.input, ui.start, ui.pause, ui.reset, ui.stop),
          ui.loraScales,
          ui.vace),
        ui.promptEditor = element("section", { className: "scope-prompt-editor" },
          ui.prompts,
          element("div", { className: "scope-row" },
            b("+ prompt", () => ui.prompts.append(this.promptRow({ text: "", weight: 1 })), { className: "scope-add-prompt" }),
            element("span", { textContent: "blend" }), ui.blend,
            b("Send prompts", () => this.sendPromptsFromEditor(), { className: "scope-send-prompts" })),
          element("div", { className: "scope-row" },
            ui.transitionText, element("span", { textContent: "over" }), ui.transitionSteps,
            element("span", { textContent: "chunks" }), ui.transitionMethod,
            b("Transition", () => this.transitionFromControls(), { className: "scope-transition" }))),
        element("details", { className: "scope-parameters", open: true }, element("summary", { textContent: "Stream parameters" }), ui.parameters)),
    );
    this.updateButtons();
  }

  // Start-up and model events ------------------------------------------------------------------

  async init() {
    const model = this.model;
    this.ui.server.textContent = this.base;
    for (const name of this.streamTraits) model.on(`change:${name}`, () => this.traitChanged(name));
    // The value the change carried: another view may have taken (cleared) the request since.
    model.on("change:_transition", (_model, value) => this.sendTransition(value));
    model.on("change:_command", () => this.command(model.get("_command")));
    model.on("change:pipeline_id", () => this.showPipeline());
    model.on("change:load_params", () => this.showLoadParams());
    model.on("change:input_source", () => this.showInput());
    this.showPrompts();
    this.ui.blend.value = model.get("prompt_interpolation_method");

    if (typeof RTCPeerConnection === "undefined" && model.get("transport") === "webrtc") {
      return this.fail("unavailable", NO_WEBRTC);
    }
    try {
      this.schemas = (await this.api("GET", "api/v1/pipelines/schemas")).pipelines;
    } catch (error) {
      const origin = refusedOrigin(error);
      if (origin) {
        return this.fail(
          "unavailable",
          `The Scope server at ${this.base} refuses this page's origin (${origin}). Restart it with ` +
            `\`daydream-scope --allow-origin ${origin}\` (or set ScopeApp.allowed_origins) to let this notebook use it.`,
        );
      }
      return this.fail("unavailable", `The Scope API did not answer at ${this.base}: ${error.message}`);
    }
    this.transports = await this.api("GET", "api/v1/transports").catch(() => null);
    for (const schema of Object.values(this.schemas)) {
      this.ui.pipeline.append(new Option(schema.name ? `${schema.name} (${schema.id})` : schema.id, schema.id));
    }
    await this.fillInputs();
    await this.showPipeline();
    this.sendTransition(); // asked for before this view existed: queued for its stream
    const state = await this.followPipeline();
    if (model.get("autostart") && !this.disposed) await this.autostart(state);
  }

  /** The view goes away (its output cleared, its cell re-run): its stream ends and Python reads "closed". */
  dispose() {
    try {
      this.setTraits({ status: "closed", session_id: "", fps: 0, active_transport: "" });
    } catch {
      // The model went with its kernel: nobody is left to tell.
    }
    this.disposed = true;
    this.polls.models += 1;
    this.polls.pipeline += 1;
    this.timers.forEach(clearInterval);
    this.recorder.dispose();
    this.stream?.stop();
    this.teardown("closed", false);
  }

  setTrait(name, value) {
    this.model.set(name, value);
    this.model.save_changes();
  }

  setTraits(values) {
    if (this.disposed) return;
    for (const [name, value] of Object.entries(values)) this.model.set(name, value);
    this.model.save_changes();
  }

  setStatus(status) {
    this.el.dataset.status = status;
    this.setTraits({ status });
  }

  fail(status, text) {
    this.setStatus(status);
    this.setTraits({ error: text });
    this.log(text, "error");
    this.ui.placeholder.textContent = text;
    this.ui.placeholder.classList.add("scope-error");
    this.updateButtons();
  }

  /** Add a message; a repeat of the newest one only counts up, so a failing loop stays readable. */
  log(text, kind = "info") {
    const newest = this.ui.messages.firstChild;
    const stamp = new Date().toLocaleTimeString();
    if (newest && newest.dataset.text === text) {
      newest.dataset.count = Number(newest.dataset.count) + 1;
      newest.textContent = `${stamp}  ${text} (×${newest.dataset.count})`;
      return;
    }
    const item = element("li", { className: kind, textContent: `${stamp}  ${text}`, dataset: { text, count: 1 } });
    this.ui.messages.prepend(item);
    while (this.ui.messages.children.length > MAX_MESSAGES) this.ui.messages.lastChild.remove();
    this.setTraits({ messages: [...this.model.get("messages"), text].slice(-MAX_MESSAGES) });
  }

  // Pipelines, models and loading --------------------------------------------------------------

  selected() {
    return this.schemas[this.model.get("pipeline_id")];
  }

  async showPipeline() {
    const schema = this.selected();
    const ui = this.ui;
    if (!schema) {
      ui.description.textContent = `Unknown pipeline "${this.model.get("pipeline_id")}".`;
      return;
    }
    ui.pipeline.value = schema.id;
    ui.description.textContent = schema.description ?? "";
    ui.promptEditor.hidden = !schema.supports_prompts;
    this.buildLoadForm(schema);
    this.buildParameterControls(schema);
    this.fillInputModes(schema);
    this.showInput();
    // Both wait on the server. They start together, so a later choice's model check always
    // supersedes this one's, however slow the LoRA list is.
    await Promise.all([this.showModels(schema), this.showLoraPicker(schema)]);
  }

  buildLoadForm(schema) {
    const loadSchema = schema.load_params_schema ?? { properties: {} };
    this.loadControls = {};
    const fields = [];
    for (const [name, property] of Object.entries(loadSchema.properties ?? {})) {
      const control = schemaControl(name, property, loadSchema.$defs ?? {}, (value) => this.setLoadParam(name, value));
      if (!control) continue;
      this.loadControls[name] = control;
      fields.push(control.element);
    }
    this.ui.loadForm.replaceChildren(...fields);
    this.showLoadParams();
  }

  /** Set one load parameter (undefined: back to its default). */
  setLoadParam(name, value) {
    const params = { ...this.model.get("load_params") };
    if (value === undefined) delete params[name];
    else params[name] = value;
    this.setTrait("load_params", params);
  }

  showLoadParams() {
    const params = this.model.get("load_params");
    const hints = this.hints().load;
    for (const [name, control] of Object.entries(this.loadControls ?? {})) showValue(control, params[name], hints[name]);
    this.loraPicker.show(params.loras);
    this.showVace();
  }

  /**
   * The VACE panel, for a pipeline that supports VACE when it is to be loaded (`vace_enabled` in
   * the load parameters) or is loaded with it. Shown afresh, it reads the server's assets again.
   */
  showVace() {
    const schema = this.selected();
    const loaded = this.loaded?.pipeline_id === schema?.id && this.loaded?.load_params?.vace_enabled;
    const wanted = Boolean(schema?.supports_vace && (this.model.get("load_params").vace_enabled || loaded));
    const shown = !this.ui.vace.hidden;
    this.ui.vace.hidden = !wanted;
    if (wanted && !shown) this.vace.refresh();
  }

  /** The LoRA picker, for a pipeline that takes user LoRAs: the server's files, read afresh. */
  async showLoraPicker(schema) {
    this.ui.loras.hidden = !schema.supports_lora;
    if (!schema.supports_lora) return;
    await this.loraPicker.refresh();
    this.loraPicker.show(this.model.get("load_params").loras);
  }

  /** The input the next stream takes: the chosen one, else the pipeline's default. */
  inputSource(schema = this.selected()) {
    return this.model.get("input_source") || (schema ? defaultInput(schema) : "none");
  }

  /** The `mode_defaults` of the chosen pipeline in the mode its input gives. */
  hints() {
    const schema = this.selected();
    return schema ? modeHints(schema, inputMode(schema, this.inputSource(schema))) : { stream: {}, load: {} };
  }

  /** The input shown, and the hints of its mode in the forms. */
  showInput() {
    this.ui.input.value = this.inputSource();
    this.showLoadParams();
    this.showParameters();
  }

  showParameters() {
    const hints = this.hints().stream;
    for (const [name, control] of Object.entries(this.controls)) showValue(control, this.parameterValue(name), hints[name]);
  }

  parameterValue(name) {
    return this.streamTraits.includes(name) ? this.model.get(name) : this.extraParameters[name];
  }

  buildParameterControls(schema) {
    const parameters = schema.parameters_schema ?? { properties: {} };
    this.controls = {};
    const fields = [];
    for (const [name, property] of Object.entries(parameters.properties ?? {})) {
      if (HAND_MADE.has(name) || (NEEDS_SUPPORT[name] && !schema[NEEDS_SUPPORT[name]])) continue;
      const control = schemaControl(name, property, parameters.$defs ?? {}, (value) => {
        if (this.streamTraits.includes(name)) return this.setTrait(name, value ?? null);
        if (value === undefined) delete this.extraParameters[name];
        else this.extraParameters[name] = value;
        if (value !== undefined) this.send({ [name]: value });
      });
      if (!control) continue;
      this.controls[name] = control;
      fields.push(control.element);
    }
    this.ui.parameters.replaceChildren(...fields);
    this.showParameters();
  }

  async showModels(schema) {
    const poll = ++this.polls.models;
    const ui = this.ui;
    ui.download.hidden = ui.writeSynthetic.hidden = ui.progress.hidden = true;
    // The previous pipeline's line must not stand for this one's while its status is on the way.
    ui.models.textContent = "Checking model files…";
    if (!schema.requires_models) {
      ui.models.textContent = "No model files needed.";
      return this.setTraits({ models: "downloaded" });
    }
    while (poll === this.polls.models) {
      let status;
      try {
        status = await this.api("GET", `api/v1/models/status?pipeline_id=${encodeURIComponent(schema.id)}`);
      } catch (error) {
        ui.models.textContent = `Model status unavailable: ${error.message}`;
        return;
      }
      if (poll !== this.polls.models) return;
      const progress = status.progress;
      if (progress?.is_downloading) {
        ui.progress.hidden = false;
        ui.progress.value = progress.percentage;
        const file = progress.current_artifact ? ` (${progress.current_artifact})` : "";
        ui.models.textContent = `Downloading ${progress.percentage.toFixed(1)}%${file}`;
        this.setTraits({ models: "downloading" });
        await sleep(POLL_MS);
        continue;
      }
      ui.progress.hidden = true;
      ui.download.hidden = ui.writeSynthetic.hidden = status.downloaded;
      if (status.downloaded) {
        ui.models.textContent = status.synthetic ? "Synthetic weights in place." : "Model files downloaded.";
        this.setTraits({ models: status.synthetic ? "synthetic" : "downloaded" });
      } else {
        ui.models.textContent = progress?.error ? `Download failed: ${progress.error}` : "Model files not downloaded.";
        this.setTraits({ models: "missing" });
      }
      return;
    }
  }

  async download(synthetic) {
    const schema = this.selected();
    if (!schema) return;
    try {
      await this.api("POST", "api/v1/models/download", { pipeline_id: schema.id, synthetic });
    } catch (error) {
      this.log(`Download refused: ${error.message}`, "error");
    }
    await this.showModels(schema);
  }

  async load() {
    const schema = this.selected();
    if (!schema) return null;
    this.setStatus("loading");
    // The mode's hints for what the user left unset (`loadedAsWanted` compares only what was set,
    // so a pipeline already loaded is never reloaded for a hint).
    const asked = { pipeline_id: schema.id, load_params: { ...this.hints().load, ...this.model.get("load_params") } };
    const poll = ++this.polls.pipeline;
    for (let waited = false; ; waited = true) {
      try {
        await this.api("POST", "api/v1/pipeline/load", asked);
        break;
      } catch (error) {
        if (!isLoadConflict(error)) {
          this.fail("error", `Load refused: ${error.message}`);
          return null;
        }
        // The current pipeline loads another target (another view's load, say): ask again once it is done.
        if (!waited) this.log(`Waiting to load ${schema.id}: ${error.message}`);
        this.ui.pipelineStatus.textContent = `Waiting for another load to finish before loading ${schema.id}...`;
        await sleep(POLL_MS);
        if (poll !== this.polls.pipeline) return null;
      }
    }
    this.mine = null; // the pipeline just asked for replaces it, once the status shows which it is
    const state = await this.followPipeline(asked);
    // A server run with --synthetic writes missing weights on load: show the files as they are now.
    if (state === "loaded" && schema.requires_models && this.selected() === schema) await this.showModels(schema);
    return state;
  }

  /**
   * Poll the pipeline status until this view's pipeline settles; answers its state ("loaded",
   * "loading", "not_loaded", "error"; null when cancelled). `asked` ({pipeline_id, load_params}
   * as sent) is a load this view just made: the status's `pipelines` say which entry it became.
   */
  async followPipeline(asked = null) {
    const poll = ++this.polls.pipeline;
    while (poll === this.polls.pipeline) {
      let status;
      try {
        status = await this.api("GET", "api/v1/pipeline/status");
      } catch (error) {
        this.ui.pipelineStatus.textContent = `Status unavailable: ${error.message}`;
        return null;
      }
      if (poll !== this.polls.pipeline) return null;
      const entry = this.findMine(status, asked);
      const state = this.showPipelineStatus(entry, asked);
      if (state !== "loading") return state;
      asked = null; // found: `mine` now names it
      await sleep(POLL_MS);
    }
    return null;
  }

  /**
   * This view's entry in the status's `pipelines` (binding `mine` to it when it had none): the
   * load it asked for, else `mine`, else (nothing bound yet) one loaded or loading as the view
   * wants (another's failed load is not adopted), else the current pipeline, which the spec's
   * page and clients stream from.
   */
  findMine(status, asked) {
    const pool = status.pipelines ?? [];
    const like = (wanted, candidates = pool) => candidates
      .filter((p) => p.pipeline_id === wanted.pipeline_id && holds(p.load_params, wanted.load_params))
      .sort((a, b) => b.current - a.current)[0];
    let entry;
    if (asked) entry = like(asked);
    else if (this.mine) return poolEntry(status, this.mine);
    else {
      const wanted = { pipeline_id: this.model.get("pipeline_id"), load_params: this.model.get("load_params") };
      entry = like(wanted, pool.filter((p) => p.status !== "error")) ?? pool.find((p) => p.current);
    }
    if (entry) this.mine = { pipeline_id: entry.pipeline_id, load_params: entry.load_params };
    return entry ?? null;
  }

  /**
   * Show the state of this view's pipeline from its own entry (null when it is not in the pool):
   * its error (a failed load stays listed, whatever is current since), adapters and warnings,
   * never the current pipeline's. Answers the state.
   */
  showPipelineStatus(entry, asked = null) {
    const state = entry?.status ?? "not_loaded";
    const gone = this.mine ?? asked;
    const text = entry ? pipelineStatusText(entry) : gone ? `${gone.pipeline_id} is no longer loaded: Start loads it again.` : "No pipeline loaded.";
    const before = this.loaded;
    this.loaded = state === "loaded" ? entry : null;
    const fresh = this.loaded && !(before?.pipeline_id === entry.pipeline_id && sameValue(before.load_params, entry.load_params));
    if (fresh) for (const warning of entry.warnings ?? []) this.log(`${entry.pipeline_id}: ${warning}`, "warning");
    this.ui.pipelineStatus.textContent = text;
    this.ui.pipelineStatus.classList.toggle("scope-error", state === "error");
    const synthetic = Boolean(this.loaded?.synthetic);
    this.ui.synthetic.hidden = !synthetic;
    const values = { pipeline_status: state, synthetic };
    if (this.loraSliders.show(this.loaded?.loaded_lora_adapters)) values.lora_adapters = this.loraSliders.report();
    if (state === "error") values.error = text;
    this.setTraits(values);
    this.showVace();
    if (!this.stream) {
      if (state === "error") this.fail("error", text);
      else this.setStatus(state === "loading" ? "loading" : this.loaded ? "ready" : "idle");
    }
    this.updateButtons();
    return state;
  }

  /** Whether this view's pipeline is loaded and the wanted one, with every load parameter asked for. */
  loadedAsWanted() {
    if (!this.loaded || this.loaded.pipeline_id !== this.model.get("pipeline_id")) return false;
    return holds(this.loaded.load_params ?? {}, this.model.get("load_params"));
  }

  async autostart(state) {
    if (state === "loading") state = await this.followPipeline();
    if (!this.loadedAsWanted()) state = await this.load();
    if (state === "loaded" && !this.stream && !this.disposed) await this.start();
  }

  // Streaming ------------------------------------------------------------------------------------

  async fillInputs() {
    const ui = this.ui;
    ui.input.append(new Option("none (text to video)", "none"), new Option("webcam", "webcam"), new Option("test pattern", "pattern"));
    try {
      const { assets } = await this.api("GET", "api/v1/assets?type=video");
      for (const asset of assets) {
        const file = asset.path.split(/[\\/]/).pop();
        const relative = asset.folder ? `${asset.folder}/${file}` : file;
        ui.input.append(new Option(`video: ${relative}`, `asset:${relative}`));
      }
    } catch (error) {
      this.log(`Video assets unavailable: ${error.message}`, "warning");
    }
    const wanted = this.inputSource();
    if (![...ui.input.options].some((o) => o.value === wanted)) ui.input.append(new Option(wanted, wanted));
    ui.input.value = wanted;
  }

  fillInputModes(schema) {
    const takesText = schema.supported_modes.includes("text");
    for (const option of this.ui.input.options) option.disabled = option.value === "none" && !takesText;
    if (!takesText && this.model.get("input_source") === "none") this.setTrait("input_source", defaultInput(schema));
  }

  async openSource(schema) {
    const choice = this.inputSource(schema);
    const takesText = schema.supported_modes.includes("text");
    if (choice === "none") {
      if (takesText) return null;
      this.log(`${schema.id} transforms video: sending a test pattern.`, "warning");
      return startTestPattern();
    }
    if (choice === "webcam") {
      try {
        const camera = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
        return { stream: camera, stop: () => camera.getTracks().forEach((t) => t.stop()) };
      } catch (error) {
        this.log(`No webcam (${error.message}): sending a test pattern instead.`, "warning");
        return startTestPattern();
      }
    }
    if (choice.startsWith("asset:")) return this.playAsset(choice.slice("asset:".length));
    return startTestPattern();
  }

  /** A video asset played in a hidden, looping element; its captured track is the input. */
  async playAsset(relative) {
    const player = element("video", { muted: true, loop: true, playsInline: true, crossOrigin: "anonymous" });
    player.muted = true;
    player.src = this.base + "api/v1/assets/" + relative.split("/").map(encodeURIComponent).join("/");
    await player.play();
    const stream = player.captureStream();
    return { stream, stop: () => { player.pause(); player.removeAttribute("src"); } };
  }

  /** What the stream starts with: the mode's hints (`mode_defaults`) under what the user set. */
  initialParameters(schema, video) {
    const mode = video ? "video" : "text";
    const parameters = { input_mode: mode, ...modeHints(schema, mode).stream, ...this.extraParameters, ...this.startOnce };
    for (const name of this.streamTraits) {
      const value = this.model.get(name);
      if (value === null || (name === "prompts" && !value.length)) continue;
      parameters[name] = value;
    }
    // A queued transition starts from the prompts it moves away from.
    if (this.pendingTransition?.from?.length) parameters.prompts = this.pendingTransition.from;
    if (!this.selected()?.supports_prompts) delete parameters.prompts;
    return parameters;
  }

  async start() {
    if (this.stream) return;
    const pipeline = this.mine;
    const schema = this.schemas[pipeline?.pipeline_id];
    if (!schema) return this.fail("error", "Load a pipeline before starting the stream.");
    if (schema.supports_prompts) this.commitEditor();
    if (schema.supports_prompts && !this.model.get("prompts").some((p) => p.text.trim())) {
      return this.fail("error", `${schema.id} generates from prompts: type one above (or set w.prompts) before starting.`);
    }
    if (!schema.supports_prompts) this.pendingTransition = null;
    const transport = this.model.get("transport") || "auto";
    const first = this.firstTransport(transport);
    if (!first) return this.fail("unavailable", NO_WEBRTC);
    this.setStatus("connecting");
    this.loraSliders.reset(); // a new stream starts at the scales the adapters were loaded with
    this.setTraits({ lora_adapters: this.loraSliders.report() });
    this.lastFrames = null;
    this.chunkSeen = false;
    this.heldSends = [];
    let stream = this.newStream(first);
    this.updateButtons();
    try {
      this.source = await this.openSource(schema);
      const video = Boolean(this.source);
      const initial = this.initialParameters(schema, video);
      // "auto": WebRTC first, the WebSocket when it does not connect in time.
      if (transport === "auto" && first === "webrtc" && this.offersWebSocket()) this.trial = stream;
      await stream.start(this.source?.stream ?? null, initial, pipeline);
      this.startOnce = {}; // taken by the stream's first chunk
      if (this.stream !== stream) return;
      if (this.trial === stream) {
        const seconds = this.transports.webrtc_fallback_timeout ?? DEFAULT_FALLBACK_TIMEOUT;
        const connected = await this.connectsWithin(stream, seconds);
        this.trial = null;
        if (this.stream !== stream) return;
        if (!connected) {
          const webrtc = stream;
          stream = this.newStream("websocket"); // the view's stream now: the WebRTC one's last events are ignored
          // Its session ends before the WebSocket's opens, so this view never holds two.
          await webrtc.stop();
          if (this.stream !== stream) return;
          this.log(`WebRTC did not connect within ${seconds} s; streaming over the WebSocket instead.`, "warning");
          // The same start, with what was set meanwhile (nothing could be sent to the WebRTC stream).
          await stream.start(this.source?.stream ?? null, { ...initial, ...this.initialParameters(schema, video) }, pipeline);
          if (this.stream !== stream) return;
        }
      }
      this.el.dataset.session = stream.sessionId ?? "";
      this.setTraits({ session_id: stream.sessionId ?? "", error: "" });
      this.recorder.streaming(stream.sessionId);
      this.timers.push(setInterval(() => this.measure(), STATS_MS));
    } catch (error) {
      if (this.stream !== stream) return;
      await stream.stop();
      this.teardown("error");
      this.fail("error", `Could not start: ${error.message}`);
    }
  }

  /** The transport a stream starts on, for the `transport` asked for; null when there is none. */
  firstTransport(transport) {
    const webrtc = typeof RTCPeerConnection !== "undefined";
    if (transport === "websocket") return "websocket";
    if (webrtc) return "webrtc";
    if (transport === "auto" && this.offersWebSocket()) {
      this.log("This browser offers no WebRTC: streaming over the WebSocket.", "warning");
      return "websocket";
    }
    return null;
  }

  offersWebSocket() {
    return Boolean(this.transports?.transports?.includes("websocket"));
  }

  /** A new stream on `transport`, now the view's: only the view's current stream speaks to it. */
  newStream(transport) {
    // A stopped stream's late events must not end the stream started after it.
    const current = (handle) => (value) => {
      if (this.stream === stream) handle(value);
    };
    const handlers = {
      onVideo: current((media) => this.showVideo(media)),
      onMessage: current((message) => this.onMessage(message)),
      onState: current((state) => this.onConnectionState(state)),
    };
    const stream = transport === "websocket" ? new WebSocketStream(handlers, this.api) : new ScopeStream(handlers, this.api);
    this.stream = stream;
    return stream;
  }

  /** Whether `stream`'s peer connection is connected within `seconds` (false at once when it fails). */
  connectsWithin(stream, seconds) {
    const state = stream.pc?.connectionState;
    if (state === "connected") return Promise.resolve(true);
    if (state !== "new" && state !== "connecting") return Promise.resolve(false);
    return new Promise((resolve) => {
      const settle = (connected) => {
        clearTimeout(timer);
        if (this.trialEnded === settle) this.trialEnded = null;
        resolve(connected);
      };
      const timer = setTimeout(() => settle(false), seconds * 1000);
      this.trialEnded = settle;
    });
  }

  /** Show the transport the stream runs on (none: ""), and report it to Python. */
  showTransport(transport) {
    this.ui.transport.hidden = !transport;
    this.ui.transport.textContent = transport ? `over ${TRANSPORT_NAMES[transport]}` : "";
    if (transport) this.el.dataset.transport = transport;
    else delete this.el.dataset.transport;
    this.setTraits({ active_transport: transport });
  }

  async stop() {
    if (!this.stream) return;
    // The view lets go of the stream at once, while the server frees its session: a start()
    // meanwhile (w.stop(); w.start()) gets a stream of its own that nothing here tears down.
    const freeing = this.stream.stop();
    this.teardown("stopped");
    await freeing;
  }

  /** Release what the stream used; the server side is ended by `stop()` or notices the close. */
  teardown(status, report = true) {
    const stream = this.stream;
    this.stream = null;
    stream?.close();
    this.trialEnded?.(false);
    this.trial = null;
    this.source?.stop();
    this.source = null;
    this.timers.forEach(clearInterval);
    this.timers = [];
    this.ui.video.srcObject = null;
    this.ui.placeholder.hidden = false;
    delete this.el.dataset.session;
    if (report) {
      this.recorder.streaming(null);
      this.setStatus(status);
      this.setTraits({ session_id: "", fps: 0 });
      this.showTransport("");
    }
    this.updateButtons();
  }

  showVideo(media) {
    this.ui.video.srcObject = media;
    this.ui.placeholder.hidden = true;
    this.ui.video.play().catch(() => {});
  }

  onConnectionState(state) {
    const stream = this.stream;
    if (!stream) return;
    if (this.trial === stream) {
      // WebRTC on trial ("auto"): a failure is the WebSocket's turn, not the end of the stream.
      if (state !== "connected") {
        if (["failed", "disconnected", "closed"].includes(state)) this.trialEnded?.(false);
        return;
      }
      this.trial = null;
      this.trialEnded?.(true);
    }
    if (state === "connected") {
      this.setStatus(this.model.get("paused") ? "paused" : "streaming");
      this.showTransport(transportOf(stream));
    }
    if (transportOf(stream) === "websocket") {
      if (state === "closed") {
        this.log("The WebSocket closed: the stream ended.");
        this.teardown("stopped");
      }
      if (state === "failed") {
        const what = stream.opened ? "was lost" : "could not be opened (does a proxy on the way refuse WebSockets?)";
        stream.stop(); // frees its session on the server now, rather than when it times out
        this.teardown("error");
        this.fail("error", `The WebSocket connection to ${this.base} ${what}.`);
      }
      return;
    }
    if (state === "failed" || state === "disconnected") {
      this.teardown("error");
      this.fail("error", `The WebRTC connection ${state}: the media path to ${this.base} is blocked (a TURN server may be needed).`);
    }
  }

  onMessage(message) {
    switch (message.type) {
      case "stats":
        this.ui.synthetic.hidden = !message.synthetic;
        this.setTraits({ chunk: message.chunk, chunk_ms: message.chunk_ms, synthetic: Boolean(message.synthetic) });
        if (message.chunk > 0 && !this.chunkSeen) {
          this.chunkSeen = true;
          this.sendPendingTransition();
        }
        return;
      case "parameters_rejected": {
        const text = `Parameters refused: ${describeErrors(message.errors)}`;
        this.setTraits({ error: text });
        return this.log(text, "error");
      }
      case "recording_started":
        return this.recorder.started(message);
      case "recording_stopped":
        return this.recorder.stopped(message);
      case "parameters_warning":
        return this.log(message.message ?? `Unknown parameters ignored: ${message.unknown_keys.join(", ")}`, "warning");
      case "pipeline_event":
        // The stream's pipeline was loaded for it (it had been unloaded), or that load failed: the status line catches up.
        if (message.event === "loaded" || message.event === "load_failed") this.followPipeline();
        return this.log(`Pipeline ${message.event}: ${message.message}`, message.event.endsWith("failed") ? "error" : "info");
      case "stream_stopped": {
        const text = `Stream stopped${message.error_message ? `: ${message.error_message}` : "."}`;
        this.log(text, message.error_message ? "error" : "info");
        this.teardown("stopped");
        if (message.error_message) this.setTraits({ error: text });
        return;
      }
      default:
        return this.log(message.message ?? JSON.stringify(message), message.type === "client_error" ? "error" : "info");
    }
  }

  /** Browser-side figures: decoded frames per second and the delay from the wire to the screen. */
  async measure() {
    const stream = this.stream;
    if (!stream) return;
    const values = stream instanceof WebSocketStream ? this.socketFigures(stream) : await this.peerFigures(stream.pc);
    if (!values) return;
    this.setTraits(values);
    const m = this.model;
    const latency = m.get("latency_ms") === null ? "" : ` · ${m.get("latency_ms")} ms latency`;
    this.ui.stats.textContent = `${m.get("fps").toFixed(1)} fps${latency} · chunk ${m.get("chunk")} · ${m.get("chunk_ms").toFixed(0)} ms/chunk`;
  }

  /** The figures of a WebSocket stream: frames it drew, and the delay from the server's encoder to the canvas. */
  socketFigures(stream) {
    const now = { frames: stream.framesDecoded, at: performance.now() };
    const values = {};
    if (this.lastFrames && now.at > this.lastFrames.at) {
      values.fps = Math.round(((now.frames - this.lastFrames.frames) * 1000 * 10) / (now.at - this.lastFrames.at)) / 10;
    }
    this.lastFrames = now;
    if (stream.latencyMs !== null) values.latency_ms = Math.round(stream.latencyMs);
    return values;
  }

  /** The figures of a WebRTC stream, from its peer connection's stats (null before it has inbound video). */
  async peerFigures(pc) {
    if (!pc) return null;
    const report = await pc.getStats();
    let inbound = null;
    let rtt = null;
    report.forEach((entry) => {
      if (entry.type === "inbound-rtp" && entry.kind === "video") inbound = entry;
      if (entry.type === "candidate-pair" && entry.nominated && entry.currentRoundTripTime !== undefined) rtt = entry.currentRoundTripTime;
    });
    if (!inbound) return null;
    const now = { frames: inbound.framesDecoded ?? 0, at: inbound.timestamp };
    const values = {};
    if (this.lastFrames && now.at > this.lastFrames.at) {
      values.fps = Math.round(((now.frames - this.lastFrames.frames) * 1000 * 10) / (now.at - this.lastFrames.at)) / 10;
    }
    this.lastFrames = now;
    if (inbound.jitterBufferEmittedCount) {
      const buffer = (inbound.jitterBufferDelay / inbound.jitterBufferEmittedCount) * 1000;
      values.latency_ms = Math.round(buffer + (rtt ?? 0) * 500);
    }
    return values;
  }

  // Parameters -----------------------------------------------------------------------------------

  /** Send a parameters message; says so plainly when there is no open stream to take it. */
  send(parameters) {
    if (!this.stream) return false;
    if (this.pendingTransition && !this.chunkSeen && !("transition" in parameters)) {
      this.heldSends.push(parameters); // asked for after the queued transition: it goes first
      return true;
    }
    if (this.stream.send(parameters)) return true;
    if (this.trial === this.stream) {
      // "auto" is still trying WebRTC: whichever transport streams starts from the controls' values.
      this.log(`Not sent yet (${Object.keys(parameters).join(", ")}): still connecting; the stream starts with the values set now.`);
      return false;
    }
    const channel = transportOf(this.stream) === "websocket" ? "WebSocket" : "data channel";
    this.log(`Not sent (${Object.keys(parameters).join(", ")}): the ${channel} is not open yet.`, "warning");
    return false;
  }

  traitChanged(name) {
    const value = this.model.get(name);
    if (name === "prompts") this.showPrompts();
    if (name === "prompt_interpolation_method") this.ui.blend.value = value;
    if (name === "paused") {
      this.ui.pause.textContent = value ? "Resume" : "Pause";
      if (this.stream) this.setStatus(value ? "paused" : "streaming");
    }
    if (this.controls[name]) showValue(this.controls[name], value, this.hints().stream[name]);
    if (VACE_PARAMETERS.includes(name)) this.vace.show();
    if (value === null && NULL_STOPS.has(name)) return this.send({ [name]: null });
    if (value === null || (name === "prompts" && !value.length)) return;
    if (name === "prompts" && this.transitionTarget === JSON.stringify(value)) return; // reached by the transition
    this.transitionTarget = null;
    if (this.send({ [name]: value }) && name === "prompts") this.log(`Prompts sent: ${promptsText(value)}`);
  }

  /**
   * A transition asked for (`w.transition_to`, or the Transition button). A stream with a chunk
   * out takes it at once; before that (no stream yet, or still connecting) it is queued: the
   * stream starts on the prompts it moves away from and the transition follows its first chunk.
   * Taken, the request is cleared, so a view shown later does not repeat it.
   */
  sendTransition(request = this.model.get("_transition")) {
    const { id, from_prompts: from, ...transition } = request ?? {};
    if (!transition.target_prompts) return;
    this.transitionTarget = JSON.stringify(transition.target_prompts);
    this.pendingTransition = { transition, from: from ?? this.model.get("prompts") };
    if (this.stream && this.chunkSeen) return this.sendPendingTransition();
    this.log(`Transition to ${promptsText(transition.target_prompts)} queued: it follows the stream's first chunk.`);
  }

  sendPendingTransition() {
    if (!this.pendingTransition) return;
    const { transition } = this.pendingTransition;
    if (!this.send({ transition })) return;
    this.pendingTransition = null;
    for (const held of this.heldSends.splice(0)) this.send(held);
    this.setTraits({ _transition: {} });
    this.log(`Transition to ${promptsText(transition.target_prompts)} over ${transition.num_steps} chunks.`);
  }

  transitionFromControls() {
    const text = this.ui.transitionText.value.trim();
    if (!text) return this.log("No transition: type the prompt to move to first.", "warning");
    if (!this.stream) this.commitEditor(); // a queued transition starts from what the editor shows
    const transition = {
      target_prompts: [{ text, weight: 1 }],
      num_steps: Number(this.ui.transitionSteps.value) || 0,
      temporal_interpolation_method: this.ui.transitionMethod.value,
    };
    this.setTraits({ _transition: { id: Date.now(), ...transition }, prompts: transition.target_prompts });
  }

  /** Send `lora_scales` to the live stream; the sliders (and `w.lora_adapters`) show what was sent. */
  setLoraScales(entries) {
    if (!this.stream) return this.log("LoRA scales not sent: there is no live stream.", "warning");
    if (!this.send({ lora_scales: entries })) return;
    for (const { path, scale } of entries) this.loraSliders.set(path, scale);
    this.setTraits({ lora_adapters: this.loraSliders.report() });
    this.log(`LoRA scales sent: ${entries.map((e) => `${e.path.split(/[\\/]/).pop()} ${e.scale}`).join(", ")}`);
  }

  /**
   * A one-shot request (a VACE image): to the live stream, which applies it to its next chunk;
   * with no stream, it goes with the next stream's first chunk (in `initialParameters`).
   */
  sendOnce(parameters, what) {
    if (!this.stream) {
      this.startOnce = { ...this.startOnce, ...parameters };
      return this.log(`Queued for the stream's first chunk: ${what}.`);
    }
    if (this.send(parameters)) this.log(`Sent ${what}.`);
  }

  /** The input track becomes VACE's control video: make sure the stream has one. */
  useInput() {
    const schema = this.selected();
    if (schema && this.inputSource(schema) === "none") this.setTrait("input_source", "webcam");
    if (this.stream && !this.source) {
      this.log("This stream has no input video: Stop and Start it to send the webcam as the control video.", "warning");
    }
  }

  /**
   * Record on the server (`w.record()`): the live stream from its next chunk; with no stream yet,
   * the next stream from its first chunk (`recording: true` in its initial parameters), the only
   * way a video-mode recording can be rendered again exactly.
   */
  record() {
    if (this.stream) return this.recorder.start();
    this.sendOnce({ recording: true }, "recording (from the stream's first chunk)");
  }

  command(request) {
    const actions = {
      load: () => this.load(),
      start: () => this.start(),
      stop: () => this.stop(),
      reset_cache: () => this.send({ reset_cache: true }),
      lora_scales: () => this.setLoraScales(request.lora_scales),
      send_once: () => this.sendOnce(request.parameters, request.what),
      record: () => this.record(),
      stop_recording: () => this.recorder.stop(),
    };
    actions[request?.name]?.();
  }

  // Prompt editor ----------------------------------------------------------------------------------

  showPrompts() {
    const prompts = this.model.get("prompts");
    this.ui.prompts.replaceChildren(...(prompts.length ? prompts : [{ text: "", weight: 1 }]).map((p) => this.promptRow(p)));
  }

  /** One editable prompt; an empty one lives in the editor only, never in the `prompts` trait. */
  promptRow(prompt) {
    const text = element("textarea", { rows: 2, value: prompt.text, placeholder: "Describe the video", className: "scope-prompt-text" });
    const weight = element("input", { type: "number", min: 0, step: "any", value: prompt.weight ?? 1, className: "scope-prompt-weight" });
    text.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey) {
        event.preventDefault();
        this.sendPromptsFromEditor();
      }
    });
    const row = element("div", { className: "scope-prompt" }, text, weight);
    row.append(element("button", {
      type: "button", textContent: "×", title: "Remove this prompt",
      onclick: () => {
        row.remove();
        this.setTrait("prompts", this.typedPrompts());
        if (!this.ui.prompts.children.length) this.showPrompts();
      },
    }));
    return row;
  }

  /** What the prompt editor shows becomes `prompts` (typed but not sent, it still counts at Start). */
  commitEditor() {
    const typed = this.typedPrompts();
    if (!same(typed, this.model.get("prompts"))) this.setTrait("prompts", typed);
  }

  /** "Send prompts": the editor's non-empty prompts become `prompts` (and go to a live stream). */
  sendPromptsFromEditor() {
    const prompts = this.typedPrompts();
    if (!prompts.length) {
      return this.log("Nothing sent: the prompt is empty. Type what the video should show, then send.", "warning");
    }
    if (!same(prompts, this.model.get("prompts"))) return this.setTrait("prompts", prompts);
    if (this.send({ prompts })) this.log(`Prompts sent: ${promptsText(prompts)}`); // the same again: resent
  }

  /** The editor's prompts that have text: what `prompts` may hold. */
  typedPrompts() {
    return this.readPrompts().filter((p) => p.text.trim());
  }

  readPrompts() {
    return [...this.ui.prompts.querySelectorAll(".scope-prompt")].map((row) => ({
      text: row.querySelector(".scope-prompt-text").value,
      weight: Number(row.querySelector(".scope-prompt-weight").value) || 0,
    }));
  }

  updateButtons() {
    const ui = this.ui;
    const streaming = this.stream !== null;
    ui.start.disabled = streaming || !this.mine;
    ui.pause.disabled = ui.reset.disabled = ui.stop.disabled = !streaming;
    ui.load.disabled = ui.pipeline.disabled = ui.input.disabled = streaming;
    this.loraSliders.enable(streaming);
  }
}
