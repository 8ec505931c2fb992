// The model the `/scope/` page mounts the widget's view over.
//
// In a notebook the view's model is anywidget's, synced with the kernel's traitlets. The page has
// no kernel, so this holds the same values in the browser and offers the part of anywidget's
// model interface the view uses: get, set (firing `change:<name>` at once, as anywidget does),
// on/off, and save_changes (nothing to sync to).

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

export class PageModel {
  /** `state`: a new ScopeWidget's synced state (`widget-state.json`). */
  constructor(state) {
    this.state = structuredClone(state);
    this.listeners = new Map();
  }

  get(name) {
    return this.state[name];
  }

  set(name, value) {
    if (same(this.state[name], value)) return;
    this.state[name] = value;
    for (const callback of [...(this.listeners.get(`change:${name}`) ?? [])]) callback(this, value);
  }

  on(event, callback) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(callback);
  }

  off(event, callback) {
    this.listeners.get(event)?.delete(callback);
  }

  save_changes() {}
}
