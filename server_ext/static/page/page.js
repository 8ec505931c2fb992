// The server's own page: the notebook widget's view, mounted in a page-sized layout over a model
// that starts as a new ScopeWidget does (read from the server, so there is one definition of it).

import { api, apiBase, pageToken } from "./api.js";
import { PageModel } from "./page-model.js";
import { render } from "./widget.js";

const TRANSPORTS = ["auto", "webrtc", "websocket"];

async function main() {
  const el = document.getElementById("scope");
  let state;
  try {
    state = await api("GET", "scope/widget-state.json");
  } catch (error) {
    el.textContent = `The Scope server did not answer at ${location.origin}${apiBase}: ${error.message}`;
    return;
  }
  // Open on what the server has loaded (the view then offers Start at once); auth problems
  // are the view's to report.
  const status = await api("GET", "api/v1/pipeline/status").catch(() => null);
  if (status?.pipeline_id && ["loaded", "loading"].includes(status.status)) {
    state.pipeline_id = status.pipeline_id;
    state.load_params = status.load_params ?? {};
  }
  // `?transport=webrtc|websocket|auto` chooses how the page streams, as the widget's traitlet does.
  const transport = new URLSearchParams(location.search).get("transport");
  if (TRANSPORTS.includes(transport)) state.transport = transport;
  const dispose = render({
    model: new PageModel(state),
    el,
    base: new URL(apiBase, location.origin).href,
    sameOrigin: true,
    token: pageToken,
  });
  addEventListener("pagehide", dispose);
}

main();
