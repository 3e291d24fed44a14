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

/** Fill every [data-i18n], [data-i18n-aria-label], [data-i18n-placeholder], [data-i18n-title] under ``root``. */
export function translate(root = document) {
  document.documentElement.lang = current;
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
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

/** Call ``listener(lang)`` after each language change (to re-render dynamic text). */
export function onLanguageChange(listener) {
  listeners.add(listener);
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
