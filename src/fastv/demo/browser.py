"""Drive the demo page in headless Chromium (Selenium + the system chromedriver; nothing downloaded).

Used by the browser test and to refresh the README's screenshot:

    python -m fastv.demo.browser http://127.0.0.1:7860/ IMAGE "color a3" docs/demo.png
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
# Page parts that must be visible side by side without overlapping.
PARTS = ("image", "prompt", "compare", "full-answer", "fastv-answer", "kept", "masked", "chart", "flops")


@dataclass
class PageRun:
    full_answer: str
    fastv_answer: str
    kept: str
    message: str
    masked_src: str
    kept_after_drag: str | None  # the kept count after dragging the R slider, when asked
    boxes: dict[str, tuple[float, float, float, float]]  # id -> (x, y, width, height), CSS px
    screenshot: Path


def chromium(width: int = 1280, height: int = 800):
    """A headless Chromium whose viewport is exactly width x height, with a throw-away profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--window-size={width},{height}", f"--user-data-dir={tempfile.mkdtemp()}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    return driver


def compare_in_page(
    url: str, image: Path, prompt: str, screenshot: Path, drag_ratio: int = 0, timeout: float = 120
) -> PageRun:
    """Open the page, upload `image`, type `prompt`, click Compare, wait for both answers and the
    greyed-out picture, then save a screenshot of the 1280x800 viewport. With `drag_ratio` (px),
    then drag the R slider and wait for the kept count to change."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium()
    try:
        wait = WebDriverWait(driver, timeout)
        driver.get(url)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
        driver.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(Path(image).resolve()))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image img"))  # uploaded and previewed
        box = driver.find_element(By.CSS_SELECTOR, "#prompt textarea")
        box.clear()
        box.send_keys(prompt)
        driver.find_element(By.CSS_SELECTOR, "#compare").click()

        def value(css: str) -> str:
            return driver.find_element(By.CSS_SELECTOR, css).get_attribute("value") or ""

        wait.until(lambda d: value("#fastv-answer textarea") and d.find_elements(By.CSS_SELECTOR, "#masked img"))
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart img"))
        driver.execute_script("window.scrollTo(0, 0)")
        screenshot = Path(screenshot)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        boxes = {}
        for part in PARTS:
            r = driver.execute_script(
                "const r = document.getElementById(arguments[0]).getBoundingClientRect();"
                "return [r.x, r.y, r.width, r.height];",
                part,
            )
            boxes[part] = tuple(float(v) for v in r)
        shown = {
            "full_answer": value("#full-answer textarea"),
            "fastv_answer": value("#fastv-answer textarea"),
            "kept": value("#kept textarea"),
            "message": driver.find_element(By.CSS_SELECTOR, "#message").text,
            "masked_src": driver.find_element(By.CSS_SELECTOR, "#masked img").get_attribute("src") or "",
        }
        kept_after = None
        if drag_ratio:
            slider = driver.find_element(By.CSS_SELECTOR, "#ratio input[type=range]")
            ActionChains(driver).click_and_hold(slider).move_by_offset(drag_ratio, 0).release().perform()
            wait.until(lambda d: value("#kept textarea") not in ("", shown["kept"]))
            kept_after = value("#kept textarea")
        return PageRun(**shown, kept_after_drag=kept_after, boxes=boxes, screenshot=screenshot)
    finally:
        driver.quit()


def run_example(url: str, index: int = 0, timeout: float = 120) -> tuple[str, str]:
    """Click example row `index` (one click must run the comparison); returns (prompt, FastV answer)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chromium()
    try:
        wait = WebDriverWait(driver, timeout)
        driver.get(url)
        css = f"#examples tbody tr:nth-child({index + 1}) td"
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, css))
        driver.find_element(By.CSS_SELECTOR, css).click()

        def value(css: str) -> str:
            return driver.find_element(By.CSS_SELECTOR, css).get_attribute("value") or ""

        wait.until(lambda d: value("#fastv-answer textarea") and d.find_elements(By.CSS_SELECTOR, "#masked img"))
        return value("#prompt textarea"), value("#fastv-answer textarea")
    finally:
        driver.quit()


def overlaps(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    """True when two (x, y, width, height) boxes share any area."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def main(argv: list[str]) -> None:
    url, image, prompt, out = argv
    run = compare_in_page(url, Path(image), prompt, Path(out))
    print(f"full: {run.full_answer!r}  fastv: {run.fastv_answer!r}  kept: {run.kept}  -> {run.screenshot}")


if __name__ == "__main__":
    main(sys.argv[1:])
