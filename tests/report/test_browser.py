"""Reports opened in a real browser (headless Chromium driven by Playwright, the system's browser,
no download): no console error, no network request, every image loaded, a screenshot saved; a model
or folder named ``<script>alert(1)</script>`` shows as text (no dialog, no injected element); long
names do not widen the page past the viewport.

Skipped, with the reason shown, only when no Chromium or Playwright is installed
(``.ci/run`` installs both: ``apt-get install -y chromium``, ``pip install playwright``).
"""
from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

import normlens

CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser"))
                 if p and Path(p).is_file()), None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCRIPT = "<script>alert(1)</script>"
LONG = "checkpoints/" + "a-very-long-model-folder-name-without-spaces_" * 6 + "final"
VIEWPORT = {"width": 1280, "height": 900}

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install -y chromium); "
                                                "the browser test did not run"),
]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright not installed (pip install playwright)")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM, headless=True, args=ARGS,
            viewport=VIEWPORT, offline=True)
        yield context
        context.close()


def open_report(context, path: Path, screenshot: Path) -> dict:
    """Load ``path`` and return what the page did: console errors, requests, dialogs, images, sizes."""
    seen = {"errors": [], "requests": [], "dialogs": []}
    page = context.new_page()
    page.on("console", lambda msg: msg.type == "error" and seen["errors"].append(msg.text))
    page.on("pageerror", lambda err: seen["errors"].append(str(err)))
    page.on("dialog", lambda dialog: (seen["dialogs"].append(dialog.message), dialog.dismiss()))
    url = path.resolve().as_uri()
    page.on("request", lambda req: req.url != url and not req.url.startswith("data:")
            and seen["requests"].append(req.url))
    page.goto(url, wait_until="load")
    seen.update(page.evaluate("""() => ({
        images: document.images.length,
        broken: Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length,
        missingAlt: Array.from(document.images).filter(i => !i.getAttribute('alt')).length,
        scripts: document.querySelectorAll('script').length,
        text: document.body.innerText,
        scrollWidth: document.documentElement.scrollWidth,
        viewport: window.innerWidth,
    })"""))
    page.screenshot(path=str(screenshot), full_page=True)
    page.close()
    seen["screenshot"] = screenshot
    return seen


def assert_clean(seen: dict, n_images: int | None = None) -> None:
    assert seen["errors"] == [] and seen["requests"] == [] and seen["dialogs"] == []
    assert seen["images"] > 0 and seen["broken"] == 0 and seen["missingAlt"] == 0
    if n_images is not None:
        assert seen["images"] == n_images
    assert seen["scripts"] == 0  # nothing injected: reports carry no script at all
    assert seen["scrollWidth"] <= seen["viewport"], "the page is wider than the window"
    assert seen["screenshot"].stat().st_size > 0


def tiny_model():
    return normlens.build_model(norm="rms", n_layers=1, d_model=16, n_heads=2, n_ctx=16, d_vocab=256).eval()


def tokens():
    return torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("verb", ["probe", "hessian", "landscape"])
def test_verb_reports_with_a_script_named_model_and_folder(browser, tmp_path, verb):
    from normlens.cli.hessian import run_hessian
    from normlens.cli.landscape import run_landscape
    from normlens.cli.probe import probe_model

    out = tmp_path / SCRIPT  # a folder "<script>alert(1)<" holding "script>"
    if verb == "probe":
        probe_model(tiny_model(), tokens(), out, name=SCRIPT)
    elif verb == "hessian":
        run_hessian(tiny_model(), tokens(), out, name=SCRIPT, k=2, trace_matvecs=4, density_probes=1, density_steps=6)
    else:
        run_landscape(tiny_model(), tokens(), out, resolution=3, span=0.5, model_name=SCRIPT)
    seen = open_report(browser, out / "report.html", tmp_path / f"{verb}.png")
    assert_clean(seen)
    assert SCRIPT in seen["text"] and str(out) in seen["text"]  # the name and the folder, shown as text


def test_long_names_stay_within_the_page_width(browser, tmp_path):
    from normlens.cli.probe import probe_model

    probe_model(tiny_model(), tokens(), tmp_path / "long", name=LONG)
    seen = open_report(browser, tmp_path / "long" / "report.html", tmp_path / "long.png")
    assert_clean(seen, n_images=9)
    assert LONG in seen["text"].replace("\n", "")


def test_zoo_report_in_a_script_named_folder(browser, tmp_path):
    from analyses.common.curvature import HessianSettings
    from analyses.zoo import QUICK, ZooStudy
    from normlens.models import ZooConfig
    from normlens.models.ln_removal import LNRemovalConfig
    from normlens.study import StudyConfig, run_study
    from normlens.train import TrainConfig

    tiny = dataclasses.replace(
        QUICK, zoo=dataclasses.replace(
            QUICK.zoo, model=ZooConfig(n_layers=1, d_model=16, n_heads=2, n_ctx=16), eval_seqs=4, n_seeds=1, probe_every=0,
            train=TrainConfig(steps=4, eval_every=2, eval_seqs=4, batch_size=4),
            removal=LNRemovalConfig(warmup_steps=1, steps_per_removal=1, final_steps=1, batch_size=4, eval_seqs=4)),
        hessian=HessianSettings(n_seq=2, n_ctx=8, top_k=2, top_steps=5, density_steps=5, block_steps=3))
    out = tmp_path / SCRIPT / "zoo.html"
    study = ZooStudy({"quick": tiny})
    run_study(study, StudyConfig(options={"analyses": ["hessian"]}), out, log=lambda _: None)
    seen = open_report(browser, out, tmp_path / "zoo.png")
    assert_clean(seen)
    assert "LayerNorm removed by fine-tuning" in seen["text"] and SCRIPT in seen["text"]
