// VACE in the view: images and videos from the server's assets directory (listed by
// `GET api/v1/assets`, uploaded with `POST api/v1/assets?filename=`) guiding the live stream.
//
// A picked image goes out once, as the chunk's reference (`vace_ref_images`) or as its first or
// last frame; the context scale, the control video and the mask are stream parameters that
// persist, held by the view's traitlets (`vace_context_scale`, `vace_input_frames`,
// `vace_use_input_video`, `vace_input_masks`), so Python and the panel set the same values.

import { element } from "./dom.js";

/** The stream parameters this panel sets (the generated parameter form leaves them out). */
export const VACE_PARAMETERS = [
  "vace_ref_images", "vace_context_scale", "vace_use_input_video", "vace_input_frames", "vace_input_masks",
  "first_frame_image", "last_frame_image",
];

/** The range of `vace_context_scale` (its schema's bounds) and the default the server applies. */
export const CONTEXT_SCALE = { min: 0, max: 2, step: 0.05, default: 1 };

/** The control-video choice that makes the stream's input track the control video. */
export const CONTROL_FROM_INPUT = "input";

/** An asset as its list shows it: the path below the assets directory. */
export function assetLabel(asset) {
  const file = asset.path.split(/[\\/]/).pop();
  return asset.folder ? `${asset.folder}/${file}` : file;
}

/** The URL that serves an asset (the endpoint is open, so an <img> can load it). */
export function assetUrl(base, asset) {
  return base + "api/v1/assets/" + assetLabel(asset).split("/").map(encodeURIComponent).join("/");
}

/**
 * The VACE panel. `view` gives it what it acts through: `api`, `base`, `get(name)` and
 * `set(name, value)` for the traitlets (a path set to null goes out as null: that input stops),
 * `sendOnce(parameters, what)` for one-shot requests, `useInput()` to give the stream an input
 * track, and `log(text, kind)`.
 */
export class VacePanel {
  constructor(view) {
    this.view = view;
    this.assets = [];
    const b = (text, onClick, className) => element("button", { type: "button", textContent: text, onclick: onClick, className });
    this.image = element("select", { className: "scope-vace-image" });
    this.upload = element("input", { type: "file", accept: "image/*,video/*", className: "scope-vace-upload" });
    this.thumb = element("img", { className: "scope-vace-thumb", alt: "", hidden: true });
    this.scale = element("input", {
      type: "range", min: CONTEXT_SCALE.min, max: CONTEXT_SCALE.max, step: CONTEXT_SCALE.step,
      value: CONTEXT_SCALE.default, className: "scope-vace-scale",
    });
    this.scaleValue = element("output", { className: "scope-vace-scale-value" });
    this.control = element("select", { className: "scope-vace-control" });
    this.mask = element("select", { className: "scope-vace-mask" });
    this.note = element("div", { className: "scope-muted" });
    this.element = element("details", { className: "scope-vace", open: true, hidden: true },
      element("summary", { textContent: "VACE" }),
      element("div", { className: "scope-row" }, element("span", { textContent: "Image" }), this.image,
        element("label", { className: "scope-vace-upload-label", textContent: "Upload " }, this.upload)),
      element("div", { className: "scope-vace-picked" }, this.thumb,
        element("div", { className: "scope-row" },
          b("Send as reference", () => this.sendImage("vace_ref_images"), "scope-vace-send-ref"),
          b("as first frame", () => this.sendImage("first_frame_image"), "scope-vace-first"),
          b("as last frame", () => this.sendImage("last_frame_image"), "scope-vace-last"))),
      element("div", {
        className: "scope-muted",
        textContent: "A reference conditions the chunk it comes with (one-shot); send it again to renew it. " +
          "Sent before Start, it goes with the stream's first chunk.",
      }),
      element("label", { className: "scope-row" }, element("span", { textContent: "Context scale" }), this.scale, this.scaleValue),
      element("label", { className: "scope-row" }, element("span", { textContent: "Control video" }), this.control),
      element("label", { className: "scope-row" }, element("span", { textContent: "Mask" }), this.mask),
      this.note);
    this.image.addEventListener("change", () => this.showThumb());
    this.upload.addEventListener("change", () => this.uploadChosen());
    this.scale.addEventListener("input", () => (this.scaleValue.textContent = Number(this.scale.value).toFixed(2)));
    this.scale.addEventListener("change", () => this.view.set("vace_context_scale", Number(this.scale.value)));
    this.control.addEventListener("change", () => this.chooseControl(this.control.value));
    this.mask.addEventListener("change", () => this.choosePath("vace_input_masks", this.mask.value));
    this.fill();
  }

  /** Read the server's assets again; answers false when the list is unavailable. */
  async refresh() {
    try {
      this.assets = (await this.view.api("GET", "api/v1/assets")).assets;
      this.note.textContent = this.assets.length ? "" : "No assets yet: upload an image (or a video) above.";
    } catch (error) {
      this.assets = [];
      this.note.textContent = `Assets unavailable: ${error.message}`;
      return false;
    }
    this.fill();
    return true;
  }

  /** The choosers' options from the assets, each keeping its choice (or showing the traitlet's). */
  fill() {
    const images = this.assets.filter((a) => a.type === "image");
    const videos = this.assets.filter((a) => a.type === "video");
    const options = (select, first, entries) => {
      const kept = select.value;
      select.replaceChildren(...first.map(([text, value]) => new Option(text, value)),
        ...entries.map((asset) => new Option(`${asset.type}: ${assetLabel(asset)}`, asset.path)));
      select.value = kept;
      if (select.selectedIndex < 0) select.selectedIndex = 0;
    };
    options(this.image, [["(choose an image)", ""]], images);
    options(this.control, [["none", ""], ["the input video (webcam)", CONTROL_FROM_INPUT]], [...videos, ...images]);
    options(this.mask, [["none (generate everywhere)", ""]], [...images, ...videos]);
    this.show();
    this.showThumb();
  }

  /** Show the traitlets' values (after Python or the panel set one). */
  show() {
    const scale = this.view.get("vace_context_scale") ?? CONTEXT_SCALE.default;
    this.scale.value = scale;
    this.scaleValue.textContent = Number(scale).toFixed(2);
    const frames = this.view.get("vace_input_frames");
    this.select(this.control, this.view.get("vace_use_input_video") ? CONTROL_FROM_INPUT : frames ?? "");
    this.select(this.mask, this.view.get("vace_input_masks") ?? "");
  }

  /** Choose `value`, adding an entry for a path the list does not have (set from Python). */
  select(chooser, value) {
    if (![...chooser.options].some((o) => o.value === value)) chooser.append(new Option(value, value));
    chooser.value = value;
  }

  picked() {
    return this.assets.find((a) => a.path === this.image.value) ?? null;
  }

  showThumb() {
    const asset = this.picked();
    this.thumb.hidden = !asset;
    if (asset) {
      this.thumb.src = assetUrl(this.view.base, asset);
      this.thumb.title = asset.path;
    } else {
      this.thumb.removeAttribute("src");
    }
  }

  /** Upload the file chosen in the file input; an image becomes the picked one, a video the control. */
  async uploadChosen() {
    const file = this.upload.files?.[0];
    if (!file) return;
    let asset;
    try {
      asset = await this.view.api("POST", `api/v1/assets?filename=${encodeURIComponent(file.name)}`, file);
    } catch (error) {
      this.view.log(`Upload of ${file.name} refused: ${error.message}`, "error");
      return;
    } finally {
      this.upload.value = "";
    }
    this.view.log(`Uploaded ${assetLabel(asset)}.`);
    await this.refresh();
    if (asset.type === "image") {
      this.image.value = asset.path;
      this.showThumb();
    } else {
      this.control.value = asset.path;
      this.note.textContent = "Uploaded: choose it as the control video to use it.";
    }
  }

  /** Send the picked image once, as `name` (`vace_ref_images`, `first_frame_image`, `last_frame_image`). */
  sendImage(name) {
    const asset = this.picked();
    if (!asset) return this.view.log("No image picked: choose one (or upload it) first.", "warning");
    const value = name === "vace_ref_images" ? [asset.path] : asset.path;
    this.view.sendOnce({ [name]: value }, `${name}: ${assetLabel(asset)}`);
  }

  /**
   * The control video: none, the stream's input track (`vace_use_input_video`), or an asset
   * played on the server (`vace_input_frames`). Leaving one stops it (false, or null).
   */
  chooseControl(choice) {
    const fromInput = choice === CONTROL_FROM_INPUT;
    if (fromInput) this.view.useInput();
    if (fromInput || this.view.get("vace_use_input_video")) this.view.set("vace_use_input_video", fromInput);
    this.choosePath("vace_input_frames", fromInput ? "" : choice);
  }

  /** Set a path parameter; "" clears it (null: a live stream stops that input). */
  choosePath(name, path) {
    this.view.set(name, path || null);
  }
}
