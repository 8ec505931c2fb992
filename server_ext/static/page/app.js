// The Scope server's own page: pick and load a pipeline, then stream it over WebRTC.

import { api, apiBase, describeErrors, pipelineStatusText } from "./api.js";
import { ScopeStream } from "./stream.js";
import { startTestPattern } from "./test-pattern.js";

const POLL_MS = 500;
const MAX_MESSAGES = 50;

const $ = (id) => document.getElementById(id);
const ui = {
  server: $("server"),
  pipeline: $("pipeline"),
  description: $("pipeline-description"),
  modelsStatus: $("models-status"),
  download: $("download"),
  writeSynthetic: $("write-synthetic"),
  progress: $("download-progress"),
  load: $("load"),
  pipelineStatus: $("pipeline-status"),
  input: $("input"),
  inputNote: $("input-note"),
  start: $("start"),
  pause: $("pause"),
  stop: $("stop"),
  promptForm: $("prompt-form"),
  prompt: $("prompt"),
  video: $("video"),
  connection: $("connection"),
  stats: $("stats"),
  synthetic: $("synthetic"),
  messages: $("messages"),
};

const state = {
  schemas: {},
  loaded: null, // id of the pipeline the server has loaded
  stream: null,
  source: null, // {stream, stop()} of what we send
  paused: false,
};

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// Each poll loop belongs to one action; starting another action retires the old loop.
const polls = { models: 0, pipeline: 0 };

function selected() {
  return state.schemas[ui.pipeline.value];
}

function log(text, kind = "info") {
  const item = document.createElement("li");
  item.className = kind;
  item.textContent = `${new Date().toLocaleTimeString()}  ${text}`;
  ui.messages.prepend(item);
  while (ui.messages.children.length > MAX_MESSAGES) ui.messages.lastChild.remove();
}

// Pipelines and models -----------------------------------------------------------------

async function showPipeline() {
  const schema = selected();
  if (!schema) return;
  ui.description.textContent = schema.description || "";
  ui.promptForm.hidden = !schema.supports_prompts;
  const takesText = schema.supported_modes.includes("text");
  const takesVideo = schema.supported_modes.includes("video");
  const option = (value) => ui.input.querySelector(`option[value="${value}"]`);
  option("none").disabled = !takesText;
  option("camera").disabled = option("pattern").disabled = !takesVideo;
  if (ui.input.selectedOptions[0]?.disabled) ui.input.value = takesText ? "none" : "camera";
  ui.inputNote.textContent = takesText ? "" : `${schema.name || schema.id} transforms video: it needs an input.`;
  await showModels(schema);
}

async function showModels(schema) {
  const poll = ++polls.models;
  ui.download.hidden = ui.writeSynthetic.hidden = true;
  ui.progress.hidden = true;
  if (!schema.requires_models) {
    ui.modelsStatus.textContent = "No model files needed.";
    return;
  }
  ui.modelsStatus.textContent = "Checking model files...";
  try {
    const status = await api("GET", `api/v1/models/status?pipeline_id=${encodeURIComponent(schema.id)}`);
    if (poll !== polls.models) return;
    if (status.progress?.is_downloading) return followDownload(schema.id, poll);
    showModelStatus(status);
  } catch (error) {
    ui.modelsStatus.textContent = `Model status unavailable: ${error.message}`;
  }
}

function showModelStatus(status) {
  const failed = status.progress?.error;
  ui.modelsStatus.textContent = status.downloaded
    ? status.synthetic ? "Synthetic weights in place (random: not a real model's output)." : "Model files downloaded."
    : failed
      ? `Download failed: ${failed}`
      : "Model files not downloaded.";
  ui.download.hidden = status.downloaded;
  ui.writeSynthetic.hidden = status.downloaded;
  ui.progress.hidden = true;
}

async function download(synthetic = false) {
  const schema = selected();
  ui.download.disabled = ui.writeSynthetic.disabled = true;
  try {
    await api("POST", "api/v1/models/download", { pipeline_id: schema.id, synthetic });
    await followDownload(schema.id, ++polls.models);
  } catch (error) {
    ui.modelsStatus.textContent = `Download refused: ${error.message}`;
  } finally {
    ui.download.disabled = ui.writeSynthetic.disabled = false;
  }
}

async function followDownload(pipelineId, poll) {
  ui.download.hidden = ui.writeSynthetic.hidden = true;
  ui.progress.hidden = false;
  while (poll === polls.models) {
    let status;
    try {
      status = await api("GET", `api/v1/models/status?pipeline_id=${encodeURIComponent(pipelineId)}`);
    } catch (error) {
      ui.modelsStatus.textContent = `Model status unavailable: ${error.message}`;
      await sleep(POLL_MS * 4);
      continue;
    }
    if (poll !== polls.models) return;
    const progress = status.progress;
    if (!progress?.is_downloading) return showModelStatus(status);
    ui.progress.value = progress.percentage;
    const file = progress.current_artifact ? ` (${progress.current_artifact})` : "";
    ui.modelsStatus.textContent = `Downloading ${progress.percentage.toFixed(1)}%${file}`;
    await sleep(POLL_MS);
  }
}

async function load() {
  const schema = selected();
  ui.load.disabled = true;
  try {
    await api("POST", "api/v1/pipeline/load", { pipeline_id: schema.id });
    await followPipeline();
  } catch (error) {
    ui.pipelineStatus.textContent = `Load refused: ${error.message}`;
  } finally {
    ui.load.disabled = false;
  }
}

/** Poll the pipeline status until it settles; shows it and enables Start when loaded. */
async function followPipeline() {
  const poll = ++polls.pipeline;
  while (poll === polls.pipeline) {
    let status;
    try {
      status = await api("GET", "api/v1/pipeline/status");
    } catch (error) {
      ui.pipelineStatus.textContent = `Status unavailable: ${error.message}`;
      return;
    }
    showPipelineStatus(status);
    if (status.status !== "loading") return;
    await sleep(POLL_MS);
  }
}

function showPipelineStatus(status) {
  state.loaded = status.status === "loaded" ? status.pipeline_id : null;
  ui.pipelineStatus.textContent = pipelineStatusText(status);
  ui.pipelineStatus.className = status.status === "error" ? "error" : "";
  ui.synthetic.hidden = !(status.status === "loaded" && status.synthetic);
  updateButtons();
}

// Streaming ----------------------------------------------------------------------------

async function openSource(schema) {
  const choice = ui.input.value;
  if (choice === "none") return null;
  if (choice === "camera") {
    try {
      if (!navigator.mediaDevices?.getUserMedia) throw new Error("this page cannot use a camera here");
      const camera = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
      ui.inputNote.textContent = "Sending your webcam.";
      return { stream: camera, stop: () => camera.getTracks().forEach((t) => t.stop()) };
    } catch (error) {
      if (schema.supported_modes.includes("text")) throw new Error(`No webcam: ${error.message}`);
      ui.inputNote.textContent = `No webcam available (${error.message}): sending a generated test pattern instead.`;
    }
  } else {
    ui.inputNote.textContent = "Sending a generated test pattern.";
  }
  return startTestPattern();
}

async function start() {
  const schema = state.schemas[state.loaded];
  if (!schema) return;
  ui.start.disabled = true;
  try {
    state.source = await openSource(schema);
    const initialParameters = { input_mode: state.source ? "video" : "text" };
    const prompt = ui.prompt.value.trim();
    if (schema.supports_prompts && prompt) initialParameters.prompts = [{ text: prompt, weight: 1 }];
    state.paused = false;
    state.stream = new ScopeStream({ onVideo, onMessage, onState });
    updateButtons();
    ui.connection.textContent = "connecting...";
    await state.stream.start(state.source?.stream ?? null, initialParameters);
  } catch (error) {
    log(`Could not start: ${error.message}`, "error");
    await state.stream?.stop();
    teardown("failed to start");
  }
}

async function stop() {
  const stream = state.stream;
  if (stream) await stream.stop();
  teardown("stopped");
}

/** Release everything the stream used; the server side is ended by `stop()` or the server. */
function teardown(label) {
  const stream = state.stream;
  state.stream = null;
  stream?.close();
  state.source?.stop();
  state.source = null;
  ui.video.srcObject = null;
  ui.connection.textContent = label;
  ui.stats.textContent = "";
  updateButtons();
}

function togglePause() {
  const paused = !state.paused;
  if (state.stream?.send({ paused })) {
    state.paused = paused;
    ui.pause.textContent = paused ? "Resume" : "Pause";
  }
}

function sendPrompt(event) {
  event.preventDefault();
  const text = ui.prompt.value.trim();
  if (!text || !state.stream) return;
  if (state.stream.send({ prompts: [{ text, weight: 1 }] })) log(`Prompt sent: ${text}`);
  else log("Prompt not sent: the data channel is not open.", "error");
}

function onVideo(mediaStream) {
  ui.video.srcObject = mediaStream;
}

function onState(connectionState) {
  if (!state.stream) return;
  ui.connection.textContent = connectionState;
  if (connectionState === "failed") {
    log("The connection failed.", "error");
    teardown("connection failed");
  }
}

function onMessage(message) {
  switch (message.type) {
    case "stats":
      return showStats(message);
    case "pipeline_event":
      return log(`Pipeline ${message.event}: ${message.message}`, message.event.endsWith("failed") ? "error" : "info");
    case "parameters_rejected":
      return log(`Parameters rejected: ${describeErrors(message.errors)}`, "error");
    case "parameters_warning":
      return log(message.message ?? `Unknown parameters ignored: ${message.unknown_keys.join(", ")}`, "warning");
    case "stream_stopped":
      log(`Stream stopped${message.error_message ? `: ${message.error_message}` : "."}`, message.error_message ? "error" : "info");
      return teardown("stream stopped");
    default:
      return log(message.message ?? JSON.stringify(message), message.type === "client_error" ? "error" : "info");
  }
}

function showStats(stats) {
  ui.stats.textContent = `${stats.fps.toFixed(1)} fps · chunk ${stats.chunk} · ${stats.chunk_ms.toFixed(1)} ms/chunk · ${stats.state}`;
  ui.synthetic.hidden = !stats.synthetic;
}

function updateButtons() {
  const streaming = state.stream !== null;
  ui.start.disabled = streaming || !state.loaded;
  ui.pause.disabled = !streaming;
  ui.stop.disabled = !streaming;
  ui.input.disabled = streaming;
  ui.pipeline.disabled = streaming;
  ui.load.disabled = streaming;
  if (!streaming) ui.pause.textContent = "Pause";
}

// Start-up -----------------------------------------------------------------------------

async function init() {
  ui.server.textContent = `server ${location.origin}${apiBase}`;
  ui.pipeline.addEventListener("change", showPipeline);
  ui.download.addEventListener("click", () => download(false));
  ui.writeSynthetic.addEventListener("click", () => download(true));
  ui.load.addEventListener("click", load);
  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", stop);
  ui.pause.addEventListener("click", togglePause);
  ui.promptForm.addEventListener("submit", sendPrompt);
  addEventListener("pagehide", () => state.stream?.close());
  try {
    state.schemas = (await api("GET", "api/v1/pipelines/schemas")).pipelines;
    for (const schema of Object.values(state.schemas)) {
      ui.pipeline.append(new Option(schema.name ? `${schema.name} (${schema.id})` : schema.id, schema.id));
    }
    const status = await api("GET", "api/v1/pipeline/status");
    if (status.pipeline_id in state.schemas) ui.pipeline.value = status.pipeline_id;
    showPipelineStatus(status);
    await showPipeline();
    if (status.status === "loading") await followPipeline();
  } catch (error) {
    ui.pipelineStatus.textContent = error.message;
    ui.pipelineStatus.className = "error";
  }
}

init();
