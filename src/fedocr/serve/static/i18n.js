// Shared by the OCR page and the dashboard: English or Chinese (the browser's language, or the
// reader's last choice, kept in localStorage), t(key, ...args), and the [data-i18n] texts.
"use strict";

function makeI18n(TEXT, onChange) {
  let lang = (localStorage.getItem("fedocr-lang") || navigator.language || "en").toLowerCase().startsWith("zh") ? "zh" : "en";

  function t(key, ...args) {
    const v = key in TEXT[lang] ? TEXT[lang][key] : TEXT.en[key];
    return typeof v === "function" ? v(...args) : v;
  }

  function apply() {
    document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
    document.querySelectorAll("[data-i18n]").forEach((el) => { el.textContent = t(el.dataset.i18n); });
    const button = document.getElementById("lang");
    if (button) button.textContent = t("lang");
    onChange();
  }

  function toggle() {
    lang = lang === "zh" ? "en" : "zh";
    localStorage.setItem("fedocr-lang", lang);
    apply();
  }

  return { t, apply, toggle, get lang() { return lang; } };
}
