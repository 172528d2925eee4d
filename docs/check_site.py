"""Check the built documentation in a real browser (headless Chromium), offline.

    python docs/check_site.py docs/_build/html [--screenshots DIR]

1. Screenshots of the index, one gallery page and the torch pages (``--screenshots``,
   default ``docs/_build/screenshots``), for people to look at.
2. Every page with math (the API pages, the formulas, the guides), rendered by Chromium
   with JavaScript: each ``math`` element of the page must have become a MathJax
   ``mjx-container``, with no MathJax error, and the page must load no resource from the
   network; the pages of ``MATH_PAGES`` must have math.
3. Every page of the site: each internal link (``href`` without a scheme) points to an
   existing file and, when it has a ``#fragment``, to an element with that id.

Exits non-zero, listing every problem, when a check fails.
"""

import argparse
import html.parser
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

GALLERY_PAGE = "auto_examples/sparse_gradients.html"
# Screenshots for people to look at: the front page, a gallery page, the torch front end.
SCREENSHOTS = (
    ("index.html", "index.png"),
    (GALLERY_PAGE, "gallery.png"),
    ("torch.html", "torch.png"),
    ("api/torch.html", "api_torch.png"),
)
# Pages that must show typeset math (the others are checked where they have some).
MATH_PAGES = ("formulas.html", "api/optimizers.html", "api/schedules.html", "api/functions.html")


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    sys.exit("no Chromium on PATH (Debian: apt-get install -y chromium)")


def browser(*args, url):
    """Run headless Chromium on ``url``; returns its stdout (the DOM with --dump-dom)."""
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--allow-file-access-from-files",
        "--virtual-time-budget=10000",
        "--hide-scrollbars",
        *args,
        url,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"chromium failed on {url}: {proc.stderr[-2000:]}")
    return proc.stdout


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.ids, self.srcs = [], set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])
        if tag in ("img", "script") and attrs.get("src"):
            self.srcs.append(attrs["src"])
        if tag == "link" and attrs.get("href"):
            self.srcs.append(attrs["href"])


def parse(path):
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def check_links(site):
    problems, parsed = [], {}
    # _static/ holds the theme's Jinja templates, not pages.
    pages = sorted(p for p in site.rglob("*.html") if "_static" not in p.parts)
    for page in pages:
        links = parsed.setdefault(page, parse(page))
        for href in links.hrefs + links.srcs:
            url = urllib.parse.urlparse(href)
            if url.scheme or href.startswith("//"):
                continue
            target = (page.parent / urllib.parse.unquote(url.path)).resolve() if url.path else page
            if not target.exists():
                problems.append(f"{page.relative_to(site)}: broken link {href}")
                continue
            if url.fragment and target.suffix == ".html":
                ids = parsed.setdefault(target, parse(target)).ids
                if url.fragment not in ids:
                    problems.append(
                        f"{page.relative_to(site)}: no #{url.fragment} in "
                        f"{target.relative_to(site)}"
                    )
    return problems, len(pages)


def check_math(site, page):
    source = (site / page).read_text(encoding="utf-8")
    expected = len(re.findall(r'class="math[ "]', source))
    problems = []
    if expected == 0:
        if page in MATH_PAGES:
            problems.append(f"{page}: no math on the page")
        return problems
    dom = browser("--dump-dom", url=(site / page).as_uri())
    rendered = dom.count("<mjx-container")
    if rendered < expected:
        problems.append(f"{page}: {rendered} of {expected} math elements rendered by MathJax")
    if "<mjx-merror" in dom:
        problems.append(f"{page}: MathJax reports a TeX error")
    remote = [
        s
        for s in parse(site / page).srcs
        if urllib.parse.urlparse(s).scheme in ("http", "https") or s.startswith("//")
    ]
    if remote:
        problems.append(f"{page}: loads from the network: {remote}")
    print(f"  {page}: {rendered} math elements rendered (of {expected})")
    return problems


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("site", type=Path)
    ap.add_argument("--screenshots", type=Path, default=None)
    args = ap.parse_args(argv)
    site = args.site.resolve()
    shots = args.screenshots or site.parent / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    problems = []
    for page, name in SCREENSHOTS:
        out = shots / name
        if out.exists():
            out.unlink()
        browser(f"--screenshot={out}", "--window-size=1280,1600", url=(site / page).as_uri())
        if not out.is_file() or out.stat().st_size < 10_000:
            problems.append(f"no screenshot of {page}")
        else:
            print(f"screenshot of {page}: {out} ({out.stat().st_size} bytes)")
    print("math rendered by MathJax in Chromium:")
    for page in sorted(
        {p.relative_to(site).as_posix() for p in (site / "api").glob("*.html")}
        | {p.relative_to(site).as_posix() for p in site.glob("*.html")}
        | set(MATH_PAGES)
    ):
        problems += check_math(site, page)
    link_problems, n_pages = check_links(site)
    problems += link_problems
    print(f"internal links checked on {n_pages} pages")
    for p in problems:
        print(f"FAIL {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
