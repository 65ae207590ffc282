#!/usr/bin/env bash
# Regenerates the dashboard's screenshots in docs/screenshots/: every page at 1440x900, with
# the light and the dark colour scheme, of a database seeded with a realistic mix of jobs
# (tests/browser/seed.rs), taken by the ignored `screenshots` test of tests/browser.rs through
# headless Chromium.
#
#   scripts/screenshots.sh [DIR]      (default docs/screenshots)
#
# Needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver
# fonts-liberation). Uses DATABASE_URL when set, else a throwaway PostgreSQL (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(realpath -m "${1:-docs/screenshots}")
mkdir -p "$dir"
# Without a browser the test would pass having written nothing: here one is required.
SKIPLOCK_REQUIRE_BROWSER=1 SKIPLOCK_SCREENSHOTS="$dir" \
    cargo test --quiet -p skiplock --features web --test browser -- --ignored --exact screenshots
ls -1 "$dir"/*.png
