"""The real MLflow UI, driven in headless Chromium (Debian's chromium + chromedriver, no browser download): the
experiment's runs table shows the flow run and its variant runs, and the compare view lines up their metrics."""

import shutil
import time

import pytest
from mlflow import MlflowClient

from tasks.core import tracking
from tests.services import mlflow_server
from tests.test_flow_mobile_bert import overrides

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
         "--no-first-run", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
         "--window-size=1600,2400"]


@pytest.fixture
def browser(tmp_path):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("no chromium/chromedriver (scripts/install-test-services.sh installs Debian's chromium and chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency: pip install -e '.[dev]'")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chrome-profile'}"]:
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def _text(driver) -> str:
    """All text in the page, including rows scrolled out of view (textContent, not only what is painted)."""
    return driver.execute_script("return document.body.textContent") or ""


def _wait_for(driver, needles: list[str], timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while True:
        text = _text(driver)
        if all(n in text for n in needles):
            return text
        if time.time() > deadline:
            missing = [n for n in needles if n not in text]
            raise AssertionError(f"not shown after {timeout}s: {missing}; page: {text[:1500]}")
        time.sleep(0.5)


def _click_text(driver, label: str, timeout: float = 30) -> None:
    from selenium.webdriver.common.by import By

    deadline = time.time() + timeout
    while True:
        found = driver.find_elements(By.XPATH, f"//*[normalize-space(text())='{label}']")
        if found:  # a JS click: MLflow's first-visit popovers cover the page and would swallow a pointer click
            driver.execute_script("arguments[0].click()", found[0])
            return
        assert time.time() < deadline, f"no '{label}' to click"
        time.sleep(0.5)


def test_mlflow_ui_shows_variants_and_compares_them(browser, tiny_model_dir, tmp_path, monkeypatch):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    from flows.mobile_bert import mobile_bert

    result = mobile_bert(profile="quick", overrides=overrides(tiny_model_dir, tmp_path / "out") + [
        "variants=[{name: int8, steps: [{technique: quantize}]}]"])
    variants = {r["variant"]: r for r in result["variants"]}
    with mlflow_server(store, tmp_path, workers=1) as uri:
        exp = MlflowClient(uri).get_experiment_by_name("effilm/mobile-bert")
        assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"

        # the experiment's runs table (the "Model training" view): the flow run, then its variant runs when expanded
        browser.get(f"{uri}/#/experiments/{exp.experiment_id}")
        _click_text(browser, "Model training")
        parent_name = MlflowClient(uri).get_run(result["parent_run_id"]).info.run_name
        _wait_for(browser, [parent_name, "bbc-train"])
        from selenium.webdriver.common.by import By

        expander = browser.find_element(  # the [+] beside the flow run's name shows its nested variant runs
            By.XPATH, f"//a[contains(., '{parent_name[:16]}')]/ancestor::*[@role='gridcell'][1]//button")
        browser.execute_script("arguments[0].click()", expander)
        _wait_for(browser, [parent_name, *variants])

        # the compare view of the variant runs: every run and the stable metric keys, side by side
        browser.get(tracking.ui_compare_url(uri, exp.experiment_id, [r["run_id"] for r in variants.values()]))
        text = _wait_for(browser, [f"Comparing {len(variants)} Runs", *variants, *(r["run_id"] for r in variants.values()),
                                   "eval/accuracy", "bench/latency_ms_p50_b1_t1"])  # (the grid renders the first ~20 keys)
        assert "technique" in text and "quantize" in text and "baseline" in text
        browser.save_screenshot(str(tmp_path / "compare.png"))
