// The classroom's plain pages (create, join, dashboard): their texts in the
// visitor's language, and the language switch.
import { applyStatic, initialLang, loadDictionaries, setLang } from "./i18n.js";

export async function startPage() {
  await loadDictionaries();
  const lang = initialLang();
  const langSwitch = document.getElementById("lang-switch");
  langSwitch.value = lang;
  setLang(lang, {persist: false});
  document.documentElement.classList.remove("i18n-pending");
  langSwitch.addEventListener("change", () => setLang(langSwitch.value));
}

if (!document.getElementById("dashboard")) {
  startPage().catch((error) => {
    console.error(error);
    document.documentElement.classList.remove("i18n-pending");
    applyStatic(document);
  });
}
