// anywidget module of ScopeWidget: finds the Scope server and imports the widget's view from it.
//
// The view lives with the server (`<server>/scope/widget.js`, beside the server's own page), so
// the code that calls the API always matches the server that answers. This module only decides
// where that server is and says so plainly when it cannot be reached.

/** The base URL of the Jupyter server hosting this page, or null outside Jupyter. */
function pageServerBase() {
  const config = document.getElementById("jupyter-config-data");
  if (!config) return null;
  try {
    const baseUrl = JSON.parse(config.textContent).baseUrl ?? "/";
    return new URL(baseUrl, location.origin).href;
  } catch {
    return null;
  }
}

function serverOf(model) {
  if (!model.get("_page_server")) {
    const server = model.get("server");
    return { base: server, sameOrigin: new URL(server).origin === location.origin };
  }
  const base = pageServerBase();
  return base ? { base, sameOrigin: true } : null;
}

function showProblem(model, el, text) {
  const box = document.createElement("div");
  box.className = "scope-problem";
  box.textContent = text;
  el.replaceChildren(box);
  el.classList.add("scope-widget");
  el.dataset.status = "unavailable";
  model.set("status", "unavailable");
  model.set("error", text);
  model.save_changes();
}

async function render({ model, el }) {
  const where = serverOf(model);
  if (!where) {
    return showProblem(model, el, "No Jupyter server hosts this page: create the widget with ScopeWidget(server=\"http://host:8000\").");
  }
  if (model.get("server") !== where.base) {
    // Python reads the server in use: the page's own, as this browser reaches it.
    model.set("server", where.base);
    model.save_changes();
  }
  el.textContent = `Connecting to Scope at ${where.base} ...`;
  let view;
  try {
    view = await import(`${where.base}scope/widget.js`);
  } catch (error) {
    return showProblem(
      model,
      el,
      `Scope is not reachable at ${where.base} (${error.message}). Start it with \`daydream-scope\`, ` +
        "or enable the Jupyter extension with `daydream-scope enable-jupyter` and restart Jupyter.",
    );
  }
  return view.render({ model, el, ...where });
}

export default { render };
