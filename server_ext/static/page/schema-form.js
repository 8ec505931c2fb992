// Form controls generated from a pipeline's JSON Schema (the pydantic models that also validate
// requests), so no pipeline needs hand-written controls.
//
// `schemaControl(name, schema, defs, onChange)` answers {element, set(value)} or null for a
// property no simple control can edit (objects, lists of objects): those are set from Python.
// `onChange(value)` receives `undefined` when the user clears a field back to its default.

function resolve(schema, defs) {
  if (schema && schema.$ref) return defs[schema.$ref.split("/").pop()] ?? {};
  return schema ?? {};
}

/** The schema a value must follow, and whether null (the default) is allowed. */
function unwrap(schema, defs) {
  schema = resolve(schema, defs);
  if (Array.isArray(schema.anyOf)) {
    const choices = schema.anyOf.map((s) => resolve(s, defs));
    const concrete = choices.filter((s) => s.type !== "null");
    const nullable = concrete.length < choices.length;
    if (concrete.length === 1) return { ...concrete[0], nullable, outer: schema };
    if (concrete.every((s) => s.const !== undefined || s.enum)) {
      return { enum: concrete.flatMap((s) => s.enum ?? [s.const]), nullable, outer: schema };
    }
    return { unsupported: true, outer: schema };
  }
  return { ...schema, nullable: false, outer: schema };
}

function labelled(name, outer, input) {
  const label = document.createElement("label");
  label.className = "scope-field";
  label.title = outer.description ?? "";
  const caption = document.createElement("span");
  caption.textContent = outer.title ?? name;
  label.append(caption, input);
  return label;
}

function selectControl(options, value) {
  const select = document.createElement("select");
  for (const [text, optionValue] of options) select.append(new Option(text, JSON.stringify(optionValue)));
  select.value = JSON.stringify(value);
  return select;
}

function parseNumberList(text, integer) {
  const items = text.split(/[\s,]+/).filter(Boolean).map(Number);
  if (items.some((n) => !Number.isFinite(n) || (integer && !Number.isInteger(n)))) return null;
  return items;
}

export function schemaControl(name, property, defs, onChange) {
  const schema = unwrap(property, defs);
  const outer = schema.outer;
  const fallback = outer.default ?? null;

  if (schema.unsupported || schema.type === "object" || (schema.type === "array" && !["integer", "number"].includes(resolve(schema.items, defs).type))) {
    return null;
  }

  if (schema.enum || schema.const !== undefined || (schema.type === "boolean" && schema.nullable)) {
    const values = schema.enum ?? (schema.const !== undefined ? [schema.const] : [true, false]);
    const options = values.map((v) => [String(v), v]);
    if (schema.nullable) options.unshift([`(default${fallback === null ? "" : `: ${fallback}`})`, null]);
    const select = selectControl(options, fallback);
    select.addEventListener("change", () => onChange(JSON.parse(select.value) ?? undefined));
    return {
      element: labelled(name, outer, select),
      set(value) {
        select.value = JSON.stringify(value ?? fallback);
      },
    };
  }

  if (schema.type === "boolean") {
    const box = document.createElement("input");
    box.type = "checkbox";
    box.checked = Boolean(fallback);
    box.addEventListener("change", () => onChange(box.checked));
    return {
      element: labelled(name, outer, box),
      set(value) {
        box.checked = Boolean(value ?? fallback);
      },
    };
  }

  const input = document.createElement("input");
  const integer = schema.type === "integer" || resolve(schema.items, defs).type === "integer";
  if (schema.type === "integer" || schema.type === "number") {
    input.type = "number";
    input.step = schema.multipleOf ?? (integer ? "1" : "any"); // sizes: the browser steps 16, 32, ...
    if (schema.minimum !== undefined) input.min = schema.minimum;
    if (schema.maximum !== undefined) input.max = schema.maximum;
  } else {
    input.type = "text";
  }
  input.placeholder = fallback === null ? "default" : String(fallback);
  const read = () => {
    const text = input.value.trim();
    if (!text) return undefined;
    if (schema.type === "array") return parseNumberList(text, integer);
    if (input.type === "number") return Number(text);
    return text;
  };
  input.addEventListener("change", () => {
    const value = read();
    input.classList.toggle("scope-invalid", value === null || (input.type === "number" && !input.checkValidity()));
    if (value !== null) onChange(value);
  });
  return {
    element: labelled(name, outer, input),
    set(value) {
      input.value = value === undefined || value === null ? "" : Array.isArray(value) ? value.join(", ") : String(value);
      input.classList.remove("scope-invalid");
    },
  };
}
