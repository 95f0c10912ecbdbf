"""Screenshot of a run's report page in headless Chromium (for the README).

    python scripts/report_screenshot.py runs/fashion docs/img/report.png [--height 1500]

Also fails if the page shows console errors or images that did not load.
"""

import argparse
import sys
from pathlib import Path

from filterprune.testing.browser import open_page


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run folder with report.html")
    parser.add_argument("png", help="where to write the screenshot")
    parser.add_argument("--height", type=int, default=None, help="cut at this many pixels")
    parser.add_argument("--width", type=int, default=1100)
    args = parser.parse_args()
    page = open_page(Path(args.run_dir) / "report.html", screenshot=args.png,
                     width=args.width, max_height=args.height)  # fmt: skip
    if page.errors or not page.images_loaded:
        print(f"page problems: {page.errors}, images loaded: {page.images_loaded}")
        return 1
    print(f"wrote {args.png} ({len(page.images)} images, page height {page.height}px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
