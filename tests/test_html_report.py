"""summary/report.html: one file with every figure embedded; each decodes as the image it was,
and a real headless browser (Chromium) loads it without errors with every figure sized."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from analysis.html_report import render_html, write_html_report
from analysis.plotting import plt

DRAWN = ("hpo_history.png", "hpo_parallel.png")  # what the report itself wrote
DATA_URI = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)"')


def figure(path: Path, size: tuple[float, float]) -> None:
    fig, ax = plt.subplots(figsize=size)
    ax.plot([0, 1, 2], [1, 0, 2])
    fig.savefig(path, format="png", dpi=50)
    plt.close(fig)


@pytest.fixture
def summary_dir(tmp_path: Path) -> Path:
    (tmp_path / "figures").mkdir()
    figure(tmp_path / "figures" / "hpo_history.png", (4, 3))
    figure(tmp_path / "figures" / "hpo_parallel.png", (6, 2))
    (tmp_path / "report.md").write_text(
        "# Study report: demo\n\n| Parameter | Value |\n| --- | --- |\n| lr | 0.001 |\n\n"
        "![History](figures/hpo_history.png)\n\n![Parallel](figures/hpo_parallel.png)\n"
        "<script>alert(1)</script>\n")
    return tmp_path


def embedded(page: str) -> dict[str, Image.Image]:
    images = {}
    for data, alt in DATA_URI.findall(page):
        image = Image.open(io.BytesIO(base64.b64decode(data, validate=True)))
        image.load()
        images[alt] = image
    return images


def test_every_figure_is_embedded_and_decodes(summary_dir: Path) -> None:
    path = write_html_report(summary_dir, DRAWN)
    page = path.read_text()
    images = embedded(page)
    assert set(images) == {"History", "Parallel"}
    for alt, name in (("History", "hpo_history.png"), ("Parallel", "hpo_parallel.png")):
        original = Image.open(summary_dir / "figures" / name)
        assert images[alt].format == "PNG"
        assert images[alt].size == original.size
    assert "<title>Study report: demo</title>" in page
    assert "<table>" in page and "<td>0.001</td>" in page
    assert "figures/" not in page  # nothing left that needs the folder
    assert "<script>" not in page  # raw HTML in the markdown is escaped, not run


def test_a_missing_figure_is_named(tmp_path: Path) -> None:
    page = render_html("![Gone](figures/gone.png)\n", tmp_path, ["gone.png"])
    assert "Figures not found when this page was written:</strong> figures/gone.png" in page


@pytest.mark.parametrize("src", ["/proc/self/environ", "secret.txt", "figures/../secret.txt",
                                 "figures/secret.txt", "file:///etc/passwd"])
def test_only_the_figures_the_report_drew_are_ever_embedded(summary_dir: Path, src: str) -> None:
    """Markdown image syntax in text the report quotes (a recorded command, a storage path)
    embeds no file and links none: no image but the drawn figures, no local path as a src."""
    (summary_dir / "secret.txt").write_text("AWS_SECRET=hunter2")
    (summary_dir / "figures" / "secret.txt").write_text("AWS_SECRET=hunter2")
    report = (summary_dir / "report.md").read_text()
    (summary_dir / "report.md").write_text(report + f"\nCommand: ![leak]({src})\n")
    page = write_html_report(summary_dir, DRAWN).read_text()
    assert set(embedded(page)) == {"History", "Parallel"}  # the drawn figures, still embedded
    assert "hunter2" not in page and base64.b64encode(b"AWS_SECRET").decode() not in page
    assert page.count("<img ") == 2 and f'"{src}"' not in page
    assert "Command: leak" in page or f"Command: ![leak]({src})" in page  # shown as text


def test_a_drawn_figure_replaced_by_a_link_is_not_followed(summary_dir: Path) -> None:
    (summary_dir / "secret.txt").write_text("AWS_SECRET=hunter2")
    (summary_dir / "figures" / "hpo_history.png").unlink()
    (summary_dir / "figures" / "hpo_history.png").symlink_to(summary_dir / "secret.txt")
    page = write_html_report(summary_dir, DRAWN).read_text()
    assert set(embedded(page)) == {"Parallel"}
    assert "hunter2" not in page and base64.b64encode(b"AWS_SECRET").decode() not in page
    assert "Figures not found when this page was written:</strong> figures/hpo_history.png" in page


CHECK = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(String(e.message || e.type)), true);
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({alt: i.alt, complete: i.complete,
    w: i.naturalWidth, h: i.naturalHeight, shownW: i.getBoundingClientRect().width,
    shownH: i.getBoundingClientRect().height}));
  const out = document.createElement("pre");
  out.id = "check";
  out.textContent = JSON.stringify({errors: window.__errors, imgs});
  document.body.appendChild(out);
});
</script>"""


def test_headless_chromium_loads_it_with_every_figure_sized(summary_dir: Path,
                                                            tmp_path_factory) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") \
        or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium or Chrome installed (Debian: apt-get install -y chromium)")
    page = write_html_report(summary_dir, DRAWN).read_text()
    probe = tmp_path_factory.mktemp("browser") / "report.html"
    # The check script goes in a copy: the report itself carries no JavaScript.
    probe.write_text(page.replace("</head>", CHECK + "\n</head>"))
    profile = tmp_path_factory.mktemp("profile")
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom",
         probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the page did not finish loading: {done.stdout[:500]}"
    check = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert check["errors"] == []
    assert {i["alt"] for i in check["imgs"]} == {"History", "Parallel"}
    for image in check["imgs"]:
        assert image["complete"] and image["w"] > 0 and image["h"] > 0, image
        assert image["shownW"] > 0 and image["shownH"] > 0, image


def _browser() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") \
        or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium or Chrome installed (Debian: apt-get install -y chromium)")
    return browser


def _profile(root: Path, name: str) -> Path:
    """A fresh Chromium profile folder: each run its own, so none shares state."""
    path = root / f"profile-{name}"
    path.mkdir()
    return path


def _screenshot(browser: str, page: Path, profile: Path) -> Image.Image:
    shot = page.with_suffix(".shot.png")
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1200,4000",
         f"--screenshot={shot}", page.as_uri()],
        capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    return Image.open(shot).convert("RGB")


def _near(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 40) -> int:
    """How many pixels of `image` are within `tolerance` of `colour` in every channel."""
    import numpy as np

    pixels = np.asarray(image, dtype=int)
    return int(np.all(np.abs(pixels - np.array(colour)) <= tolerance, axis=-1).sum())


def test_a_screenshot_in_chromium_shows_the_clinical_figure(tmp_path: Path) -> None:
    """The page as a reader sees it: the figure's own colours are on screen, and they are not
    when the same page has no figure (so the count measures the figure, not the page)."""
    import numpy as np

    from analysis import clinical

    browser = _browser()
    rng = np.random.default_rng(0)
    labels = rng.random(300) < 0.5
    seeds = []
    for seed in (0, 1, 2):
        prob = 1 / (1 + np.exp(-(rng.normal(size=300) + 1.5 * (2 * labels - 1))))
        seeds.append(clinical.SeedScores(seed, prob, prob >= 0.5, labels))
    fig = clinical.plot_clinical(clinical.readout(seeds))
    (tmp_path / "figures").mkdir()
    fig.savefig(tmp_path / "figures" / "clinical_best.png", dpi=110)
    plt.close(fig)
    text = "# Study report: demo\n\n" + "\n".join(
        clinical.clinical_section(clinical.readout(seeds),
                                  {"clinical_best.png": "The best configuration on test"}))
    (tmp_path / "report.md").write_text(text)
    shown = _screenshot(browser, write_html_report(tmp_path, ["clinical_best.png"]),
                        _profile(tmp_path, "a"))
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "report.md").write_text(text)
    missing = _screenshot(browser, write_html_report(bare, []),
                          _profile(tmp_path, "b"))
    for colour in ((31, 119, 180), (255, 127, 14), (44, 160, 44)):  # the ROC, PR, reliability
        assert _near(shown, colour) > 300, colour
        assert _near(missing, colour) < 20, colour
