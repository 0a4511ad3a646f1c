"""The HTML report in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by selenium):
the page loads from the file system without console errors, shows the counts computed here, filters,
pages, enlarges images from their relative links, puts two runs side by side, and shows hostile prompt
text as text. Python-level checks of the page data run without a browser."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dpgbench.cli import app
from dpgbench.html_report import ReportConfig, build_report, image_states
from dpgbench.scored import load_detail, load_scored
from dpgbench.scoring import is_yes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def invoke(args: list[str]):
    return CliRunner().invoke(app, args)


def detail_of(run: Path):
    return load_detail(load_scored(str(run))[0])


def invalidated(detail, protocol: str) -> int:
    """Answers the judge gave as yes whose final score is 0: counted here without html_report's code."""
    count = 0
    for d in detail.prompts:
        for answers, finals in zip(d.answers, d.finals[protocol]):
            if answers is None:
                continue
            for q, final in zip(d.prompt.questions, finals):
                if final == 0.0 and q.question in answers and is_yes(answers[q.question], protocol):
                    count += 1
    return count


def page_data(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    block = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', text, re.S)
    assert block is not None
    return json.loads(block.group(1))


# ------------------------------------------------------------------------------ without a browser


@pytest.fixture(scope="module")
def single(report_runs, tmp_path_factory) -> tuple[Path, object, object]:
    detail = detail_of(report_runs["a"])
    out = tmp_path_factory.mktemp("report") / "report.html"
    summary = build_report([detail], out, ReportConfig(page_size=5, cache=False))  # the fixture stays as is
    return out, summary, detail


def test_page_data_and_counts(single, report_runs):
    out, summary, detail = single
    assert (summary.prompts, summary.images, summary.missing_images) == (12, 48, 0)
    assert summary.invalidated == {p: invalidated(detail, p) for p in ("strict", "official", "dsg")}
    assert summary.invalidated == {"strict": 61, "official": 55, "dsg": 60}
    data = page_data(out)
    assert [p["id"] for p in data["prompts"]] == [d.prompt.item_id for d in detail.prompts]
    lighthouse = data["prompts"][0]["runs"][0]
    assert (
        lighthouse["score"]["official"] is None and "KeyError upstream" in lighthouse["excluded"]["official"]
    )
    assert lighthouse["state"]["official"][0] == "-" * 12
    # image 0: question 10 (row 10) was answered yes, zeroed in strict by its failed parent 2
    assert lighthouse["raw"][0][9] == "yes" and lighthouse["state"]["strict"][0][9] == "x"
    assert lighthouse["images"][0]["src"] == "../../report_runs0/a/images/demo_lighthouse_0.png" or (
        (out.parent / lighthouse["images"][0]["src"]).resolve()
        == (report_runs["a"] / "images/demo_lighthouse_0.png")
    )
    assert lighthouse["images"][0]["thumb"].startswith("data:image/jpeg;base64,")
    text = out.read_text()
    assert (
        not re.search(r'(src|href)="https?:', text) and "<link" not in text
    )  # nothing fetched from a network
    assert summary.bytes == len(text.encode()) < 400_000
    assert [p.name for p in summary.plots] == ["report.categories.png", "report.distribution.png"]


def test_image_states_of_a_missing_image(report_runs, tmp_path):
    run = shutil.copytree(report_runs["a"], tmp_path / "a")
    (run / "images" / "demo_fox_1.png").unlink()
    assert invoke(["score", str(run), "--judge", "dummy"]).exit_code == 0
    fox = detail_of(run).by_id()["demo_fox"]
    states = image_states(fox, "strict")
    assert states[1] == "m" * len(fox.prompt.questions)
    n = len(fox.prompt.questions)
    assert image_states(fox, "official") == [
        "-" * n,
        "m" * n,
        "-" * n,
        "-" * n,
    ]  # incomplete grid: not counted


def test_thumbnails_are_cached_by_image_hash(report_runs, tmp_path):
    run = shutil.copytree(report_runs["a"], tmp_path / "a", ignore=shutil.ignore_patterns("thumbnails"))
    first = build_report([detail_of(run)], tmp_path / "first.html", ReportConfig(plots=False))
    cache = run / "thumbnails" / "128px-q80"
    assert (first.images, first.thumbnails_reused, len(list(cache.glob("*.jpg")))) == (48, 0, 48)
    again = build_report([detail_of(run)], tmp_path / "again.html", ReportConfig(plots=False))
    assert again.thumbnails_reused == 48
    thumbs = [
        [i["thumb"] for i in p["runs"][0]["images"]] for p in page_data(tmp_path / "first.html")["prompts"]
    ]
    assert thumbs == [
        [i["thumb"] for i in p["runs"][0]["images"]] for p in page_data(tmp_path / "again.html")["prompts"]
    ]
    # A new image in place of an old one has another sha256: decoded again, never the stale thumbnail.
    from PIL import Image

    fox = run / "images" / "demo_fox_0.png"
    with Image.open(fox) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(fox)
    assert invoke(["score", str(run), "--judge", "dummy"]).exit_code == 0
    third = build_report([detail_of(run)], tmp_path / "third.html", ReportConfig(plots=False))
    assert third.thumbnails_reused == 47 and len(list(cache.glob("*.jpg"))) == 49
    old = {p["id"]: p["runs"][0]["images"] for p in page_data(tmp_path / "first.html")["prompts"]}
    new = {p["id"]: p["runs"][0]["images"] for p in page_data(tmp_path / "third.html")["prompts"]}
    assert new["demo_fox"][0]["thumb"] != old["demo_fox"][0]["thumb"]
    assert new["demo_fox"][1:] == old["demo_fox"][1:]
    # Without the cache nothing is read or written there.
    shutil.rmtree(run / "thumbnails")
    build_report([detail_of(run)], tmp_path / "none.html", ReportConfig(plots=False, cache=False))
    assert not (run / "thumbnails").exists()


def test_report_command_refusals(report_runs, tmp_path):
    result = invoke(["report", str(report_runs["a"]), "--out", str(tmp_path / "r.txt")])
    assert (
        result.exit_code == 1
        and str(result.exception) == f"--out {tmp_path / 'r.txt'}: name the report file with .html"
    )
    result = invoke(["report", str(report_runs["unscored"])])
    assert result.exit_code == 1 and "no judge has scored this run yet" in str(result.exception)
    result = invoke(["report", str(report_runs["a"]), "--thumb-size", "4"])
    assert result.exit_code == 1 and "--thumb-size 4" in str(result.exception)


# ----------------------------------------------------------------------------------- in Chromium


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("Chromium is absent: apt-get install chromium chromium-driver (CI installs both)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is absent: pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="dpgbench-chromium-")
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,1000",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def open_page(driver, path: Path) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(path.resolve().as_uri())
    WebDriverWait(driver, 20).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def text(driver, css: str) -> str:
    return driver.find_element("css selector", css).text


def count(driver, css: str) -> int:
    return len(driver.find_elements("css selector", css))


def choose(driver, select_id: str, value: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", select_id)).select_by_value(value)


def type_into(driver, element_id: str, value: str) -> None:
    box = driver.find_element("id", element_id)
    box.clear()
    box.send_keys(value)


def test_single_run_page(browser, single):
    out, summary, detail = single
    open_page(browser, out)
    assert console_errors(browser) == []
    assert text(browser, "#stat-prompts") == "12" and text(browser, "#stat-images") == "48"
    assert text(browser, "#stat-missing") == "0" and text(browser, "#stat-questions") == "147"
    assert text(browser, "#stat-invalidated") == str(summary.invalidated["strict"])
    assert text(browser, "#shown-count") == "12" and text(browser, "#total-count") == "12"
    assert count(browser, "article.prompt") == 5 and count(browser, "img.thumb") == 20
    assert count(browser, "#runs tbody tr") == 1 and count(browser, "#categories tbody tr") == 5 + 13
    assert count(browser, ".plots img") == 2
    first_five = detail.prompts[:5]
    shown_x = sum(s.count("x") for d in first_five for s in image_states(d, "strict"))
    assert count(browser, "td.st-x") == shown_x
    # the question tree: question 10 of the lighthouse sits under question 1, noting its second parent
    row = browser.find_element(
        "xpath", "//article[@data-id='demo_lighthouse']//td[@class='q'][contains(., 'on the cliff')]"
    )
    assert "\u2514 Is the lighthouse on the cliff?" in row.text and "also depends on 2" in row.text
    # paging
    assert text(browser, ".page-info") == "prompts 1\u20135 of 12 (page 1 of 3)"
    browser.find_element("css selector", ".pager .next").click()
    assert text(browser, ".page-info") == "prompts 6\u201310 of 12 (page 2 of 3)"
    # protocol switch updates the counts
    choose(browser, "protocol", "dsg")
    assert text(browser, "#stat-invalidated") == str(summary.invalidated["dsg"])
    choose(browser, "protocol", "strict")
    # filters: a category, a score range, a search
    choose(browser, "category", "other - text")
    with_text = [
        d.prompt.item_id for d in detail.prompts if any(q.l2 == "other - text" for q in d.prompt.questions)
    ]
    assert text(browser, "#shown-count") == str(len(with_text)) == "2"
    assert [
        a.get_attribute("data-id") for a in browser.find_elements("css selector", "article.prompt")
    ] == with_text
    choose(browser, "category", "")
    type_into(browser, "min-score", "70")
    high = [d for d in detail.prompts if d.scores["strict"] >= 70]
    assert text(browser, "#shown-count") == str(len(high)) == "3"
    type_into(browser, "min-score", "0")
    type_into(browser, "search", "fox")
    assert text(browser, "#shown-count") == "1" and count(browser, "article.prompt") == 1
    # a click on a thumbnail opens the original image through its relative link
    browser.find_element("css selector", "img.thumb").click()
    assert browser.find_element("id", "lightbox").is_displayed()
    loaded = browser.execute_script(
        "const i = document.getElementById('lightbox-img'); return i.complete ? [i.naturalWidth, i.src] : null"
    )
    assert loaded[0] == 64 and loaded[1].endswith("/images/demo_fox_0.png")
    browser.find_element("id", "lightbox").click()
    assert not browser.find_element("id", "lightbox").is_displayed()
    assert console_errors(browser) == []


def test_two_runs_side_by_side(browser, report_runs, tmp_path):
    out = tmp_path / "side.html"
    args = ["report", str(report_runs["a"]), str(report_runs["b"]), "--out", str(out), "--no-plots"]
    result = invoke([*args, "--no-thumb-cache"])
    assert result.exit_code == 0, result.output
    assert "12 prompts, 96 images, 0 missing" in result.output
    open_page(browser, out)
    assert console_errors(browser) == []
    assert count(browser, "#runs tbody tr") == 2 and count(browser, "article.prompt") == 12
    first = browser.find_element("css selector", "article.prompt")
    assert len(first.find_elements("css selector", ".image-row")) == 2
    headers = [th.text for th in first.find_elements("css selector", "table.questions th.st")]
    assert headers == ["A1", "A2", "A3", "A4", "B1", "B2", "B3", "B4"]
    assert len(first.find_elements("css selector", "tbody tr")[0].find_elements("css selector", "td.st")) == 8
    choose(browser, "sort", "delta-asc")
    order = [a.get_attribute("data-id") for a in browser.find_elements("css selector", "article.prompt")]
    assert order[0] == "demo_castle" and order[-1] == "demo_market"  # most regressed first, as `compare` says
    assert "\u0394 -31.25" in text(browser, "article.prompt h3")


def test_hostile_prompt_text_stays_text(browser, tmp_path):
    from dpgbench import catalog
    from dpgbench.data import load_csv, save_graphs

    hostile = '</script><script>window.pwned = 1</script><img src=x onerror="window.pwned = 2"> {{JS}}'
    graphs = load_csv(catalog.PACKAGE_PROMPTS / "demo.csv")
    next(p for p in graphs.prompts if p.item_id == "demo_fox").text = hostile
    questions = tmp_path / "hostile.csv"
    save_graphs(graphs.prompts, questions)
    run = tmp_path / "run"
    args = ["generate", "--backend", "dummy", "--prompts", str(questions), "--out", str(run), "--limit", "6"]
    assert invoke(args).exit_code == 0
    assert invoke(["score", str(run), "--judge", "dummy"]).exit_code == 0
    assert invoke(["report", str(run), "--no-plots"]).exit_code == 0
    open_page(browser, run / "report.html")
    assert browser.execute_script("return window.pwned === undefined")
    type_into(browser, "search", "demo_fox")
    assert text(browser, "article.prompt p.text") == hostile
    assert console_errors(browser) == []
