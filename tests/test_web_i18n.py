"""The studio page's two dictionaries: same keys, same placeholders, and every key the page uses exists."""

from __future__ import annotations

import re

from browser_support import WEB, i18n_keys, placeholders


def test_both_languages_have_the_same_keys_and_no_empty_text():
    en, zh = i18n_keys("en"), i18n_keys("zh")
    assert sorted(set(en) ^ set(zh)) == []
    assert [k for k, v in {**en, **zh}.items() if not str(v).strip()] == []


def test_placeholders_match_between_languages():
    en, zh = i18n_keys("en"), i18n_keys("zh")
    assert {k: (placeholders(en[k]), placeholders(zh[k])) for k in en
            if placeholders(en[k]) != placeholders(zh[k])} == {}


def test_chinese_dictionary_is_chinese():
    zh = i18n_keys("zh")
    # Keys whose text is the same in both languages by nature (names, units, formats).
    same = {"data.formats", "choice.cpu", "choice.cuda", "setting.lora_alpha", "setting.lora_dropout",
            "error.server", "lang.switch"}
    english_only = [k for k, v in zh.items() if k not in same and not re.search(r"[\u3400-\u9fff]", v)]
    assert english_only == []


def test_every_key_the_page_uses_exists():
    en = i18n_keys("en")
    pages = [WEB / "index.html", *sorted(WEB.rglob("*.js"))]  # app.js, its modules and the steps
    source = "".join(path.read_text(encoding="utf-8") for path in pages)
    used = set(re.findall(r"""\bt\("([\w.-]+)\"""", source)) | set(re.findall(r'data-i18n="([^"]+)"', source))
    for attrs in re.findall(r'data-i18n-attr="([^"]+)"', source):
        used |= {pair.split(":", 1)[1].strip() for pair in attrs.split(";")}
    assert sorted(used - set(en)) == []
    assert len(used) > 100  # the scan itself works


def test_every_main_setting_has_a_label_and_the_recommenders_levers_are_shown():
    """The settings card lists MAIN_SETTINGS with `setting.<key>` labels; a lever the recommender turns on by
    default (contrastive pairs, issue 13) must be among them, or its reason never reaches the page."""
    source = (WEB / "steps" / "settings.js").read_text(encoding="utf-8")
    block = re.search(r"const MAIN_SETTINGS = \[(.*?)\];", source, re.S).group(1)
    shown = re.findall(r'"(\w+)"', block)
    assert {"num_epochs", "learning_rate", "augment_same_fact", "augment_contrast", "replay_rows"} <= set(shown)
    for lang in ("en", "zh"):
        labels = i18n_keys(lang)
        assert [k for k in shown if f"setting.{k}" not in labels] == [], lang


def test_page_loads_nothing_from_the_network():
    for path in WEB.rglob("*"):
        if path.suffix in {".html", ".js", ".css"}:
            text = path.read_text(encoding="utf-8")
            assert not re.search(r"""(src|href)=["']https?://|@import\s+url\(\s*["']?https?://|from\s+["']https?://""",
                                 text), path
