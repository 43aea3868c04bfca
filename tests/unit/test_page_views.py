"""The job and audit views (worker/render/page) on real result documents (tests/fixtures/page, made by
scripts/page_fixtures.py): every number shown equals the document's, colours follow the palette, user strings
never become markup, and the self-contained page's CSP hashes match its inline code."""
from __future__ import annotations

import base64
import copy
import hashlib
import html
import json
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from scipy.stats import spearmanr

from worker.render.page import ASSET_DIR, audit_view, job_view, result_html, script_json
from worker.render.page.audit import attribution_line
from worker.render.page.palette import DIVERGING, SEQUENTIAL, Scale, css, fmt
from worker.report import aggregate

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "page"
PAYLOADS = ["<script>window.__xss=1</script>", '"><img src=x onerror="window.__xss=1">', "javascript:window.__xss=1",
            "\u202eevil\u200b", "</script><script>window.__xss=1</script>"]


def load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


class Page(HTMLParser):
    """Every element with its attributes, the text of elements, and the JSON data blocks."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.data: list[str] = []
        self._in: str | None = None
        self.source = text
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._in = tag if tag in ("script", "style") else None

    def handle_data(self, data):
        if self._in == "script" and self.elements[-1][1].get("type") == "application/json":
            self.data.append(data)
        self.text.append(data)

    def runs(self) -> list[tuple[str, str, list[tuple[str, str]]]]:
        """(method, unit, [(text, class)]) of each shaded text whose values live in the JSON."""
        out, current = [], None
        parser = self

        class Runs(HTMLParser):
            def handle_starttag(self, tag, attrs):
                nonlocal current
                a = dict(attrs)
                if tag == "p" and "data-m" in a:
                    current = (a["data-m"], a["data-u"], [])
                    out.append(current)
                elif tag == "span" and current is not None:
                    current[2].append(["", a.get("class") or ""])

            def handle_endtag(self, tag):
                nonlocal current
                if tag == "p":
                    current = None

            def handle_data(self, data):
                if current is not None and current[2] and data != " ":  # the words' texts, not the gaps
                    current[2][-1][0] += data

        Runs(convert_charrefs=True).feed(parser.source)
        return [(m, u, [(t, c) for t, c in spans]) for m, u, spans in out]


def test_palette_classes_are_those_in_viewer_css():
    sheet = (ASSET_DIR / "viewer.css").read_text()
    for rule in css().splitlines():
        assert rule in sheet
    assert len(DIVERGING) == 11 and len(SEQUENTIAL) == 9
    signed, magnitude = Scale([-2.0, 1.0]), Scale([0.0, 4.0])
    assert signed.signed and signed.level(2.0) == "d5" and signed.level(-2.0) == "d-5" and signed.level(0) == "d0"
    assert signed.level(1.0) in ("d2", "d3") and not magnitude.signed and magnitude.level(4.0) == "q8"
    assert magnitude.level(0.0) == "q0" and magnitude.level(float("nan")) == "q0"


def expected_class(value: float, values: list[float]) -> str:
    """The palette rule, recomputed: 11 diverging steps over ±max|v| when any value is negative, else 9 steps."""
    top = max(abs(v) for v in values)
    if any(v < 0 for v in values):
        return f"d{round(5 * value / top)}"
    return f"q{round(8 * value / top)}"


@pytest.mark.parametrize("name", ["minilm-rt", "cnn-rt"])
def test_every_word_and_token_is_shaded_and_carries_its_score(name):
    result = load(name)
    page = Page(job_view({"result": result}))
    methods = [m for m, p in result["methods"].items() if "word_scores" in p and len(p["scores"]) ==
               len(result["tokens"])]
    assert len(methods) >= 2
    special_words = [all(result["special"][t] for t in g) for g in result["words"]]
    runs = page.runs()
    assert [(m, u) for m, u, _ in runs] == [(m, u) for m in methods for u in ("word_scores", "scores")]
    for method, unit, spans in runs:
        values = result["methods"][method][unit]
        special = special_words if unit == "word_scores" else result["special"]
        texts = result["word_strings"] if unit == "word_scores" else result["tokens"]
        assert [t for t, _ in spans] == texts
        real = [v for v, s in zip(values, special, strict=True) if not s]
        assert [c.split()[0] for _, c in spans] == [expected_class(v, real) for v in values]
        assert [("sp" in c.split()) for _, c in spans] == special  # special tokens visible but marked
    data = json.loads(page.data[0])["results"][0]["methods"]
    for m in methods:
        for unit in ("word_scores", "scores"):
            assert data[m][unit] == pytest.approx(result["methods"][m][unit], rel=1e-3, abs=1e-12)
    table = [t for t, a in page.elements if t == "td"]
    assert len(table) >= len(result["word_strings"]) * (len(methods) + 1)


def test_rank_agreement_is_spearman_over_the_real_words():
    result = load("minilm-rt")
    page = Page(job_view({"result": result}))
    rhos = [a["data-rho"] for t, a in page.elements if t == "td" and "data-rho" in a]
    methods = [m for m, p in result["methods"].items() if "word_scores" in p and len(p["scores"]) ==
               len(result["tokens"])]
    real = [i for i, g in enumerate(result["words"]) if not all(result["special"][t] for t in g)]
    expected = []
    for n, a in enumerate(methods):
        for b in methods[n + 1:]:
            rho = spearmanr([result["methods"][a]["word_scores"][i] for i in real],
                            [result["methods"][b]["word_scores"][i] for i in real]).statistic
            expected.append(fmt(float(rho)))
    assert rhos == expected and len(rhos) == len(methods) * (len(methods) - 1) // 2


def test_faithfulness_chart_bars_carry_the_documents_numbers():
    result = load("minilm-rt")
    page = Page(job_view({"result": result}))
    bars = {(a["data-row"], a["data-series"]): a["data-v"] for t, a in page.elements if t == "rect" and "data-series" in a}
    for m, part in result["methods"].items():
        f = part.get("faithfulness")
        if f:
            assert bars[(m, "comprehensiveness")] == fmt(f["comprehensiveness"])
            assert bars[(m, "sufficiency")] == fmt(f["sufficiency"])
            assert bars[(m, "random")] == fmt(f["random"]["comprehensiveness"])
            assert bars[(m, "lift")] == fmt(f["lift"])


def test_a_result_without_normalised_aopc_says_why_only_when_the_request_did():
    """No normalised columns without bounds; the note names "basic" only when the job's request asked for it (a
    result stored before normalised AOPC existed has none either)."""
    result = copy.deepcopy(load("minilm-rt"))
    for part in result["methods"].values():
        if isinstance(part.get("faithfulness"), dict):
            part["faithfulness"].pop("normalized", None)
    asked = "".join(Page(job_view({"result": result, "request": {"faithfulness": "basic"}})).text)
    old = "".join(Page(job_view({"result": result})).text)
    assert 'the job asked for faithfulness "basic"' in asked and "normalised comp." not in asked
    assert "No normalised AOPC in this result." in old and "asked for" not in old


def test_sigma_attention_and_esim_views_are_drawn():
    minilm = Page(job_view({"result": load("minilm-rt")}))
    sigma = load("minilm-rt")["methods"]["sigma"]
    layer_names = [t for t in minilm.text if t in sigma["layers"]]
    assert set(layer_names) >= set(sigma["layers"])
    dots = [a["data-v"] for t, a in minilm.elements if t == "circle"]
    assert dots == [fmt(p["sentence_entropy"]) for p in sigma["layers"].values()]
    attention = load("minilm-rt")["methods"]["attention"]
    t = len(load("minilm-rt")["tokens"])
    assert sum(1 for tag, _ in minilm.elements if tag == "rect" and "fill" in _) == \
        len(attention["head_average"]) * t * t
    esim = load("esim-50")
    page = Page(job_view({"result": esim}))
    part = esim["methods"]["attention_saliency"]
    n, m = len(part["premise_tokens"]), len(part["hypothesis_tokens"])
    assert sum(1 for tag, a in page.elements if tag == "rect" and "fill" in a) == 2 * n * m
    gates = esim["methods"]["gating"]["gates"]
    assert all(g in page.text for g in gates)


def test_compare_and_batch_results():
    minilm, cnn = load("minilm-rt"), load("cnn-rt")
    compared = Page(job_view({"result": minilm, "compare": {"cnn-rt": cnn},
                              "model_agreement": {"minilm-rt~cnn-rt:gradient": 0.4567, "minilm-rt~cnn-rt:lime": None}}))
    assert "cnn-rt" in compared.text and "minilm-rt" in compared.text
    assert "minilm-rt~cnn-rt:gradient" in compared.text and "minilm-rt~cnn-rt:lime" in compared.text
    assert [a["data-rho"] for t, a in compared.elements if "data-rho" in a][-2:] == ["0.457", "–"]
    batch = Page(job_view({"result": {"kind": "batch", "items": [minilm, cnn]}}))
    assert sum(1 for t, _ in batch.elements if t == "details") == 2


def test_generation_result_is_a_steps_by_tokens_map():
    generation = {"kind": "generation", "tokens": ["The", " cat", " sat", "."], "special": [False] * 4,
                  "prompt_length": 2, "generation": {"tokens": [" sat", "."], "token_ids": [5, 6],
                                                     "probabilities": [0.5, 0.25]},
                  "prediction": None, "methods": {"gradient": {"scores": [[0.1, 0.2, None, None],
                                                                          [0.3, -0.6, 0.5, None]]}}}
    page = Page(job_view({"result": generation}))
    tips = [t for t in page.text if "→" in t]
    assert tips == ["0:  sat → The: 0.1", "0:  sat →  cat: 0.2", "0:  sat →  sat: –", "0:  sat → .: –",
                    "1: . → The: 0.3", "1: . →  cat: -0.6", "1: . →  sat: 0.5", "1: . → .: –"]
    fills = [a["fill"] for t, a in page.elements if t == "rect" and "fill" in a]
    # each row on its own scale: a row's largest |score| is the darkest colour, unread cells blank
    assert fills[1] == DIVERGING[-1] and fills[5] == DIVERGING[0] and fills[2] == fills[7] == "#ffffff"
    assert "0.25" in page.text and "Prediction" not in "".join(page.text)


def test_artifact_links_use_the_given_url_or_a_relative_name():
    doc = {"result": load("cnn-rt"), "artifacts": [{"name": "gradient.png"}, {"name": "javascript:alert(1)"}]}
    hrefs = [a["href"] for t, a in Page(job_view(doc)).elements if t == "a"]
    assert hrefs == ["./gradient.png", "./javascript%3Aalert%281%29"]
    hrefs = [a["href"] for t, a in Page(job_view(doc, lambda n: f"/ui/jobs/1/artifacts/{n}")).elements if t == "a"]
    assert hrefs[0] == "/ui/jobs/1/artifacts/gradient.png"


def poisoned() -> dict:
    """A result document with a payload in every user string: text, words, tokens, labels, model names."""
    result = copy.deepcopy(load("cnn-rt"))
    for i in range(min(len(PAYLOADS), len(result["word_strings"]))):
        result["word_strings"][i] = PAYLOADS[i]
        result["tokens"][i] = PAYLOADS[-1 - i]
    probs = result["prediction"]["probabilities"]
    result["prediction"]["probabilities"] = {PAYLOADS[i]: p for i, p in enumerate(probs.values())}
    result["prediction"]["label"] = result["target"] = PAYLOADS[1]
    result["model"] = {"name": PAYLOADS[0], "revision": "x"}
    return {"id": PAYLOADS[2], "status": "succeeded", "model": {"name": PAYLOADS[3]},
            "request": {"inputs": {"text": " ".join(PAYLOADS)}}, "result": result,
            "compare": {PAYLOADS[4]: result}, "artifacts": [{"name": p} for p in PAYLOADS]}


def test_user_strings_never_become_markup():
    text = result_html(poisoned())
    page = Page(text)
    tags = {t for t, _ in page.elements}
    assert tags <= {"html", "head", "meta", "title", "style", "body", "main", "footer", "script", "div", "header",
                    "h2", "h3", "h4", "dl", "dt", "dd", "section", "p", "span", "b", "table", "tbody", "thead", "tr",
                    "th", "td", "svg", "rect", "text", "line", "figure", "figcaption", "ul", "li", "a", "g",
                    "polyline", "circle", "details", "summary"}
    assert not any(k.startswith("on") for _, a in page.elements for k in a)
    assert not any("style" in a for _, a in page.elements)
    scripts = [a for t, a in page.elements if t == "script"]
    assert len(scripts) == 2 and scripts[0] == {"type": "application/json", "class": "lantern-data"}
    assert "img" not in tags
    assert all(p in "".join(page.text) for p in PAYLOADS)  # shown as text
    data = json.loads(page.data[0])
    assert data["results"][0]["model"] == PAYLOADS[0] and data["results"][0]["prediction"]["label"] == PAYLOADS[1]


def test_script_json_cannot_close_its_element():
    out = str(script_json({"a": "</script><!-- & >"}))
    assert "<" not in out and ">" not in out and "&" not in out
    assert json.loads(out) == {"a": "</script><!-- & >"}


def test_page_csp_hashes_its_inline_code_and_allows_nothing_else():
    text = result_html({"result": load("cnn-rt")})
    csp = html.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text).group(1))
    style = re.search(r"<style>(.*?)</style>", text, re.S).group(1)
    script = re.findall(r"<script>(.*?)</script>", text, re.S)[-1]

    def digest(code: str) -> str:
        return "sha256-" + base64.b64encode(hashlib.sha256(code.encode()).digest()).decode()

    assert f"style-src '{digest(style)}'" in csp and f"script-src '{digest(script)}'" in csp
    assert "default-src 'none'" in csp and "unsafe" not in csp
    assert style == (ASSET_DIR / "viewer.css").read_text() and script == (ASSET_DIR / "viewer.js").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # nothing to fetch


def test_audit_view_and_attributions_lines():
    minilm, cnn = load("minilm-rt"), load("cnn-rt")
    keep = ("tokens", "special", "words", "word_strings", "prediction", "target", "methods")
    rows = [{"model": "minilm-rt", "position": i, "batch": 0, "label": label, "status": "done",
             "input": {"text": PAYLOADS[i]}, "result": {k: r[k] for k in keep}, "error": None, "attempts": 1}
            for i, (r, label) in enumerate([(minilm, "positive"), (cnn, PAYLOADS[1])])]
    rows.append({"model": "minilm-rt", "position": 2, "batch": 0, "label": None, "status": "failed",
                 "input": {"text": PAYLOADS[2]}, "result": None, "error": {"detail": PAYLOADS[4]}, "attempts": 1})
    request = {"models": ["minilm-rt"], "methods": ["gradient", "integrated_gradients"], "top_k": 3}
    done = [r for r in rows if r["status"] == "done"]
    aggregates = aggregate(done, request)
    lines = [attribution_line(r) for r in rows]
    assert lines[0]["methods"]["gradient"]["word_scores"] == minilm["methods"]["gradient"]["word_scores"]
    assert set(lines[0]["methods"]) >= {"gradient", "integrated_gradients"} and lines[2]["methods"] == {}
    json.dumps(lines, allow_nan=False)
    doc = {"id": "a1", "status": "succeeded", "models": ["minilm-rt"], "methods": request["methods"],
           "counts": {"total": 3, "done": 2, "failed": 1}, "aggregates": aggregates,
           "artifacts": [{"name": "attributions.jsonl"}]}
    page = Page(audit_view(doc, lines))
    assert not any(t == "img" or any(k.startswith("on") or k == "style" for k in a) for t, a in page.elements)
    assert all(p in "".join(page.text) for p in PAYLOADS[:3])
    assert sum(1 for t, _ in page.elements if t == "details") == 2  # a drill-down per explained item
    top = aggregates["models"]["minilm-rt"]["methods"]["gradient"]["top_words"][0]
    assert any(a.get("data-row") == top["word"] + (" (stop word)" if top["stop_word"] else "")
               and a["data-v"] == fmt(top["total_share"]) for t, a in page.elements if t == "rect")
    said = 'No faithfulness: the audit asked for faithfulness "none".'
    assert said not in "".join(page.text)
    # an audit at faithfulness "none": no spreads or chart, and the page says it was asked for
    bare = copy.deepcopy(aggregates)
    for part in bare["models"]["minilm-rt"]["methods"].values():
        part.pop("faithfulness", None)
    text = "".join(Page(audit_view({**doc, "aggregates": bare, "request": {"faithfulness": "none"}}, lines)).text)
    assert said in text and "mean faithfulness per method" not in text


def long_result(tokens: int = 512, methods: int = 6) -> dict:
    """A 512-token result with six token-scoring methods: the size target's case (issue 17)."""
    rng = random.Random(0)
    vocab = ["film", "good", "bad", "acting", "the", "a", "plot", "##s", ",", "beautifully", "never"]
    text = ["[CLS]"] + [rng.choice(vocab) for _ in range(tokens - 2)] + ["[SEP]"]
    names = ["gradient", "smoothgrad", "grad_x_input", "integrated_gradients", "occlusion", "lime"][:methods]
    faith = {"comprehensiveness": 0.3, "sufficiency": 0.1, "random": {"comprehensiveness": 0.1, "sufficiency": 0.2},
             "lift": 0.2}
    parts = {}
    for m in names:
        scores = [rng.gauss(0, 1) for _ in text]
        parts[m] = {"params": {}, "scores": scores, "word_scores": scores, "faithfulness": faith}
    return {"tokens": text, "special": [t.startswith("[") for t in text], "words": [[i] for i in range(tokens)],
            "word_strings": text, "prediction": {"label": "positive", "probabilities": {"positive": 0.9,
                                                                                        "negative": 0.1}},
            "target": "positive", "score": "logit", "methods": parts, "model": {"name": "minilm-rt"}}


def test_a_512_token_job_with_six_methods_stays_light():
    document = {"result": long_result(), "artifacts": [{"name": "result.json"}]}
    assert len(str(job_view(document)).encode()) < 300_000
    assert len(result_html(document).encode()) < 1_000_000


def test_the_audit_finaliser_writes_attributions_and_the_report_page():
    from worker.audit import report_files

    cnn = load("cnn-rt")
    keep = ("tokens", "special", "words", "word_strings", "prediction", "target", "methods")
    rows = [{"model": "cnn-rt", "position": i, "batch": 0, "label": "positive", "status": "done",
             "input": {"text": PAYLOADS[i]}, "result": {k: cnn[k] for k in keep}, "error": None, "attempts": 1}
            for i in range(3)]
    request = {"models": ["cnn-rt"], "methods": ["gradient", "lrp"], "top_k": 3}
    files = report_files("a1", request, {"total": 3, "done": 3, "failed": 0}, aggregate(rows, request), rows,
                         {"items.csv": (b"", "text/csv")})
    lines = [json.loads(line) for line in files["attributions.jsonl"][0].splitlines()]
    assert [line["position"] for line in lines] == [0, 1, 2]
    assert lines[1]["methods"]["lrp"] == {"scores": cnn["methods"]["lrp"]["scores"],
                                          "word_scores": cnn["methods"]["lrp"]["word_scores"]}
    assert lines[1]["tokens"] == cnn["tokens"] and lines[1]["input"] == {"text": PAYLOADS[1]}
    page, kind = files["report.html"]
    assert kind == "text/html"
    links = [a["href"] for t, a in Page(page.decode()).elements if t == "a"]
    assert links == ["./attributions.jsonl", "./items.csv", "./report.html"]
    assert PAYLOADS[0] not in page.decode() and html.escape(PAYLOADS[0]) in page.decode()


def test_sigma_concepts_are_shaded_per_layer_on_one_scale():
    result = copy.deepcopy(load("minilm-rt"))
    layers = result["methods"]["sigma"]["layers"]
    special = [all(result["special"][t] for t in g) for g in result["words"]]
    for n, layer in enumerate(layers.values()):
        layer["r"] = {PAYLOADS[0]: [None if s else (i - 4) * (n + 1) / 10 for i, s in enumerate(special)]}
    page = Page(job_view({"result": result}))
    assert f"concept: {PAYLOADS[0]}" in "".join(page.text)
    every = [v for layer in layers.values() for v in layer["r"][PAYLOADS[0]] if v is not None]
    top = max(abs(v) for v in every)
    last = list(layers.values())[-1]["r"][PAYLOADS[0]]
    shown = [a["data-v"] for t, a in page.elements if t == "span" and "data-v" in a][-len(last):]
    assert shown == [fmt(v) for v in last]
    classes = [a["class"].split()[0] for t, a in page.elements if t == "span" and "data-v" in a][-len(last):]
    assert classes == ["d0" if v is None else f"d{round(5 * v / top)}" for v in last]


def test_esim_alignment_both_directions_have_premise_rows():
    # attention's esim view: both matrices n×m, premise words as rows (worker/methods/attention.py)
    part = {"view": "esim", "shape": [3, 2], "premise": ["a", "man", "sleeps"], "hypothesis": ["he", "rests"],
            "premise_to_hypothesis": [[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]],
            "hypothesis_to_premise": [[0.1, 0.2], [0.6, 0.3], [0.3, 0.5]]}
    result = {**load("esim-50"), "methods": {"attention": part}}
    tips = [t for t in Page(job_view({"result": result})).text if "→" in t and ":" in t]
    assert tips[:2] == ["a → he: 0.5", "a → rests: 0.5"] and tips[6:8] == ["a → he: 0.1", "a → rests: 0.2"]
    assert tips[-1] == "sleeps → rests: 0.5" and len(tips) == 12


def test_a_batch_job_shows_each_input_beside_its_item():
    """A batch job's request holds a list of inputs: each item's summary shows its own (escaped), the header none."""
    one = load("minilm-rt")
    document = {"result": {"schema_version": 1, "kind": "batch", "items": [one, one]}, "status": "succeeded",
                "model": {"name": "minilm-rt"}, "artifacts": [],
                "request": {"model": "minilm-rt", "inputs": [{"text": "<b>first</b>"}, {"text": "second"}]}}
    page = str(job_view(document))
    assert page.count("<details class=\"item\"") == 2
    assert "&lt;b&gt;first&lt;/b&gt;" in page and "<b>first" not in page and "second" in page
    assert '<dl class="inputs">' not in page
    assert "<b>first" not in result_html(document)
