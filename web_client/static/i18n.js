// Strings in French and English: one dictionary module per language.
// The language comes from a saved choice, else navigator.language; the
// switch in each page header changes it without reloading.
import en from "./i18n/en.js";
import fr from "./i18n/fr.js";

const DICTIONARIES = { en, fr };
const STORAGE_KEY = "tc.lang";
const listeners = new Set();

function initialLanguage() {
  const saved = localStorage.getItem(STORAGE_KEY);
  if (saved && DICTIONARIES[saved]) return saved;
  const preferred = [navigator.language, ...(navigator.languages || [])];
  for (const tag of preferred) {
    const base = String(tag || "").toLowerCase().split("-")[0];
    if (DICTIONARIES[base]) return base;
  }
  return "en";
}

let current = initialLanguage();

export function language() {
  return current;
}

/** The string for ``key`` in the current language, with {name} placeholders filled. */
export function t(key, params = {}) {
  const text = DICTIONARIES[current][key] ?? DICTIONARIES.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in params ? String(params[name]) : `{${name}}`));
}

/** Parameters as stored by setText: {time: s} and {duration: s} are formatted in the language now. */
export function resolveParams(params) {
  const out = {};
  for (const [name, value] of Object.entries(params || {})) {
    if (value && typeof value === "object" && "time" in value) out[name] = formatTime(value.time);
    else if (value && typeof value === "object" && "duration" in value) out[name] = formatDuration(value.duration);
    else if (value && typeof value === "object" && "key" in value) out[name] = t(value.key, resolveParams(value.params));
    else out[name] = value;
  }
  return out;
}

/** ``el``'s text from ``key`` and ``params``, kept on the element so that a language switch
 * writes it again (``{time: unix}``, ``{duration: s}``, ``{key}`` params are formatted then). */
export function setText(el, key, params = {}) {
  if (!key) {
    delete el.dataset.i18n;
    delete el.dataset.i18nParams;
    el.textContent = "";
    return;
  }
  el.dataset.i18n = key;
  if (params && Object.keys(params).length) el.dataset.i18nParams = JSON.stringify(params);
  else delete el.dataset.i18nParams;
  el.textContent = t(key, resolveParams(params));
}

function storedParams(el) {
  try {
    return el.dataset.i18nParams ? JSON.parse(el.dataset.i18nParams) : {};
  } catch (_) {
    return {};
  }
}

/** Fill every [data-i18n], [data-i18n-aria-label], [data-i18n-placeholder], [data-i18n-title] under ``root``. */
export function translate(root = document) {
  document.documentElement.lang = current;
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n, resolveParams(storedParams(el)));
  for (const el of root.querySelectorAll("[data-i18n-aria-label]")) el.setAttribute("aria-label", t(el.dataset.i18nAriaLabel));
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.setAttribute("placeholder", t(el.dataset.i18nPlaceholder));
  for (const el of root.querySelectorAll("[data-i18n-title]")) el.setAttribute("title", t(el.dataset.i18nTitle));
  if (document.body?.dataset.titleKey) document.title = `${t(document.body.dataset.titleKey)} · teleconsult`;
}

export function setLanguage(lang) {
  if (!DICTIONARIES[lang] || lang === current) return;
  current = lang;
  localStorage.setItem(STORAGE_KEY, lang);
  translate();
  for (const listener of listeners) listener(lang);
}

/** Call ``listener(lang)`` after each language change (to re-render dynamic text); returns
 * the function that stops it (what lives for one consultation stops at its end). */
export function onLanguageChange(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

/** The BCP 47 tag of the current language, for Intl (dates, numbers). */
export function locale() {
  return current === "fr" ? "fr-FR" : "en-GB";
}

/** ``value`` with ``digits`` decimals, the locale's way ("0,0" in French). */
export function formatNumber(value, digits = 0) {
  return new Intl.NumberFormat(locale(), { minimumFractionDigits: digits, maximumFractionDigits: digits })
    .format(value);
}

/** A percentage (the value is in percent) as the locale writes it: "0.0%", "0,0 %". */
export function formatPercent(value, digits = 1) {
  return new Intl.NumberFormat(locale(), { style: "percent", minimumFractionDigits: digits,
    maximumFractionDigits: digits }).format(value / 100);
}

/** A time of day (Unix seconds or a Date) as the locale writes it: "14:05:09". */
export function formatTime(when, { seconds = true } = {}) {
  const date = when instanceof Date ? when : new Date(when * 1000);
  return new Intl.DateTimeFormat(locale(), { hour: "2-digit", minute: "2-digit",
    second: seconds ? "2-digit" : undefined }).format(date);
}

/** A date and time as the locale writes it: "12/03/2025 14:05" / "12 Mar 2025, 14:05". */
export function formatDateTime(when) {
  const date = when instanceof Date ? when : new Date(when * 1000);
  return new Intl.DateTimeFormat(locale(), { dateStyle: "medium", timeStyle: "short" }).format(date);
}

/** The header switch: a button naming the other language. */
export function mountLanguageSwitch(button) {
  const render = () => {
    const other = current === "fr" ? "en" : "fr";
    button.textContent = DICTIONARIES[other]["lang.name"];
    button.lang = other;
    button.setAttribute("aria-label", t("lang.switch", { name: DICTIONARIES[other]["lang.name"] }));
  };
  button.addEventListener("click", () => setLanguage(current === "fr" ? "en" : "fr"));
  onLanguageChange(render);
  render();
}

/** A duration in seconds as "3 min 05 s" / "42 s". */
export function formatDuration(seconds) {
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return t("time.seconds", { s });
  const m = Math.floor(s / 60);
  if (m < 60) return t("time.minutes", { m, s: String(s % 60).padStart(2, "0") });
  return t("time.hours", { h: Math.floor(m / 60), m: String(m % 60).padStart(2, "0") });
}
