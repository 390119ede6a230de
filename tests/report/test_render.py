"""The HTML page: every user string escaped, every image with alt text, provenance and relative links."""
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from normlens.report import Figure, ReportSection, Table, render_html
from normlens.report.manifest import ManifestError, SectionRef, collect_provenance, read_manifest, write_manifest
from normlens.report.render import provenance_view, relative_link

MARKUP = "<b>bold</b><script>alert(1)</script>"
ESCAPED = "&lt;b&gt;bold&lt;/b&gt;&lt;script&gt;alert(1)&lt;/script&gt;"


def figure(caption: str = "c", alt: str = "") -> Figure:
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.plot([0, 1])
    return Figure.from_matplotlib(fig, caption, dpi=20, alt=alt)


def page_of(section: ReportSection, **kwargs) -> str:
    """The page without the line-break opportunities (<wbr>) that tables add to names."""
    return render_html([section], title=kwargs.pop("title", "T"), **kwargs).replace("<wbr>", "")


def test_markup_in_table_cells_is_escaped():
    page = page_of(ReportSection("s", tables=[Table("t", pd.DataFrame({"model": [MARKUP], "loss": [1.23456]}))]))
    assert ESCAPED in page and MARKUP not in page and "1.235" in page


def test_markup_in_table_headers_and_captions_is_escaped():
    page = page_of(ReportSection("s", tables=[Table(MARKUP, pd.DataFrame({MARKUP: [1]}))]))
    assert page.count(ESCAPED) == 2 and MARKUP not in page


def test_markup_in_notes_is_escaped():
    page = page_of(ReportSection("s", notes=[MARKUP]))
    assert f"<li>{ESCAPED}</li>" in page and MARKUP not in page


def test_markup_in_figure_captions_and_alt_text_is_escaped():
    page = page_of(ReportSection("s", figures=[figure(MARKUP, alt=MARKUP + '" onerror="x')]))
    assert f"<figcaption>{ESCAPED}</figcaption>" in page and MARKUP not in page
    assert 'onerror="x' not in page and "&#34; onerror=&#34;x" in page  # cannot leave the alt attribute


def test_markup_in_titles_summaries_subtitle_and_verdict_is_escaped():
    page = page_of(ReportSection(MARKUP, summary=MARKUP), title=MARKUP, subtitle=MARKUP, verdict=MARKUP)
    assert MARKUP not in page and page.count(ESCAPED) >= 6


def test_table_text_may_break_at_separators_and_numbers_do_not():
    page = render_html([ReportSection("s", tables=[Table("t", pd.DataFrame(
        {"site": ["blocks.0.hook_resid_pre"], "x": [0.000123456], "n": [3], "m": [float("nan")]}))])], title="T")
    assert '<td class="text">blocks.<wbr>0.<wbr>hook_<wbr>resid_<wbr>pre</td>' in page
    assert '<td class="num">0.0001235</td><td class="num">3</td><td class="num">—</td>' in page


def test_every_image_has_alt_text_and_the_page_makes_no_requests():
    page = page_of(ReportSection("s", figures=[figure("a caption"), figure("", alt="")]))
    alts = re.findall(r'<img alt="([^"]*)"', page)
    assert alts == ["a caption", "figure"]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "default-src 'none'" in page  # the content security policy forbids fetching anything


def test_figures_are_deterministic_png_without_metadata():
    a, b = figure("x"), figure("x")
    assert a.png == b.png and a.png.startswith(b"\x89PNG") and b"Software" not in a.png and b"matplotlib" not in a.png


def test_manifest_round_trip_lists_data_files_with_hashes(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.json").write_text("{}")
    (tmp_path / "plot.png").write_bytes(b"png")
    (tmp_path / ".x.tmp").write_text("half-written")
    provenance = collect_provenance(seeds={"seed": 3}, wall_seconds={"total": 1.5}, config={"k": [1, 2]},
                                    command="normlens probe x")
    write_manifest(tmp_path, kind="probe", title="T", sections=[SectionRef("probes", ".")], provenance=provenance)
    manifest = read_manifest(tmp_path)
    assert [f["path"] for f in manifest["files"]] == ["sub/a.json"]  # not the PNG, not hidden temp files
    assert manifest["files"][0]["sha256"] == "44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    prov = manifest["provenance"]
    assert prov["seeds"] == {"seed": 3} and prov["config"] == {"k": [1, 2]} and "numpy" in prov["libraries"]
    assert prov["normlens"] and prov["device"] == "cpu" and prov["git_commit"] != ""


@pytest.mark.parametrize("content,message", [
    (None, "manifest.json is missing"), ("{", "not valid JSON"), ('{"format": "x"}', "not a normlens manifest"),
    ('{"format": "normlens-results", "version": 99, "sections": []}', "manifest version 99"),
])
def test_unreadable_manifests_are_one_line_errors(tmp_path, content, message):
    if content is not None:
        (tmp_path / "manifest.json").write_text(content)
    with pytest.raises(ManifestError, match=message):
        read_manifest(tmp_path)


def test_links_are_relative_and_percent_encoded(tmp_path):
    html = tmp_path / "reports" / "zoo.html"
    assert relative_link(tmp_path / "reports" / "zoo_data" / "a b.json", html) == "./zoo_data/a%20b.json"
    assert relative_link(tmp_path / "reports" / "javascript:alert(1)", html) == "./javascript%3Aalert%281%29"
    assert relative_link(tmp_path / "data" / "x.npz", html) == "../data/x.npz"


def test_provenance_block_shows_versions_seeds_wall_times_and_links(tmp_path):
    folder = tmp_path / "run_data"
    folder.mkdir()
    (folder / "x.parquet").write_bytes(b"1234")
    provenance = collect_provenance(seeds={"seed": 7}, wall_seconds={"total": 12.25, "probes": 3.0},
                                    config={"n_seq": 16})
    write_manifest(folder, kind="probe", title="T", sections=[], provenance=provenance)
    view = provenance_view(read_manifest(folder), folder, tmp_path / "run.html")
    page = render_html([], title="T", provenance=view)
    assert "seed = 7" in page and "12.2 s" in page and '&#34;n_seq&#34;: 16' in page and "torch " in page
    assert '<a href="./run_data/x.parquet">x.parquet</a>' in page and "4 B" in page
    assert Path(str(folder)).name in page
