"""The page's texts in Korean and English: the same keys in both dictionaries, the same
placeholders in both sentences, and every key the templates and scripts use is there."""
from __future__ import annotations

import json
import re
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
DICTIONARIES = {code: json.loads((CHECKOUT / "static" / "i18n" / f"{code}.json").read_text())
                for code in ("en", "ko")}


def placeholders(text: str) -> set[str]:
    return set(re.findall(r"\{(\w+)\}", text))


def test_both_languages_have_the_same_texts_with_the_same_placeholders():
    for section in ("ui", "events"):
        en, ko = DICTIONARIES["en"][section], DICTIONARIES["ko"][section]
        assert set(en) == set(ko), (section, set(en) ^ set(ko))
        for key in en:
            assert placeholders(en[key]) == placeholders(ko[key]), (section, key)
            assert ko[key].strip(), (section, key)


def test_every_key_the_pages_use_has_a_text():
    used = set()
    for template in (CHECKOUT / "templates").glob("*.html"):
        used |= set(re.findall(r'data-i18n(?:-[a-z-]+)?="([\w.]+)"', template.read_text()))
        used |= {key for key in re.findall(r'\{%\s*block heading_key\s*%\}([\w.]+)\{%', template.read_text())}
    for script in (CHECKOUT / "static" / "js").glob("*.js"):
        used |= set(re.findall(r'\bt\("([\w.]+)"', script.read_text()))
    assert used, "no keys found: the patterns above no longer match the code"
    missing = sorted(key for key in used if key not in DICTIONARIES["en"]["ui"])
    assert missing == []
