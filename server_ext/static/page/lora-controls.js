// User LoRAs in the view: the picker that sets the `loras` load parameter from the files the
// server lists (`GET api/v1/lora/list`), and one scale slider per adapter the loaded pipeline
// keeps apart from its weights (`runtime_peft`), which sends `lora_scales` to the live stream.

import { element } from "./dom.js";

/** The range a LoRA scale takes (the load parameter's and `lora_scales`' own bounds). */
export const LORA_SCALE = { min: -10, max: 10, step: 0.05 };

/** The merge modes a LoRA can ask for; "" follows the `lora_merge_mode` load parameter. */
const MERGE_MODES = [
  ["", "as lora_merge_mode"],
  ["permanent_merge", "permanent_merge"],
  ["runtime_peft", "runtime_peft"],
];

const scaleInput = (type, value, className) =>
  element("input", { type, min: LORA_SCALE.min, max: LORA_SCALE.max, step: LORA_SCALE.step, value, className });

/**
 * The LoRAs to load: one row per file in the LoRA directory (use it, its scale, its merge mode).
 * `onChange(loras)` gets the `loras` load parameter, or undefined when none is chosen.
 */
export class LoraPicker {
  constructor(api, onChange) {
    this.api = api;
    this.onChange = onChange;
    this.files = [];
    this.list = element("div", { className: "scope-lora-list" });
    this.note = element("div", { className: "scope-muted" });
    this.element = element("details", { className: "scope-loras", open: true },
      element("summary", { textContent: "LoRAs" }), this.list, this.note);
  }

  /** Read the server's LoRA files again; answers false when the list is unavailable. */
  async refresh() {
    try {
      this.files = (await this.api("GET", "api/v1/lora/list")).lora_files;
      this.note.textContent = this.files.length ? "" : "No LoRA files in the server's LoRA directory.";
      return true;
    } catch (error) {
      this.files = [];
      this.note.textContent = `LoRA files unavailable: ${error.message}`;
      return false;
    }
  }

  /**
   * Show `loras` (the load parameter) on the rows: one per file listed, then one per other path it
   * names. A row not in use keeps the scale and mode typed into it, for when it is ticked.
   */
  show(loras = []) {
    const chosen = new Map((loras ?? []).map((lora) => [lora.path, lora]));
    const existing = new Map([...this.list.querySelectorAll(".scope-lora")].map((row) => [row.dataset.path, row]));
    const wanted = this.files.map((file) => [file.path, file.folder ? `${file.folder}/${file.name}` : file.name]);
    for (const path of chosen.keys()) if (!wanted.some(([p]) => p === path)) wanted.push([path, path]);
    const rows = wanted.map(([path, label]) => existing.get(path) ?? this.row(path, label));
    this.list.replaceChildren(...rows);
    for (const row of rows) {
      const lora = chosen.get(row.dataset.path);
      row.querySelector(".scope-lora-use").checked = Boolean(lora);
      if (!lora) continue;
      row.querySelector(".scope-lora-scale").value = lora.scale ?? 1;
      row.querySelector(".scope-lora-mode").value = lora.merge_mode ?? "";
    }
  }

  row(path, label) {
    const use = element("input", { type: "checkbox", className: "scope-lora-use" });
    const scale = scaleInput("number", 1, "scope-lora-scale");
    const mode = element("select", { className: "scope-lora-mode" });
    for (const [value, text] of MERGE_MODES) mode.append(new Option(text, value));
    const row = element("div", { className: "scope-lora", dataset: { path } },
      element("label", { className: "scope-lora-name", title: path }, use, ` ${label}`), scale, mode);
    for (const control of [use, scale, mode]) control.addEventListener("change", () => this.onChange(this.read()));
    return row;
  }

  /** The rows in use, as the `loras` load parameter (undefined when none is). */
  read() {
    const loras = [...this.list.querySelectorAll(".scope-lora")]
      .filter((row) => row.querySelector(".scope-lora-use").checked)
      .map((row) => ({
        path: row.dataset.path,
        scale: Number(row.querySelector(".scope-lora-scale").value) || 0,
        merge_mode: row.querySelector(".scope-lora-mode").value || null,
      }));
    return loras.length ? loras : undefined;
  }
}

/**
 * One slider per adapter kept apart from the weights. A stream starts at the scales the adapters
 * were loaded with; `onScale(path, scale)` is called when the user lets go of a slider.
 */
export class LoraSliders {
  constructor(onScale) {
    this.onScale = onScale;
    this.adapters = [];
    this.scales = {};
    this.list = element("div", { className: "scope-lora-list" });
    this.element = element("section", { className: "scope-lora-scales", hidden: true },
      element("span", { textContent: "LoRA scales (this stream)" }), this.list);
  }

  /** The loaded pipeline's adapters (`loaded_lora_adapters`); answers whether the set changed. */
  show(adapters) {
    const runtime = (adapters ?? []).filter((adapter) => adapter.merge_mode === "runtime_peft");
    if (JSON.stringify(runtime) === JSON.stringify(this.adapters)) return false;
    this.adapters = runtime;
    this.reset();
    this.element.hidden = !runtime.length;
    return true;
  }

  /** Back to the scales the adapters were loaded with, as a new stream has them. */
  reset() {
    this.scales = Object.fromEntries(this.adapters.map((adapter) => [adapter.path, adapter.scale]));
    this.list.replaceChildren(...this.adapters.map((adapter) => this.row(adapter)));
  }

  row(adapter) {
    const slider = scaleInput("range", this.scales[adapter.path], "scope-lora-slider");
    slider.dataset.path = adapter.path;
    const value = element("output", { className: "scope-lora-value", textContent: Number(slider.value).toFixed(2) });
    slider.addEventListener("input", () => (value.textContent = Number(slider.value).toFixed(2)));
    slider.addEventListener("change", () => this.onScale(adapter.path, Number(slider.value)));
    return element("label", { className: "scope-lora", title: adapter.path }, element("span", { textContent: adapter.name }), slider, value);
  }

  /** Show a scale the stream took (from a slider or from Python). */
  set(path, scale) {
    this.scales[path] = scale;
    const slider = [...this.list.querySelectorAll(".scope-lora-slider")].find((s) => s.dataset.path === path);
    if (!slider) return;
    slider.value = scale;
    slider.nextSibling.textContent = Number(scale).toFixed(2);
  }

  enable(streaming) {
    for (const slider of this.list.querySelectorAll(".scope-lora-slider")) slider.disabled = !streaming;
  }

  /** The adapters with this stream's current scales (what `w.lora_adapters` reads). */
  report() {
    return this.adapters.map((adapter) => ({ ...adapter, scale: this.scales[adapter.path] ?? adapter.scale }));
  }
}
