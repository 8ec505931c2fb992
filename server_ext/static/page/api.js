// Calls to the Scope API from the server's own page.
//
// The page is served at `<base_url>scope/`, both by `daydream-scope` (base "/") and inside
// `jupyter lab` (any base URL), so every API URL is built from the page's own location.
// Under Lab the API follows Jupyter's auth: the login cookie covers GETs, and writes must echo
// the `_xsrf` cookie in an `X-XSRFToken` header. A `?token=` in the page URL is sent as an
// `Authorization` header instead, which Jupyter accepts without the XSRF check.

/** The server's base URL ("/" or e.g. "/user/lab/"), taken from the page's path. */
export function serverBase(pathname = location.pathname) {
  const at = pathname.lastIndexOf("/scope/");
  return at >= 0 ? pathname.slice(0, at + 1) : "/";
}

function cookie(name) {
  // Jupyter can leave more than one `_xsrf` cookie (different paths); the last one is current.
  const values = document.cookie
    .split(";")
    .map((part) => part.trim())
    .filter((part) => part.startsWith(name + "="))
    .map((part) => decodeURIComponent(part.slice(name.length + 1)));
  return values.length ? values[values.length - 1] : null;
}

/** An error answered by the API, with its `detail` rendered as one readable line. */
export class ApiError extends Error {
  constructor(status, detail) {
    super(describeDetail(status, detail));
    this.status = status;
    this.detail = detail;
  }
}

/** Validation errors (`[{loc, msg}]`, as the API and the data channel send them) as one line. */
export function describeErrors(errors) {
  return errors.map((e) => (e.type === "memory_budget" ? describeOverBudget(e) : describeError(e))).join("; ");
}

function describeError(e) {
  return `${(e.loc ?? []).join(".") || "message"}: ${e.msg ?? JSON.stringify(e)}`;
}

/** Bytes in a unit a person reads at a glance. */
export function formatBytes(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit ? value.toFixed(1) : value} ${units[unit]}`;
}

/** A pool refusal (409, `type: "memory_budget"`): why, then who holds the memory and how much. */
function describeOverBudget(e) {
  const holders = (e.holders ?? []).map((h) => {
    const count = h.sessions?.length ?? 0;
    const size = h.load_params?.height && h.load_params?.width ? ` ${h.load_params.width}x${h.load_params.height}` : "";
    return `${h.pipeline_id}${size} (${count} session${count === 1 ? "" : "s"}, ${formatBytes(h.held_bytes ?? 0)})`;
  });
  const held = holders.length ? ` Held by: ${holders.join(", ")}. Stop one of their streams or unload a pipeline to make room.` : "";
  return `${e.msg}${held}`;
}

/** Equal as JSON values, whatever the order of object keys. */
export function sameValue(a, b) {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const keys = Object.keys(a);
  return keys.length === Object.keys(b).length && keys.every((k) => k in b && sameValue(a[k], b[k]));
}

/**
 * Whether `have` holds every value `wanted` sets, objects inside included: normalised load
 * parameters (defaults filled in) hold what a load asked for.
 */
export function holds(have, wanted) {
  if (wanted === null || typeof wanted !== "object" || have === null || typeof have !== "object") return sameValue(have, wanted);
  if (Array.isArray(wanted)) {
    return Array.isArray(have) && have.length === wanted.length && wanted.every((value, i) => holds(have[i], value));
  }
  return Object.entries(wanted).every(([key, value]) => holds(have[key], value));
}

/** The entry of `pipeline/status`'s `pipelines` that is `target` ({pipeline_id, load_params}), or null. */
export function poolEntry(status, target) {
  if (!target) return null;
  return (status.pipelines ?? []).find(
    (p) => p.pipeline_id === target.pipeline_id && sameValue(p.load_params, target.load_params),
  ) ?? null;
}

/** A load refused because the current pipeline is loading another target: worth asking again once it is done. */
export function isLoadConflict(error) {
  return error?.status === 409 && typeof error.detail === "string";
}

/** The server's refusal of this page's origin (open API): its words name the flag to admit it. */
const ORIGIN_REFUSAL = "is not allowed to use this Scope API";

/** The origin to pass to `daydream-scope --allow-origin`, when `error` is that refusal; else null. */
export function refusedOrigin(error) {
  if (error?.status !== 403 || typeof error.detail !== "string" || !error.detail.includes(ORIGIN_REFUSAL)) return null;
  return error.detail.match(/--allow-origin (\S+)/)?.[1] ?? null;
}

function describeDetail(status, detail) {
  if (status === 403 && typeof detail === "string" && detail.includes(ORIGIN_REFUSAL)) return detail;
  if (status === 403) {
    return "Not authorised (403): log in to Jupyter, or open this page with ?token=<your token>.";
  }
  if (Array.isArray(detail)) {
    return describeErrors(detail);
  }
  return typeof detail === "string" ? detail : `HTTP ${status}`;
}

/**
 * A function `api(method, path, body)` calling the Scope API below `base` (a URL ending in "/").
 * `body` is sent as JSON, or as raw bytes when it is a Blob (a File: an upload). Answers parsed
 * JSON (or null) and throws ApiError. `sameOrigin` pages send Jupyter's cookie and XSRF header; a
 * page calling another origin sends neither (that API is open, with CORS). The function carries
 * its `base` and `token`, for the WebSocket transport's socket.
 */
export function createApi({ base, token = null, sameOrigin = true }) {
  async function api(method, path, body) {
    const raw = body instanceof Blob;
    const headers = {};
    if (body !== undefined) headers["Content-Type"] = raw ? "application/octet-stream" : "application/json";
    if (token) headers["Authorization"] = `token ${token}`;
    if (sameOrigin && method !== "GET") {
      const xsrf = cookie("_xsrf");
      if (xsrf) headers["X-XSRFToken"] = xsrf;
    }
    const response = await fetch(base + path, {
      method,
      headers,
      credentials: sameOrigin ? "same-origin" : "omit",
      body: body === undefined || raw ? body : JSON.stringify(body),
    });
    const text = await response.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch {
      data = text;
    }
    if (!response.ok) throw new ApiError(response.status, data && data.detail !== undefined ? data.detail : data);
    return data;
  }
  // What a WebSocket to the same server needs: where it is, and the token to carry.
  return Object.assign(api, { base, token });
}

/** One line saying what `GET api/v1/pipeline/status` answered. */
export function pipelineStatusText(status) {
  const name = status.pipeline_id ?? "";
  const text = {
    not_loaded: "No pipeline loaded.",
    loading: `Loading ${name}...`,
    loaded: `Loaded ${name}.`,
    error: `Loading ${name} failed: ${status.error || "unknown error"}`,
  }[status.status];
  return text ?? status.status;
}

/** The page's own server: the base URL it was served below, and a `?token=` in its URL. */
export const apiBase = serverBase();
export const pageToken = new URLSearchParams(location.search).get("token");
export const api = createApi({ base: apiBase, token: pageToken });

/** End a session on the server (any transport); one already gone there is nothing to free. */
export async function endSession(api, sessionId) {
  try {
    await api("DELETE", `api/v1/webrtc/sessions/${sessionId}`);
  } catch {
    // already gone on the server
  }
}
