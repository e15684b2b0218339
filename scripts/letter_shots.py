"""Phone-width (375 px) Chromium screenshots of shipped letters, to look at before a release.

    .venv/bin/python scripts/letter_shots.py OUT_DIR [sequence/step ...]

Each letter is rendered with `funnel preview` for the sample reader and opened
from its file in headless Chromium; the PNGs are full-page.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

DEFAULT = [
    "webinar-relationship-911/registered",
    "webinar-relationship-911/consultation-invite",
    "betrayal-recovery/what-you-feel",
]


def main() -> None:
    out = Path(sys.argv[1]).resolve()
    out.mkdir(parents=True, exist_ok=True)
    letters = sys.argv[2:] or DEFAULT
    repo = Path(__file__).resolve().parent.parent
    funnel = repo / ".venv" / "bin" / "funnel"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=375,800"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path="/usr/bin/chromedriver"))
    try:
        with tempfile.TemporaryDirectory() as work:
            for letter in letters:
                sequence, step = letter.split("/")
                subprocess.run(
                    [
                        str(funnel),
                        "preview",
                        sequence,
                        step,
                        "--config",
                        str(repo / "sequences.yaml"),
                        "--now",
                        "2027-01-05T16:00:00Z",
                        "--out",
                        str(Path(work) / "preview"),
                    ],
                    cwd=work,
                    check=True,
                    capture_output=True,
                )
                page = Path(work) / "preview" / f"{sequence}--{step}.html"
                driver.set_window_size(375, 800)
                driver.get(page.as_uri())
                height = driver.execute_script("return document.documentElement.scrollHeight")
                driver.set_window_size(375, int(height) + 100)
                shot = out / f"{step}.png"
                driver.save_screenshot(str(shot))
                print(shot)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
