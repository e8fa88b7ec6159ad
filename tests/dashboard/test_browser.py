"""The dashboard in a real browser: `autopeft dashboard` serves it on a free localhost port, headless Chromium
(Debian's ``chromium``, driven by Playwright) waits for the Pareto chart, clicks a point of the front and checks
the plan view shows that trial; then downloads its YAML. The screenshot goes to the test's folder, and to
``$AUTOPEFT_SCREENSHOT_DIR/dashboard.png`` when that is set (the README's picture comes from there).

Under CI (``$CI`` set) a missing Chromium or Playwright fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from autopeft.dashboard.data import plan_grid
from autopeft.optimize.pareto import pareto_front
from serving import start_dashboard, stop

pytestmark = pytest.mark.browser

CHROMIUM_ENV = "AUTOPEFT_CHROMIUM"
SCREENSHOT_ENV = "AUTOPEFT_SCREENSHOT_DIR"
FRONT_COLOR = "rgb(214, 39, 40)"  # figures.STYLE[FRONT]


def _need(what: str, fix: str):
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing under CI: {fix}")
    pytest.skip(f"{what} is missing: {fix}")


@pytest.fixture(scope="module")
def chromium() -> str:
    path = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        _need("chromium", "apt-get install -y chromium (.ci/run does), or set AUTOPEFT_CHROMIUM to a Chromium binary")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _need("playwright", "pip install -e '.[test]' (no `playwright install`: the test drives Debian's chromium)")
    return path


@pytest.fixture
def server(tmp_path, make_study):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    st = make_study(url, "dash-demo", n_trials=16, fail_every=7)  # its own file: a fixed name is safe
    proc, base = start_dashboard(url, tmp_path / "server.log", {**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        yield base, st
    finally:
        stop(proc)


def test_click_a_front_point_shows_its_plan_and_exports_it(chromium, server, tmp_path):
    from playwright.sync_api import sync_playwright

    base, st = server
    front = {t.number: t for t in pareto_front(st.trials(), st.space.directions)}
    # the front trial with the most modules: the richest plan to look at
    target = max(front.values(), key=lambda t: (sum(1 for _ in st.plan_of(t).modules()), t.number)).number
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 1900}, accept_downloads=True)
        page.goto(f"{base}/?study={st.name}")
        chart = page.locator(".st-key-front_chart .js-plotly-plot")
        points = chart.locator(f".scatterlayer .trace .points path.point[style*='{FRONT_COLOR}']")
        points.first.wait_for(timeout=60_000)
        assert points.count() == len(front)
        page.wait_for_timeout(500)  # let the chart settle before pointing at it

        # Hover each front point until the tooltip names the target trial; then click it (plotly's drag layer
        # lies over the points, so the mouse goes to the point's coordinates).
        hover = page.locator(".st-key-front_chart .hoverlayer")
        for i in range(points.count()):
            box = points.nth(i).bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            page.mouse.move(x, y)
            page.wait_for_timeout(150)
            shown = re.search(r"trial (\d+)", hover.text_content() or "")
            if shown and int(shown.group(1)) == target:
                break
        else:
            raise AssertionError(f"no front point's tooltip named trial {target}")
        assert front[target].user_attrs["plan_summary"][:30] in hover.text_content()
        page.mouse.click(x, y)

        page.get_by_role("heading", name=f"Trial {target}").wait_for(timeout=30_000)
        page.locator(f".st-key-plan_{target} .js-plotly-plot").wait_for(timeout=30_000)
        cells = page.locator(f".st-key-plan_{target} .js-plotly-plot text").all_text_contents()
        assert set(plan_grid(st.plan_of(front[target]))["label"]) <= set(cells)  # every module's size is drawn
        page.wait_for_timeout(800)
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot))

        with page.expect_download() as download:
            page.get_by_role("button", name=f"Download plan YAML (trial {target})").click()
        saved = tmp_path / "plan.yaml"
        download.value.save_as(saved)
        browser.close()

    doc = yaml.safe_load(saved.read_text())
    assert doc["trial"] == target and doc["study"] == st.name
    assert doc["summary"] == front[target].user_attrs["plan_summary"]
    assert shot.stat().st_size > 10_000
    if os.environ.get(SCREENSHOT_ENV):
        out = Path(os.environ[SCREENSHOT_ENV])
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shot, out / "dashboard.png")
    assert st.count(TrialState.COMPLETE) == 16
