"""The bit-intervention journey in headless Chromium: open a concept, switch one of its bits off and see its
neighbours change, then query concepts by their bits (see tests/test_browser.py for how the app is run)."""

import re
import time

import pandas as pd
from playwright.sync_api import expect
from test_browser import (  # noqa: F401  (fixtures used by name)
    TIMEOUT_MS,
    browser_type_launch_args,
    finished_run,
    folders,
    hpo_subset,
    loaded_machine_timeouts,
    main_text,
    open_home,
    running_app,
    step,
)


def test_switch_a_bit_off_and_query_by_bits(page, request, folders, hpo_subset):  # noqa: F811
    started = time.monotonic()
    run_id = finished_run(folders, hpo_subset)  # rigid TopK, K=4: every concept has 4 active bits
    concept = pd.read_parquet(folders["data"] / "hpo" / "concepts.parquet")["id"].iloc[40]
    with running_app(folders, SPARSEBIN_NO_WORKER="1") as app:
        with step(page, request, "open-a-concept"):
            open_home(page, app)
            page.goto(f"{app.url}/concepts?run={run_id}&concept={concept}")
            expect(main_text(page).get_by_text("Switch bits")).to_be_visible(timeout=TIMEOUT_MS)
            kept = page.get_by_role("combobox", name=re.compile("Active bits kept on"))
            expect(kept).to_be_visible()
        with step(page, request, "switch-a-bit-off"):
            kept.click()
            page.keyboard.press("Backspace")  # removes the last kept bit, as a user's delete key does
            page.keyboard.press("Escape")
            caption = main_text(page).get_by_text(re.compile(r"^Decoded by the run's decoder: 4 active bits before, 3"))
            expect(caption).to_be_visible(timeout=TIMEOUT_MS)
            expect(main_text(page).get_by_text("Gained and lost")).to_be_visible()
        with step(page, request, "query-by-bits"):
            box = page.get_by_role("textbox", name="Query by bits")
            box.fill("0 | ~0")
            box.press("Enter")
            expect(main_text(page).get_by_text(re.compile(r"read as .*: 300 of 300 concepts"))).to_be_visible(
                timeout=TIMEOUT_MS
            )
            box.fill("0 &")
            box.press("Enter")
            expect(main_text(page).get_by_role("alert").first).to_be_visible(timeout=TIMEOUT_MS)
    print(f"intervention journey: {time.monotonic() - started:.1f} s")
