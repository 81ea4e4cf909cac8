// The page's two languages. Texts are data (static/i18n/<lang>.json): "ui" for
// the page's own words, "events" for one sentence per event kind.
import { eventParams, variantOf } from "./events.js";

export const LANGUAGES = ["ko", "en"];
const STORAGE_KEY = "glassbox.lang";

const dictionaries = {};
let current = "en";
const listeners = [];

// Fills {name} placeholders; a value the event didn't carry shows as "?"
// rather than a raw "{name}", which would read like a bug to a learner.
export function format(template, params = {}) {
  return template.replace(/\{(\w+)\}/g, (_, key) => {
    const value = params[key];
    return value == null || value === "" ? "?" : String(value);
  });
}

function lookup(section, key) {
  const own = dictionaries[current] && dictionaries[current][section];
  if (own && own[key] != null) return own[key];
  const english = dictionaries.en && dictionaries.en[section];
  return english ? english[key] : undefined;
}

export function t(key, params) {
  const text = lookup("ui", key);
  return text == null ? key : format(text, params);
}

export function describeEvent(event) {
  const variant = variantOf(event);
  const template = (variant && lookup("events", `${event.kind}#${variant}`))
    || lookup("events", event.kind)
    || lookup("events", "_unknown")
    || "{kind}";
  return format(template, eventParams(event, t("unlimited")));
}

export function lang() {
  return current;
}

// A visitor's explicit choice wins, then the server's guess from
// Accept-Language (the <html lang> it rendered), then the browser's.
export function initialLang() {
  let stored = null;
  try {
    stored = localStorage.getItem(STORAGE_KEY);
  } catch (_) { /* storage may be disabled: fall through */ }
  if (LANGUAGES.includes(stored)) return stored;
  const served = document.documentElement.lang;
  if (LANGUAGES.includes(served)) return served;
  return (navigator.language || "").toLowerCase().startsWith("ko") ? "ko" : "en";
}

async function fetchDictionary(code) {
  const url = new URL(`../i18n/${code}.json`, import.meta.url);
  const response = await fetch(url, {credentials: "same-origin"});
  if (!response.ok) throw new Error(`${url.pathname}: HTTP ${response.status}`);
  return response.json();
}

// Loads both languages at once (they are small) so a switch is instant.
// English is the fallback for any missing key; without it the page still
// works, showing keys and kinds.
export async function loadDictionaries() {
  const failures = [];
  await Promise.all(LANGUAGES.map(async (code) => {
    try {
      dictionaries[code] = await fetchDictionary(code);
    } catch (error) {
      console.error("could not load texts", code, error);
      failures.push(code);
    }
  }));
  return failures;
}

export function setLang(code, {persist = true} = {}) {
  if (!LANGUAGES.includes(code)) code = "en";
  current = code;
  document.documentElement.lang = code;
  if (persist) {
    try {
      localStorage.setItem(STORAGE_KEY, code);
    } catch (_) { /* not persisted: the choice still holds for this page */ }
  }
  applyStatic(document);
  for (const listener of listeners) listener(code);
}

export function onLangChange(listener) {
  listeners.push(listener);
}

// Static markup names its text by key: data-i18n (text), and
// data-i18n-<attribute> for attributes such as title or aria-label.
const ATTRIBUTES = ["title", "aria-label", "placeholder"];

export function applyStatic(root) {
  for (const el of root.querySelectorAll("[data-i18n]")) {
    el.textContent = t(el.dataset.i18n);
  }
  for (const attr of ATTRIBUTES) {
    for (const el of root.querySelectorAll(`[data-i18n-${attr}]`)) {
      el.setAttribute(attr, t(el.getAttribute(`data-i18n-${attr}`)));
    }
  }
}
